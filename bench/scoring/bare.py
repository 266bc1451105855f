"""The bound: the same model on plain onnxruntime, in the provider and with the threads the
worker itself logged, so that the ratio compares like with like (CUDA where it serves on it)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES
from models.scorer import Manifest, choose_provider
from stream.settings import Settings

_LOADED = re.compile(rb"model (\S+) loaded on (\w+) \((\d+) intra-op threads\)")


def export_untrained_model(out_dir: Path, version: str, signing_key: bytes | None = None
                           ) -> Path:
    """The ranker with untrained weights: the speed is the same as a trained one's. Signed
    with ``signing_key``, so that a worker requiring signatures serves it."""
    import torch  # the bench process only; the worker never imports it

    from models.ranker import MultiTaskRanker, export_onnx

    torch.manual_seed(0)
    model = MultiTaskRanker(len(RANKER_FEATURE_NAMES), len(TASK_NAMES))
    return export_onnx(model, RANKER_FEATURE_NAMES, TASK_NAMES, out_dir / version, version,
                       {"untrained": 1.0}, signing_key)


def worker_model(log_path: Path, version: str, settings: Settings) -> tuple[str, int | None]:
    """The provider and threads the worker logged for the model; else what it would choose."""
    for match in _LOADED.finditer(log_path.read_bytes()):
        if match.group(1).decode() == version:
            return match.group(2).decode(), int(match.group(3))
    return choose_provider(settings.scorer_device), None


def bare_candidates_per_s(session: ort.InferenceSession, manifest: Manifest, rows: int,
                          seconds: float, rng: np.random.Generator) -> float:
    """Candidates/s of plain ``session.run`` on ``[rows, F]``, for ``seconds`` (3 runs at
    least) after 3 unmeasured ones."""
    features = rng.standard_normal((rows, len(RANKER_FEATURE_NAMES))).astype(np.float32)
    feed = {manifest.input_name: features}
    outputs = [manifest.output_name]
    for _ in range(3):
        session.run(outputs, feed)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
        session.run(outputs, feed)
        runs += 1
    return runs * rows / elapsed
