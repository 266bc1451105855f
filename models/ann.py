"""The ANN index of items: cosine nearest neighbours over string ids, safe across threads.

PinnerSage (Pal et al., KDD 2020, section 4) retrieves by querying an ANN index with a few
medoids of the user's interests. Every scoring worker keeps one index of the organic items,
so retrieval is a local call: three queries of k=100 and a merge.

**Library: hnswlib** (HNSW, Malkov & Yashunin 2018), chosen over usearch on figures measured
here, single-threaded, 100k unit vectors of dim 32, inner product, k=100, recall@100 against
exact search on 300 queries (2 shared cores, so tails are noisy):

=================  ===========  =========  =========  ==========  ============
data, M/efc/ef     library      insert/s   query p50  recall@100  3q+merge p99
=================  ===========  =========  =========  ==========  ============
random, 32/200/200 hnswlib      4.4k       0.24 ms    0.982       1.0 ms
random, 32/200/200 usearch      3.2k       0.45 ms    0.982       1.7 ms
random, 32/100/200 hnswlib      8.1k       0.22 ms    0.980       1.0 ms
world, 32/100/200  hnswlib      12.8k      0.15 ms    0.9998      0.7 ms
world, 16/100/100  hnswlib      13.2k      0.09 ms    0.981       0.4 ms
world, 16/100/100  usearch      10.7k      0.15 ms    0.981       0.7 ms
=================  ===========  =========  =========  ==========  ============

("world": items scattered around 20 topic centres as in :mod:`models.world`, queries near
them, as medoids are.) The two libraries reach the same recall at the same parameters (both
are HNSW); hnswlib inserts 1.2-1.4x and searches 1.5-2x faster. Uniform random vectors in 32
dimensions are the hard case: M=16 needs ef=300 for 0.95 there, so the defaults are M=32,
ef_construction=100, ef=200 (0.98 on random, 0.9998 on the world's clusters).

**Threads.** hnswlib's insert and search are not safe together (hnswlib#562, #29: "mixing
searches and insertions can cause segfault"), nor is a resize with either. One
:class:`threading.Lock` guards every call into the library and the id maps. A readers-writer
lock would buy nothing here: a worker searches and inserts on its one event-loop thread, and
the snapshot thread holds the GIL while it copies anyway (hnswlib's serialisation does not
release it). :meth:`ItemIndex.save` holds the lock only to copy the graph into arrays
(~23 ms for 100k items, measured; writing the file from hnswlib itself held the GIL for
40-120 ms) and writes the file outside it.

**Ids.** Items are strings; hnswlib labels are integers, handed out once and never reused
(a removed slot keeps its old label until a new item takes it over, and hnswlib refuses to
re-add a label that sits on a deleted slot). Removal marks the slot deleted, so search skips
it but still walks through it; a new item then takes over a deleted slot
(``allow_replace_deleted``), so churn does not grow the index.

**Age.** Each item keeps its creation time, so that whoever expires items asks the index
(:meth:`ItemIndex.created_before`) and the times travel in the same snapshot as the vectors.

>>> index = ItemIndex(dim=2)
>>> index.upsert(["north", "east", "south"], np.array([[0, 1], [1, 0], [0, -1]]))
>>> [item for item, _ in index.search(np.array([[0.1, 1.0]]), k=2)[0]]
['north', 'east']
>>> index.remove(["north"])
1
>>> [item for item, _ in index.search(np.array([[0.1, 1.0]]), k=2, exclude={"east"})[0]]
['south']
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import zipfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import hnswlib
import numpy as np

LAYOUT_VERSION = 1  # of the snapshot file; another version is refused, never guessed at
HNSW_PREFIX = "hnsw."  # hnswlib's own serialised state, one array per field
MIN_NORM = 1e-12


class SnapshotError(ValueError):
    """A snapshot that cannot be loaded: corrupt, truncated, or of another layout."""


class Loaded(NamedTuple):
    items: ItemIndex
    meta: dict[str, Any]  # what the caller saved with it (offsets, topic, ...)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to norm 1 (float32), so inner product is cosine similarity."""
    rows = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.all(np.isfinite(rows)) or np.any(norms < MIN_NORM):
        raise ValueError("vectors must be finite and non-zero to have a direction")
    return rows / norms


