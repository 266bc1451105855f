"""The ranker: ONNX export fidelity, the manifest contract, BN statistics kept rewritable,
training against the popularity baseline, the time split and the AUC helper."""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
import torch
from onnx import numpy_helper

from models.dataset import Dataset
from models.ranker import BN_LAYERS, MultiTaskRanker, bn_initializers, export_onnx
from models.training import auc, popularity_baseline, time_split, train

N_FEATURES = 12
TASKS = ("click", "hide")
METRIC_KEYS = {
    "auc",
    "log_loss",
    "calibration",
    "baseline_auc",
    "baseline_log_loss",
    "baseline_calibration",
    "positives",
}
MANIFEST_KEYS = {
    "version",
    "sha256",
    "feature_names",
    "task_names",
    "bn_layers",
    "taps",
    "bn_stats",
    "opset",
    "input_name",
    "output_name",
    "created_ts",
    "metrics",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiTaskRanker, Path]:
    """A model whose running stats are far from their (0, 1) start, exported once."""
    torch.manual_seed(0)
    model = MultiTaskRanker(N_FEATURES, len(TASKS), hidden1=32, hidden2=16)
    model.train()
    # Set, not trained: bn_hidden1's input is a bias-free Linear of batch-normalised features,
    # so training leaves its running mean at zero up to rounding (torch 2.11 gave ~1e-9).
    with torch.no_grad():
        for layer in BN_LAYERS:
            bn = getattr(model, layer)
            bn.running_mean.uniform_(-3.0, 3.0)
            bn.running_var.uniform_(0.5, 4.0)
    out_dir = tmp_path_factory.mktemp("export")
    features = [f"f{i}" for i in range(N_FEATURES)]
    manifest = export_onnx(model, features, TASKS, out_dir, "m-test-1", {"click": {"auc": 0.7}})
    assert model.training, "export must restore the caller's training mode"
    model.eval()
    return model, manifest


