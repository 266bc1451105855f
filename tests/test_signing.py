"""Signed manifests: what the signature covers, and a keyed load that refuses the rest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from models.scorer import Manifest, UntrustedModel
from models.signing import SIGNATURE_FIELD, canonical, sign, signature_matches

KEY = b"0123456789abcdef" * 2
MANIFEST = {"version": "v1", "sha256": "ab" * 32, "feature_names": ["f"], "task_names": ["click"],
            "bn_layers": {}, "input_name": "features", "output_name": "probs",
            "created_ts": 1790000000.25, "metrics": {"click": {"auc": 0.7123456789}}}


def write_model(directory: Path, key: bytes | None = None, model: bytes = b"onnx bytes") -> Path:
    """A model directory as training writes it (the bytes need not be ONNX here)."""
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(model)
    manifest = {**MANIFEST, "sha256": hashlib.sha256(model).hexdigest()}
    if key is not None:
        manifest[SIGNATURE_FIELD] = sign(manifest, key)
    path = directory / "manifest.json"
    path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return path


def test_a_signature_covers_every_field_but_itself() -> None:
    signed = {**MANIFEST, SIGNATURE_FIELD: sign(MANIFEST, KEY)}
    assert signature_matches(signed, KEY)
    assert signed[SIGNATURE_FIELD].startswith("hmac-sha256:")
    for field, value in [("sha256", "cd" * 32), ("version", "v2"), ("created_ts", 1.0),
                         ("metrics", {"click": {"auc": 0.99}})]:
        assert not signature_matches({**signed, field: value}, KEY), field
    assert not signature_matches({**signed, "extra": 1}, KEY)


def test_a_signature_holds_only_for_its_key() -> None:
    signed = {**MANIFEST, SIGNATURE_FIELD: sign(MANIFEST, KEY)}
    assert not signature_matches(signed, KEY[::-1])
    assert not signature_matches(MANIFEST, KEY)  # unsigned
    assert not signature_matches({**MANIFEST, SIGNATURE_FIELD: 7}, KEY)


def test_the_signed_bytes_survive_a_round_trip_through_the_file() -> None:
    reordered = dict(reversed(MANIFEST.items()))
    assert canonical(reordered) == canonical(MANIFEST)
    parsed = orjson.loads(orjson.dumps(MANIFEST, option=orjson.OPT_INDENT_2))
    assert canonical(parsed) == canonical(MANIFEST)  # floats included


def test_a_keyed_manifest_load_refuses_unsigned_and_wrongly_signed(tmp_path: Path) -> None:
    unsigned = write_model(tmp_path / "unsigned")
    foreign = write_model(tmp_path / "foreign", key=KEY[::-1])
    signed = write_model(tmp_path / "signed", key=KEY)
    with pytest.raises(UntrustedModel, match="is unsigned"):
        Manifest.load(unsigned, KEY)
    with pytest.raises(UntrustedModel, match="is wrongly signed"):
        Manifest.load(foreign, KEY)
    assert Manifest.load(signed, KEY).version == "v1"
    assert Manifest.load(unsigned).version == "v1"  # without a key nothing is required


def test_training_export_signs_with_the_key(tmp_path: Path) -> None:
    import torch

    from models.ranker import MultiTaskRanker, export_onnx

    torch.manual_seed(0)
    path = export_onnx(MultiTaskRanker(4, 2), ["a", "b", "c", "d"], ["click", "like"],
                       tmp_path / "m", "m1", {"click": {"auc": 0.5}}, signing_key=KEY)
    assert Manifest.load(path, KEY).version == "m1"
    with pytest.raises(UntrustedModel):
        Manifest.load(path, KEY[::-1])