class ItemIndex:
    """Cosine k-NN over item ids: upsert, remove, search, save and load (see the module)."""

    def __init__(self, dim: int, *, capacity: int = 1024, m: int = 32,
                 ef_construction: int = 100, ef: int = 200) -> None:
        self.dim = dim
        self._hnsw = hnswlib.Index(space="ip", dim=dim)
        self._hnsw.init_index(max_elements=max(capacity, 1), M=m,
                              ef_construction=ef_construction, allow_replace_deleted=True)
        self._hnsw.set_ef(ef)  # hnswlib searches with max(ef, k)
        self._hnsw.set_num_threads(1)  # a worker's two cores are the event loop's and onnx's
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._created: dict[str, float] = {}
        self._next_label = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label_of

    def upsert(self, item_ids: Sequence[str], embeddings: np.ndarray,
               created_ts: Sequence[float] | None = None) -> None:
        """Insert new items and replace the vectors (and creation times) of known ones; the
        last row of an id repeated in one call wins. No creation time: never old."""
        rows = unit_rows(embeddings)
        if rows.shape != (len(item_ids), self.dim):
            raise ValueError(f"expected {len(item_ids)} rows of {self.dim}, got {rows.shape}")
        created = [math.inf] * len(item_ids) if created_ts is None else list(created_ts)
        if len(created) != len(item_ids):
            raise ValueError(f"{len(created)} creation times for {len(item_ids)} items")
        last_row = {item_id: row for row, item_id in enumerate(item_ids)}
        with self._lock:
            for item_id, row in last_row.items():
                self._created[item_id] = created[row]
            known = [(self._label_of[i], r) for i, r in last_row.items() if i in self._label_of]
            new = [(i, r) for i, r in last_row.items() if i not in self._label_of]
            if known:  # in place; replace_deleted would give the label a second slot
                labels, where = zip(*known, strict=True)
                self._hnsw.add_items(rows[list(where)], np.array(labels, dtype=np.uint64))
            if new:
                self._make_room(len(new))
                fresh = range(self._next_label, self._next_label + len(new))
                self._next_label += len(new)
                for (item_id, _), label in zip(new, fresh, strict=True):
                    self._label_of[item_id] = label
                    self._id_of[label] = item_id
                self._hnsw.add_items(rows[[r for _, r in new]],
                                     np.array(fresh, dtype=np.uint64), replace_deleted=True)

    def remove(self, item_ids: Collection[str]) -> int:
        """Forget these items (unknown ids are ignored); returns how many were indexed."""
        with self._lock:
            labels = [self._label_of.pop(i) for i in set(item_ids) if i in self._label_of]
            for label in labels:
                del self._created[self._id_of.pop(label)]
                self._hnsw.mark_deleted(label)
        return len(labels)

    def search(self, queries: np.ndarray, k: int,
               exclude: Collection[str] = ()) -> list[list[tuple[str, float]]]:
        """The ``k`` items most similar to each query row, best first, as (id, cosine);
        removed and excluded ids never come back. Fewer when the index holds fewer."""
        rows = unit_rows(queries)
        with self._lock:
            skipped = sum(1 for item_id in exclude if item_id in self._label_of)
            wanted = min(k + skipped, len(self._label_of))
            if wanted == 0 or k <= 0:
                return [[] for _ in rows]
            labels, distances = self._hnsw.knn_query(rows, k=wanted)
            id_of = self._id_of
            found = [[(id_of[int(label)], 1.0 - float(distance))
                      for label, distance in zip(row_labels, row_distances, strict=True)]
                     for row_labels, row_distances in zip(labels, distances, strict=True)]
        blocked = set(exclude)
        return [[hit for hit in row if hit[0] not in blocked][:k] for row in found]

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._label_of)

    def created_before(self, cutoff: float) -> list[str]:
        """Items created before ``cutoff``: a scan, ~5 ms per 100k items."""
        with self._lock:
            return [item_id for item_id, created in self._created.items() if created < cutoff]

    def _make_room(self, count: int) -> None:
        """Grow (doubling) unless deleted slots and free capacity take ``count`` more."""
        free = self._hnsw.max_elements - self._hnsw.element_count
        reusable = self._hnsw.element_count - len(self._label_of)  # deleted slots
        if count > free + reusable:
            needed = self._hnsw.element_count + count - reusable
            self._hnsw.resize_index(max(2 * self._hnsw.max_elements, needed))

    # -- snapshot --------------------------------------------------------------------------

    def save(self, path: Path, meta: Mapping[str, Any] | None = None) -> None:
        """Write the index and ``meta`` (JSON) to ``path`` atomically: a temporary file in the
        same directory, then a rename, so a crash leaves the previous snapshot whole."""
        with self._lock:  # copies the graph: a reader must never see it half-changed
            (state,) = self._hnsw.__getstate__()
            ids = np.array(list(self._label_of), dtype=np.str_)
            labels = np.fromiter(self._label_of.values(), dtype=np.uint64, count=len(ids))
            created = np.array([self._created[item_id] for item_id in self._label_of])
            next_label = self._next_label
        header = {"layout": LAYOUT_VERSION, "dim": self.dim, "next_label": next_label,
                  "meta": dict(meta or {})}
        arrays: dict[str, Any] = {f"{HNSW_PREFIX}{key}": np.asarray(value)
                                  for key, value in state.items()}
        arrays.update(header=np.frombuffer(json.dumps(header).encode(), np.uint8), ids=ids,
                      labels=labels, created=created)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                np.savez(file, **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Loaded:
        """Read a snapshot written by :meth:`save`; :class:`SnapshotError` when it is corrupt
        (the zip's CRC-32 of every array is checked), truncated or of another layout."""
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            header = json.loads(arrays.pop("header").tobytes())
            ids, labels, created = arrays["ids"], arrays["labels"], arrays["created"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise SnapshotError(f"{path}: not a readable index snapshot ({exc})") from exc
        layout = header.get("layout") if isinstance(header, dict) else None
        if layout != LAYOUT_VERSION:
            raise SnapshotError(f"{path}: layout {layout!r} is not {LAYOUT_VERSION}; rebuild "
                                "the index instead")
        state = {key[len(HNSW_PREFIX):]: value if value.ndim else value.item()
                 for key, value in arrays.items() if key.startswith(HNSW_PREFIX)}
        _check_state(path, state, header, ids, labels)
        if created.shape != ids.shape:
            raise SnapshotError(f"{path}: {created.size} creation times for {ids.size} items")
        index = cls.__new__(cls)
        index.dim = header["dim"]
        index._hnsw = hnswlib.Index.__new__(hnswlib.Index)
        try:
            index._hnsw.__setstate__((state,))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{path}: hnswlib refused the index state ({exc})") from exc
        index._hnsw.set_num_threads(1)
        index._label_of = dict(zip(ids.tolist(), labels.tolist(), strict=True))
        index._id_of = {label: item_id for item_id, label in index._label_of.items()}
        index._created = dict(zip(ids.tolist(), created.tolist(), strict=True))
        index._next_label = header["next_label"]
        index._lock = threading.Lock()
        return Loaded(index, header["meta"])


def _check_state(path: Path, state: dict[str, Any], header: dict[str, Any], ids: np.ndarray,
                 labels: np.ndarray) -> None:
    """hnswlib trusts the sizes it is given (a wrong one reads out of bounds), so they are
    checked against each other before it sees them."""
    try:
        consistent = (
            state["dim"] == header["dim"] and state["space"] == "ip"
            and state["cur_element_count"] <= state["max_elements"]
            and state["data_level0"].size
            == state["cur_element_count"] * state["size_data_per_element"]
            and state["element_levels"].size == state["max_elements"]
            and state["label_lookup_external"].size == state["cur_element_count"]
            and ids.shape == labels.shape and len(ids) <= state["cur_element_count"]
            and (len(labels) == 0 or int(labels.max()) < header["next_label"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"{path}: index state incomplete ({exc})") from exc
    if not consistent:
        raise SnapshotError(f"{path}: index state inconsistent (sizes do not agree)")
