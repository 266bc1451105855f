"""The ``model`` kind of versioned state: the ONNX ranker, announced on model-updates.

A worker loads only what it can trust: a ``file://`` URI under ``STREAMRANK_MODEL_DIR``
(symlinks resolved, so a link cannot lead out) and, with ``STREAMRANK_MODEL_SIGNING_KEY``,
a manifest signed with that key. Otherwise anyone who can produce to the topic could make
every worker read and run any file on its disk.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import orjson

from models.scorer import (
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    ModelError,
    Scorer,
    UntrustedModel,
)
from models.signing import SIGNATURE_FIELD, sign, signature_matches
from schemas import ModelUpdate, Rejection
from stream.runtime.versioned_state import StateKind, publish_update
from stream.scoring.ranker import ModelSlot
from stream.settings import Settings


def trusted_file(uri: str, model_dir: Path) -> Path:
    """The local file a ``file://`` URI names, refused unless it resolves under ``model_dir``."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise UntrustedModel(f"unsupported uri {uri!r} (only local file:// URIs)")
    path = Path(unquote(parts.path)).resolve()
    _inside(path, model_dir, uri)
    return path


def manifest_path(update: ModelUpdate, model_dir: Path) -> Path:
    """The manifest of a ``file://`` URI (a model.onnx or its directory), refused unless the
    directory, the manifest and the model all resolve under ``model_dir``.

    The path returned is the one that will be read, and each file it leads to was checked.
    """
    path = trusted_file(update.uri, model_dir)
    directory = path if path.is_dir() else path.parent
    for target in (directory, directory / MANIFEST_FILE, directory / MODEL_FILE):
        _inside(target, model_dir, update.uri)
    return directory / MANIFEST_FILE


def _inside(target: Path, model_dir: Path, uri: str) -> None:
    if not target.resolve().is_relative_to(model_dir):
        raise UntrustedModel(f"uri {uri!r} leads to {target.resolve()}, "
                             f"outside STREAMRANK_MODEL_DIR ({model_dir})")


def model_kind(slot: ModelSlot, settings: Settings) -> StateKind[Scorer]:
    def load(update: ModelUpdate) -> Scorer:
        try:
            return slot.build(manifest_path(update, settings.model_dir), update.sha256)
        except UntrustedModel as exc:
            raise Rejection("untrusted_state", str(exc)) from exc
        except (ModelError, OSError) as exc:
            raise Rejection("invalid_state", str(exc)) from exc

    return StateKind("model", load, slot.install)


def sign_manifest(path: Path, key: bytes) -> None:
    """Sign an unsigned manifest in place; one signed already must verify. Its caller has
    checked the model's bytes against it: the key holder vouches for the model that is there."""
    raw = orjson.loads(path.read_bytes())
    if SIGNATURE_FIELD in raw:
        if not signature_matches(raw, key):
            raise UntrustedModel(f"{path} is signed, but not with STREAMRANK_MODEL_SIGNING_KEY")
        return
    signed = {**raw, SIGNATURE_FIELD: sign(raw, key)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(signed, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def model_update(settings: Settings, manifest: Path) -> ModelUpdate:
    """The record announcing a trained model, refused here already if the workers (with these
    settings) would refuse it. With a signing key, an unsigned manifest is signed first."""
    loaded = Manifest.load(manifest)
    update = ModelUpdate(ts=time.time(), model="ranker", kind="model", version=loaded.version,
                         uri=loaded.model_path.resolve().as_uri(), sha256=loaded.sha256)
    manifest_path(update, settings.model_dir)
    if hashlib.sha256(loaded.model_path.read_bytes()).hexdigest() != loaded.sha256:
        raise ModelError(f"{loaded.model_path} does not match the manifest's sha256")
    key = settings.signing_key
    if key is not None:
        sign_manifest(manifest, key)
        Manifest.load(manifest, key)
    return update


async def publish_model(settings: Settings, bootstrap: str, manifest: Path) -> ModelUpdate:
    update = model_update(settings, manifest)
    await publish_update(settings, bootstrap, update)
    return update
