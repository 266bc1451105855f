"""The multi-task ranker network and its ONNX export.

torch is for training and export only: serving loads ``model.onnx`` with onnxruntime and reads
``manifest.json`` beside it. The BatchNorm layers stay real ``BatchNormalization`` nodes in the
export, with their running statistics as named initializers listed in the manifest, so a later
stage can adapt them online (AdaBN) by rewriting those initializers, without torch.

Exporter notes (torch 2.13): the legacy TorchScript exporter deduplicates initializers with equal
values (a fresh BN's running_var aliases its weight), and the torch.export-based exporter's
optimizer fuses a BN that follows a Linear into the Gemm. So we use the torch.export-based exporter
with ``optimize=False`` (its equivalent of ``do_constant_folding=False``) and check the result.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import orjson
import torch
from torch import nn

from models.signing import SIGNATURE_FIELD, sign

BN_LAYERS = ("bn_input", "bn_hidden1", "bn_hidden2")
INPUT_NAME = "features"
OUTPUT_NAME = "probs"
OPSET = 18  # the lowest opset the torch.export-based exporter emits without a version conversion
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


class MultiTaskRanker(nn.Module):
    """Dense features [n, F] -> per-task engagement probabilities [n, T], in task order."""

    # About 240k parameters with our 116 features: the size DESIGN.md's serving bound (a
    # 233k-parameter MLP) is quoted for, so the bench's bare-onnxruntime ratio means the same.
    def __init__(self, n_features: int, n_tasks: int, hidden1: int = 640, hidden2: int = 256):
        super().__init__()
        if n_features < 1 or n_tasks < 1:
            raise ValueError("the ranker needs at least one feature and one task")
        self.bn_input = nn.BatchNorm1d(n_features)
        # No bias before a BatchNorm: its shift (beta) already provides one.
        self.hidden1 = nn.Linear(n_features, hidden1, bias=False)
        self.bn_hidden1 = nn.BatchNorm1d(hidden1)
        self.hidden2 = nn.Linear(hidden1, hidden2, bias=False)
        self.bn_hidden2 = nn.BatchNorm1d(hidden2)
        self.heads = nn.Linear(hidden2, n_tasks)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores, for a numerically stable BCE during training."""
        x = self.bn_input(features)
        x = torch.relu(self.bn_hidden1(self.hidden1(x)))
        x = torch.relu(self.bn_hidden2(self.hidden2(x)))
        return self.heads(x)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))


def export_onnx(
    model: MultiTaskRanker,
    feature_names: Sequence[str],
    task_names: Sequence[str],
    out_dir: Path,
    version: str,
    metrics: Mapping[str, Any],
    signing_key: bytes | None = None,
) -> Path:
    """Write ``model.onnx`` and ``manifest.json`` into ``out_dir``; return the manifest path.

    The manifest is written last and atomically, so a reader that finds it finds a whole model.
    With ``signing_key`` it is signed (:mod:`models.signing`), for workers that require it.
    """
    n_features = model.bn_input.num_features
    if len(feature_names) != n_features or len(task_names) != model.heads.out_features:
        raise ValueError("feature_names and task_names must match the model's input and output")
    proto = _export_proto(model, n_features)
    model_bytes = proto.SerializeToString()
    manifest = {
        "version": version,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "feature_names": list(feature_names),
        "task_names": list(task_names),
        "bn_layers": bn_initializers(proto),
        "opset": _default_opset(proto),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "created_ts": time.time(),
        "metrics": dict(metrics),
    }
    if signing_key is not None:
        manifest[SIGNATURE_FIELD] = sign(manifest, signing_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / MODEL_FILE, model_bytes)
    manifest_path = out_dir / MANIFEST_FILE
    _write_atomic(manifest_path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest_path


def bn_initializers(proto: onnx.ModelProto) -> dict[str, dict[str, str]]:
    """Map each BN layer to the initializers holding its running stats, checking they exist.

    Fails loudly if the exporter folded, fused or renamed a layer: online adaptation depends on it.
    """
    initializers = {init.name for init in proto.graph.initializer}
    bn_stats = {
        (node.input[3], node.input[4])
        for node in proto.graph.node
        if node.op_type == "BatchNormalization"
    }
    layers = {}
    for layer in BN_LAYERS:
        mean, var = f"{layer}.running_mean", f"{layer}.running_var"
        if (mean, var) not in bn_stats or not {mean, var} <= initializers:
            raise RuntimeError(f"the ONNX export lost BatchNorm layer {layer!r} or its statistics")
        layers[layer] = {"running_mean": mean, "running_var": var}
    return layers


def _export_proto(model: MultiTaskRanker, n_features: int) -> onnx.ModelProto:
    """Trace the model in eval mode (running stats, not batch stats), restoring its mode after."""
    was_training = model.training
    model.eval()
    try:
        program = torch.onnx.export(
            model,
            (torch.zeros(2, n_features),),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamic_shapes={"features": {0: torch.export.Dim("batch")}},
            optimize=False,
            verbose=False,
        )
    finally:
        model.train(was_training)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
