"""The multi-task ranker network and its ONNX export.

torch is for training and export only: serving loads ``model.onnx`` with onnxruntime and reads
``manifest.json`` beside it. The BatchNorm layers stay real ``BatchNormalization`` nodes in the
export, with their running statistics as named initializers listed in the manifest, so the BN
role can adapt them online (AdaBN, :mod:`models.bn`) and a scorer can override those
initializers, without torch.

Two more files serve that role and never the serving path: ``taps.onnx``, a second graph that
computes each BatchNorm layer's input from a feature row under statistics given as inputs (so a
hidden layer's input can be recomputed with the adapted statistics before it), and
``bn_stats.json``, the trained statistics. Both are hashed in the manifest, so its signature
covers them.

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

from models.bn import BN_LAYERS, TAPS_INPUTS, TAPS_OUTPUTS, BnStats, stats_from_arrays
from models.scorer import MANIFEST_FILE, MODEL_FILE
from models.signing import SIGNATURE_FIELD, sign

INPUT_NAME = "features"
OUTPUT_NAME = "probs"
OPSET = 18  # the lowest opset the torch.export-based exporter emits without a version conversion
TAPS_FILE = "taps.onnx"
BN_STATS_FILE = "bn_stats.json"


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


class BatchNormTaps(nn.Module):
    """The inputs of ``bn_hidden1`` and ``bn_hidden2`` under statistics passed in, not stored:
    AdaBN re-estimates layer by layer, so a layer's input must be computed with the statistics
    already adapted before it. The input layer's own input is the feature row itself."""

    def __init__(self, ranker: MultiTaskRanker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(self, features: torch.Tensor, input_mean: torch.Tensor, input_var: torch.Tensor,
                hidden1_mean: torch.Tensor, hidden1_var: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.ranker
        x = _normalise(r.bn_input, features, input_mean, input_var)
        hidden1 = r.hidden1(x)
        hidden2 = r.hidden2(torch.relu(_normalise(r.bn_hidden1, hidden1, hidden1_mean,
                                                  hidden1_var)))
        return hidden1, hidden2


def _normalise(bn: nn.BatchNorm1d, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor
               ) -> torch.Tensor:
    return nn.functional.batch_norm(x, mean, var, bn.weight, bn.bias, training=False,
                                    eps=bn.eps)


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
    taps_bytes = _export_taps(model, n_features).SerializeToString()
    stats_bytes = trained_stats(model, version).to_bytes()
    manifest = {
        "version": version,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "feature_names": list(feature_names),
        "task_names": list(task_names),
        "bn_layers": bn_initializers(proto),
        "taps": {"file": TAPS_FILE, "sha256": hashlib.sha256(taps_bytes).hexdigest()},
        "bn_stats": {"file": BN_STATS_FILE, "sha256": hashlib.sha256(stats_bytes).hexdigest()},
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
    _write_atomic(out_dir / TAPS_FILE, taps_bytes)
    _write_atomic(out_dir / BN_STATS_FILE, stats_bytes)
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


def trained_stats(model: MultiTaskRanker, version: str) -> BnStats:
    """The running statistics training left, as the first stats version of ``version``."""
    return stats_from_arrays(version, {
        layer: (getattr(model, layer).running_mean.detach().numpy(),
                getattr(model, layer).running_var.detach().numpy())
        for layer in BN_LAYERS})


def _export_proto(model: MultiTaskRanker, n_features: int) -> onnx.ModelProto:
    """Trace the model in eval mode (running stats, not batch stats)."""
    return _export(model, (torch.zeros(2, n_features),), [INPUT_NAME], [OUTPUT_NAME],
                   {"features": {0: torch.export.Dim("batch")}})


def _export_taps(model: MultiTaskRanker, n_features: int) -> onnx.ModelProto:
    stats = []
    for layer in BN_LAYERS[:2]:
        bn = getattr(model, layer)
        stats += [bn.running_mean.detach().clone(), bn.running_var.detach().clone()]
    batch = torch.export.Dim("batch")
    shapes = {"features": {0: batch}, **{name: None for name in TAPS_INPUTS[1:]}}
    taps = BatchNormTaps(model).train(model.training)  # restored to the model's own mode
    return _export(taps, (torch.zeros(2, n_features), *stats),
                   list(TAPS_INPUTS), list(TAPS_OUTPUTS), shapes)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], input_names: list[str],
            output_names: list[str], dynamic_shapes: dict[str, Any]) -> onnx.ModelProto:
    """Export in eval mode, restoring the module's mode after."""
    was_training = module.training
    module.eval()
    try:
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=input_names, output_names=output_names,
            opset_version=OPSET, dynamic_shapes=dynamic_shapes, optimize=False,
            verbose=False)
    finally:
        module.train(was_training)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _default_opset(proto: onnx.ModelProto) -> int:
    return next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
