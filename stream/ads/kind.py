"""The ``bandit`` kind of versioned state: the ad policy's parameters, hot-swapped by scorers.

A version is a parameter file (:class:`models.bandit.BanditParams`) under
``STREAMRANK_MODEL_DIR``/bandit, announced on model-updates with its sha256 and, with a
signing key, signed, like the models and statistics beside it. Loading parses and checks it
off the loop; installing swaps one reference, so a ranking in flight finishes on the version
it took and logs that version with its decisions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

from models.bandit import BanditParams
from models.scorer import UntrustedModel
from models.signing import sign, signature_matches
from schemas import ModelUpdate, Rejection
from stream.ads.serving import BanditSlot
from stream.runtime.versioned_state import StateKind, write_version
from stream.scoring.model_kind import trusted_file
from stream.settings import Settings

PARAMS_DIR = "bandit"


def params_path(settings: Settings, version: str) -> Path:
    return settings.model_dir / PARAMS_DIR / f"{version}.json"


def write_params(params: BanditParams, settings: Settings) -> ModelUpdate:
    """Write a version's file (atomically; signed with a key) and return its announcement."""
    body = orjson.loads(params.to_bytes())
    key = settings.signing_key
    if key is not None:
        body["signature"] = sign(body, key)
    return write_version(params_path(settings, params.version), orjson.dumps(body), "ads",
                         "bandit", params.version)


def load_params(update: ModelUpdate, settings: Settings) -> BanditParams:
    """The parameters an update announces, refused as :class:`Rejection` like any version."""
    try:
        data = trusted_file(update.uri, settings.model_dir).read_bytes()
    except UntrustedModel as exc:
        raise Rejection("untrusted_state", str(exc)) from exc
    except OSError as exc:
        raise Rejection("invalid_state", f"cannot read {update.uri}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != update.sha256:
        raise Rejection("invalid_state", f"{update.uri} does not match its sha256")
    try:
        params = BanditParams.from_bytes(data)
    except ValueError as exc:
        raise Rejection("invalid_state", str(exc)) from exc
    key = settings.signing_key
    if key is not None and not signature_matches(orjson.loads(data), key):  # a dict: parsed
        raise Rejection("untrusted_state", f"{update.uri} is not signed with "
                        "STREAMRANK_MODEL_SIGNING_KEY")
    if params.version != update.version:
        raise Rejection("invalid_state", f"{update.uri} holds {params.version}, announced "
                        f"as {update.version}")
    return params


def bandit_kind(slot: BanditSlot, settings: Settings) -> StateKind[BanditParams]:
    return StateKind("bandit", lambda update: load_params(update, settings), slot.install)
