"""HMAC-SHA256 signatures on model manifests, so a worker serves only what a key holder vouched for.

Anyone who can produce to ``model-updates`` can announce a model; the key is what separates a
trained, published model from a file someone else put on disk. The manifest carries the
model's sha256, and the scorer checks the model's bytes against it, so signing the manifest
covers the model too.

The signed bytes are the manifest without its ``signature`` field, as JSON with sorted keys
and no whitespace (orjson's output is deterministic, floats included), behind a scheme prefix
so that a signature can never be replayed as one of another message:

>>> key = b"k" * 32
>>> manifest = {"version": "v1", "sha256": "ab" * 32}
>>> signed = {**manifest, "signature": sign(manifest, key)}
>>> signature_matches(signed, key), signature_matches({**signed, "version": "v2"}, key)
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson

SCHEME = "hmac-sha256"
SIGNATURE_FIELD = "signature"


def canonical(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: every field but the signature, keys sorted."""
    unsigned = {k: v for k, v in manifest.items() if k != SIGNATURE_FIELD}
    return SCHEME.encode() + b"\n" + orjson.dumps(unsigned, option=orjson.OPT_SORT_KEYS)


def sign(manifest: Mapping[str, Any], key: bytes) -> str:
    return f"{SCHEME}:{hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()}"


def signature_matches(manifest: Mapping[str, Any], key: bytes) -> bool:
    """True only for a signature by ``key`` over this very manifest; compared in constant
    time, so a forger learns nothing from how long a refusal took."""
    given = manifest.get(SIGNATURE_FIELD)
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode(), sign(manifest, key).encode())
