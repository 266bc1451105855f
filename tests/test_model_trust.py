"""Which published models a worker trusts: the model dir, publishing, a key kept secret."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from models.scorer import Manifest, ModelError, UntrustedModel
from models.signing import SIGNATURE_FIELD
from schemas import ModelUpdate
from stream.runtime.versioned_state import StateKind, registry
from stream.scoring.model_kind import manifest_path, model_update, sign_manifest
from stream.settings import Settings
from tests.test_signing import KEY, write_model


def update_for(uri: str) -> ModelUpdate:
    return ModelUpdate(ts=time.time(), model="ranker", kind="model", version="v1", uri=uri,
                       sha256="ab" * 32)


@pytest.mark.parametrize("uri_of", [
    lambda root: (root / "m1").as_uri(),
    lambda root: (root / "m1" / "model.onnx").as_uri(),
    lambda root: "file://localhost" + str(root / "m1"),
], ids=["directory", "model file", "localhost"])
def test_a_model_under_the_model_dir_is_accepted(tmp_path: Path,
                                                uri_of: Callable[[Path], str]) -> None:
    root = tmp_path / "models"
    write_model(root / "m1")
    assert manifest_path(update_for(uri_of(root)), root) == root / "m1" / "manifest.json"


def test_a_model_outside_the_model_dir_is_refused(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    write_model(elsewhere / "m1")
    write_model(root / "own")
    (root / "linked").symlink_to(elsewhere / "m1", target_is_directory=True)
    (root / "half").mkdir()
    (root / "half" / "manifest.json").write_bytes((root / "own" / "manifest.json").read_bytes())
    (root / "half" / "model.onnx").symlink_to(elsewhere / "m1" / "model.onnx")
    for uri in [(elsewhere / "m1").as_uri(),
                root.as_uri() + "/../elsewhere/m1",
                (root / "linked").as_uri(),  # a directory link out of the model dir
                (root / "half").as_uri()]:  # a model file linked out of it
        with pytest.raises(UntrustedModel, match="outside STREAMRANK_MODEL_DIR"):
            manifest_path(update_for(uri), root)


@pytest.mark.parametrize("uri", ["https://example.com/m1/model.onnx",
                                 "file://otherhost/models/m1", "/models/m1"])
def test_only_local_file_uris_are_accepted(tmp_path: Path, uri: str) -> None:
    with pytest.raises(UntrustedModel, match="only local file://"):
        manifest_path(update_for(uri), tmp_path)


def test_publishing_with_a_key_signs_an_unsigned_manifest_in_place(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m1")
    settings = Settings(model_dir=tmp_path, model_signing_key=KEY.decode())
    update = model_update(settings, path)
    assert Manifest.load(path, KEY).sha256 == update.sha256
    assert update.kind == "model" and update.uri == (tmp_path / "m1" / "model.onnx").as_uri()
    signed = path.read_bytes()
    sign_manifest(path, KEY)  # already signed with this key: left as it is
    assert path.read_bytes() == signed


def test_publishing_refuses_what_it_cannot_vouch_for(tmp_path: Path) -> None:
    settings = Settings(model_dir=tmp_path / "models", model_signing_key=KEY.decode())
    foreign = write_model(tmp_path / "models" / "foreign", key=KEY[::-1])
    with pytest.raises(UntrustedModel, match="not with STREAMRANK_MODEL_SIGNING_KEY"):
        model_update(settings, foreign)
    swapped = write_model(tmp_path / "models" / "swapped")
    (swapped.parent / "model.onnx").write_bytes(b"other bytes")
    for publisher in (settings, settings.model_copy(update={"model_signing_key": None})):
        with pytest.raises(ModelError, match="does not match the manifest's sha256"):
            model_update(publisher, swapped)
    outside = write_model(tmp_path / "outside")
    with pytest.raises(UntrustedModel, match="outside STREAMRANK_MODEL_DIR"):
        model_update(settings, outside)
    for refused in (swapped, outside):  # nothing refused gets signed
        assert SIGNATURE_FIELD not in orjson.loads(refused.read_bytes())


def test_the_signing_key_never_shows(tmp_path: Path) -> None:
    secret = "s3cret-" + "z" * 30
    settings = Settings(model_signing_key=secret)
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    assert settings.as_env()["STREAMRANK_MODEL_SIGNING_KEY"] == secret  # for child workers
    assert settings.signing_key == secret.encode()
    with pytest.raises(ValidationError) as refused:
        Settings(model_signing_key="short-" + "q" * 10)
    assert "q" * 10 not in str(refused.value)
    assert "at least 32 characters" in str(refused.value)


def test_the_model_dir_is_absolute_from_the_start(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().model_dir == tmp_path.resolve() / "artifacts"
    assert Settings(model_dir=Path("m")).as_env()["STREAMRANK_MODEL_DIR"] == str(
        tmp_path.resolve() / "m")


def test_a_kind_is_registered_once() -> None:
    kind: StateKind[int] = StateKind("model", lambda update: 1, lambda loaded: None)
    assert registry([kind]) == {"model": kind}
    with pytest.raises(ValueError, match="registered twice"):
        registry([kind, kind])