def test_onnx_matches_torch(exported: tuple[MultiTaskRanker, Path]) -> None:
    model, manifest = exported
    session = ort.InferenceSession(
        str(manifest.parent / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["features"]
    assert [o.name for o in session.get_outputs()] == ["probs"]
    rng = np.random.default_rng(1)
    for batch in (1, 257, 3):
        x = (rng.normal(size=(batch, N_FEATURES)) * 4.0 + 3.0).astype(np.float32)
        (onnx_probs,) = session.run(None, {"features": x})
        with torch.no_grad():
            torch_probs = model(torch.from_numpy(x)).numpy()
        assert onnx_probs.shape == (batch, len(TASKS))
        assert onnx_probs.dtype == np.float32
        np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5, rtol=0)


def test_manifest_contract(exported: tuple[MultiTaskRanker, Path]) -> None:
    _, manifest_path = exported
    manifest = orjson.loads(manifest_path.read_bytes())
    model_bytes = (manifest_path.parent / "model.onnx").read_bytes()
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["version"] == "m-test-1"
    assert manifest["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert manifest["feature_names"] == [f"f{i}" for i in range(N_FEATURES)]
    assert manifest["task_names"] == list(TASKS)
    assert manifest["input_name"] == "features"
    assert manifest["output_name"] == "probs"
    assert manifest["metrics"] == {"click": {"auc": 0.7}}
    assert abs(manifest["created_ts"] - time.time()) < 600
    proto = onnx.load_from_string(model_bytes)
    opsets = {op.domain: op.version for op in proto.opset_import}
    assert manifest["opset"] == opsets.get("", opsets.get("ai.onnx"))
    assert list(manifest["bn_layers"]) == list(BN_LAYERS)


def test_bn_statistics_are_named_initializers(exported: tuple[MultiTaskRanker, Path]) -> None:
    """A later stage rewrites these initializers without torch, so they must be there, intact."""
    model, manifest_path = exported
    manifest = orjson.loads(manifest_path.read_bytes())
    graph = onnx.load(str(manifest_path.parent / "model.onnx")).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    bn_inputs = [list(n.input) for n in graph.node if n.op_type == "BatchNormalization"]
    assert len(bn_inputs) == len(BN_LAYERS)
    for layer in BN_LAYERS:
        names = manifest["bn_layers"][layer]
        bn = getattr(model, layer)
        mean, var = initializers[names["running_mean"]], initializers[names["running_var"]]
        np.testing.assert_array_equal(mean, bn.running_mean.numpy())
        np.testing.assert_array_equal(var, bn.running_var.numpy())
        assert not np.allclose(mean, 0.0), "the fixture should have moved the running mean"
        assert [names["running_mean"], names["running_var"]] in [i[3:5] for i in bn_inputs]


def test_bn_initializers_refuses_a_graph_without_them(
    exported: tuple[MultiTaskRanker, Path],
) -> None:
    _, manifest_path = exported
    proto = onnx.load(str(manifest_path.parent / "model.onnx"))
    for init in proto.graph.initializer:
        if init.name == "bn_hidden2.running_var":
            init.name = "fused_0"
    with pytest.raises(RuntimeError, match="bn_hidden2"):
        bn_initializers(proto)


def synthetic_dataset(n_requests: int = 400, seed: int = 0) -> Dataset:
    """Click is logistic in two features plus an item effect; hide has positives only early."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(5, 40, n_requests)
    request_index = np.repeat(np.arange(n_requests, dtype=np.int64), sizes)
    n = len(request_index)
    items = rng.integers(0, 300, n)
    item_effect = rng.normal(0.0, 0.5, 300)
    scale = np.geomspace(0.1, 100.0, N_FEATURES)
    features = (rng.normal(size=(n, N_FEATURES)) * scale).astype(np.float32)
    logit = -2.5 + 1.5 * features[:, 0] / scale[0] - 1.5 * features[:, 3] / scale[3]
    click = rng.random(n) < 1.0 / (1.0 + np.exp(-(logit + item_effect[items])))
    hide = np.zeros(n, dtype=bool)
    hide[: n // 10] = rng.random(n // 10) < 0.05
    return Dataset(
        features=features,
        labels=np.stack([click, hide], axis=1).astype(np.float32),
        item_ids=np.array([f"i{i}" for i in items], dtype=object),
        request_index=request_index,
        feature_names=tuple(f"f{i}" for i in range(N_FEATURES)),
        task_names=TASKS,
    )


def test_train_beats_popularity_and_reports_every_metric(tmp_path: Path) -> None:
    dataset = synthetic_dataset()
    report = train(dataset, tmp_path, "m-train", epochs=4, batch_size=256, progress=False)
    assert report.n_train + report.n_holdout == len(dataset.features)
    split = report.n_train
    assert dataset.request_index[split - 1] != dataset.request_index[split]
    assert set(report.metrics) == set(TASKS)
    for values in report.metrics.values():
        assert set(values) == METRIC_KEYS
        assert all(math.isfinite(v) for v in values.values())
    click = report.metrics["click"]
    assert click["positives"] == dataset.labels[split:, 0].sum() > 0
    assert click["auc"] > click["baseline_auc"] + 0.05
    assert click["auc"] > 0.7
    assert 0.7 < click["calibration"] < 1.4
    assert click["log_loss"] < click["baseline_log_loss"]
    hide = report.metrics["hide"]  # no positives in the holdout: defined, neutral values
    assert (hide["positives"], hide["auc"], hide["calibration"]) == (0.0, 0.5, 1.0)
    manifest = orjson.loads(report.manifest_path.read_bytes())
    assert manifest["metrics"] == report.metrics
    assert manifest["version"] == "m-train"


def test_train_is_deterministic_given_seed(tmp_path: Path) -> None:
    dataset = synthetic_dataset(n_requests=150, seed=3)
    runs = [
        train(dataset, tmp_path / str(run), "v", epochs=2, batch_size=128, seed=7, progress=False)
        for run in range(2)
    ]
    assert runs[0].metrics == runs[1].metrics
    hashes = [orjson.loads(r.manifest_path.read_bytes())["sha256"] for r in runs]
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 0.9])
def test_time_split_keeps_requests_whole(fraction: float) -> None:
    rng = np.random.default_rng(4)
    request_index = np.repeat(np.arange(0, 300, 3, dtype=np.int64), rng.integers(1, 30, 100))
    split = time_split(request_index, fraction)
    assert 0 < split < len(request_index)
    assert request_index[split - 1] != request_index[split]
    assert len(np.unique(request_index[split:])) == max(1, round(fraction * 100))


def test_time_split_and_dataset_refuse_bad_input() -> None:
    with pytest.raises(ValueError):
        time_split(np.arange(10), 0.0)
    with pytest.raises(ValueError):
        time_split(np.zeros(10, dtype=np.int64), 0.2)
    dataset = synthetic_dataset(n_requests=10)
    with pytest.raises(ValueError, match="non-decreasing"):
        Dataset(
            dataset.features,
            dataset.labels,
            dataset.item_ids,
            dataset.request_index[::-1].copy(),
            dataset.feature_names,
            dataset.task_names,
        )


def test_popularity_baseline_smooths_and_falls_back() -> None:
    train_items = np.array(["a"] * 80 + ["b"] * 20, dtype=object)
    labels = np.zeros((100, 1), dtype=np.float32)
    labels[:40] = 1.0  # a: 40/80, b: 0/20, global 0.4
    rates = popularity_baseline(train_items, labels, np.array(["a", "b", "new"], dtype=object))
    np.testing.assert_allclose(rates[:, 0], [(40 + 8) / 100, 8 / 40, 0.4])


def brute_force_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = [1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg)]
    return sum(wins) / len(wins)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60).astype(np.float32)
    labels[:2] = (0.0, 1.0)
    scores = rng.integers(0, 6, 60).astype(np.float64)  # few values: many ties
    assert auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_edge_cases() -> None:
    assert auc(np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert auc(np.array([0.0, 1.0]), np.array([0.5, 0.5])) == 0.5
    assert auc(np.zeros(5), np.arange(5.0)) == 0.5
