"""The ANN index of items: neighbours, replacement, removal, snapshots and threads."""

from __future__ import annotations

import doctest
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

import models.ann
from models.ann import ItemIndex, SnapshotError

DIM = 8


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_items(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"item-{i}" for i in range(n)], unit(rng.normal(size=(n, DIM)))


def exact(ids: list[str], vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    sims = vectors @ unit(query[None, :])[0]
    return [ids[i] for i in np.argsort(-sims)[:k]]


def test_the_module_example_runs() -> None:
    assert doctest.testmod(models.ann).failed == 0


def test_a_small_index_returns_the_exact_neighbours_with_their_cosines() -> None:
    ids, vectors = random_items(300)
    index = ItemIndex(DIM)
    index.upsert(ids, vectors)
    query = vectors[7] + 0.1
    (hits,) = index.search(query[None, :], k=10)
    assert [item for item, _ in hits] == exact(ids, vectors, query, 10)
    cosines = vectors @ unit(query[None, :])[0]
    for item, similarity in hits:
        assert similarity == pytest.approx(cosines[ids.index(item)], abs=1e-5)
    assert len(index) == 300 and "item-7" in index


def test_embeddings_are_normalised_so_scale_does_not_matter() -> None:
    index = ItemIndex(2)
    index.upsert(["long", "short"], np.array([[100.0, 1.0], [0.0, 0.01]]))
    (hits,) = index.search(np.array([[1.0, 0.0]]), k=2)
    assert hits[0][0] == "long" and hits[0][1] == pytest.approx(0.99995, abs=1e-4)
    with pytest.raises(ValueError, match="non-zero"):
        index.upsert(["zero"], np.zeros((1, 2)))


def test_an_upsert_of_a_known_id_replaces_its_vector() -> None:
    index = ItemIndex(2)
    index.upsert(["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]]))
    index.upsert(["a"], np.array([[0.0, -1.0]]))
    (hits,) = index.search(np.array([[0.0, -1.0]]), k=2)
    assert hits[0] == ("a", pytest.approx(1.0, abs=1e-5))
    assert len(index) == 2


def test_removed_and_excluded_ids_never_come_back() -> None:
    ids, vectors = random_items(500, seed=1)
    index = ItemIndex(DIM)
    index.upsert(ids, vectors)
    removed = set(ids[:250])
    assert index.remove([*removed, "never-indexed"]) == 250
    excluded = set(ids[250:300])
    for hits in index.search(vectors[:50], k=100, exclude=excluded):
        returned = {item for item, _ in hits}
        assert len(hits) == 100 and not returned & (removed | excluded)
    # Fewer items than k: all of them, no error.
    assert len(index.search(vectors[:1], k=1000)[0]) == 250


def test_new_items_take_over_removed_slots_and_growth_doubles() -> None:
    ids, vectors = random_items(100, seed=2)
    index = ItemIndex(DIM, capacity=64)
    index.upsert(ids, vectors)  # past the capacity: grows
    index.remove(ids[:50])
    fresh_ids, fresh = random_items(50, seed=3)
    index.upsert([f"new-{i}" for i in fresh_ids], fresh)
    assert len(index) == 100
    assert index._hnsw.element_count == 100  # the deleted slots were reused
    # A removed id that comes back is a new item with a new label, and is found.
    index.upsert([ids[0]], vectors[:1])
    assert index.search(vectors[:1], k=1)[0][0][0] == ids[0]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    ids, vectors = random_items(400, seed=4)
    index = ItemIndex(DIM)
    index.upsert(ids, vectors)
    index.remove(ids[:10])
    path = tmp_path / "snap" / "items.npz"
    index.save(path, {"offsets": {"0": 12}})
    loaded, meta = ItemIndex.load(path)
    assert meta == {"offsets": {"0": 12}}
    assert sorted(loaded.ids()) == sorted(ids[10:])
    assert loaded.search(vectors[20:30], k=5) == index.search(vectors[20:30], k=5)
    # It stays a working index: new labels do not collide with the removed ones.
    loaded.upsert(["late"], vectors[:1])
    assert loaded.search(vectors[:1], k=1)[0][0][0] == "late"
    assert list(tmp_path.joinpath("snap").iterdir()) == [path]  # no temporary file left


def test_a_corrupt_or_foreign_snapshot_is_refused(tmp_path: Path) -> None:
    ids, vectors = random_items(200, seed=5)
    index = ItemIndex(DIM)
    index.upsert(ids, vectors)
    path = tmp_path / "items.npz"
    index.save(path)
    data = bytearray(path.read_bytes())

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp_path / "flipped.npz"
    middle = len(data) // 2
    flipped.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    for bad in (truncated, flipped, tmp_path / "missing.npz"):
        with pytest.raises(SnapshotError):
            ItemIndex.load(bad)

    other = tmp_path / "other.npz"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(other, "w") as target:
        for name in source.namelist():
            content = source.read(name)
            if name == "header.npy":
                content = content.replace(b'"layout": 1', b'"layout": 9')
            target.writestr(name, content)
    with pytest.raises(SnapshotError, match="layout 9"):
        ItemIndex.load(other)


def test_concurrent_inserts_and_searches_do_not_crash_and_return_live_ids() -> None:
    """hnswlib#562: unguarded, an insert that grows the graph while another thread searches
    it can crash the process. The lock serialises them."""
    ids, vectors = random_items(4000, seed=6)
    index = ItemIndex(DIM, capacity=16)  # many resizes while searching
    index.upsert(ids[:100], vectors[:100])
    errors: list[BaseException] = []

    def insert() -> None:
        try:
            for start in range(100, 4000, 50):
                index.upsert(ids[start:start + 50], vectors[start:start + 50])
                index.remove(ids[start - 100:start - 90])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=insert)
    writer.start()
    searches = 0
    known = set(ids)
    while writer.is_alive() or searches < 10:
        for hits in index.search(vectors[:4], k=20, exclude={ids[0]}):
            assert {item for item, _ in hits} <= known - {ids[0]}
        searches += 1
    writer.join()
    assert not errors
    assert len(index) == len(set(index.ids())) > 3000


def test_creation_times_say_which_items_are_old_and_survive_a_snapshot(tmp_path: Path) -> None:
    index = ItemIndex(2)
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    index.upsert(["old", "new", "ageless"], vectors, created_ts=None)
    index.upsert(["old", "new"], vectors[:2], created_ts=[100.0, 900.0])
    assert index.created_before(500.0) == ["old"]
    index.save(tmp_path / "items.npz")
    loaded = ItemIndex.load(tmp_path / "items.npz").items
    assert loaded.created_before(1000.0) == ["old", "new"]
    loaded.remove(["old"])
    assert loaded.created_before(1000.0) == ["new"]
