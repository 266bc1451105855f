"""ONNX scoring with onnxruntime: CUDA with IOBinding when it really works, else CPU.

This module is on the serving path and must never import torch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnxruntime as ort
import orjson

from models.bn import TRAINED, BnStats, StatsError, read_stats, same_shapes
from models.signing import SIGNATURE_FIELD, signature_matches

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
MODEL_FILE = "model.onnx"  # what export writes and serving reads, side by side in a directory
MANIFEST_FILE = "manifest.json"


class ModelError(ValueError):
    """A model that cannot be served: missing, corrupt, or built for other features."""


class UntrustedModel(ModelError):
    """A model refused before it is read: not where models may be, or not signed by our key."""


class Scorer(Protocol):
    version: str
    stats_version: str
    stats: BnStats | None  # None: the trained statistics, or a model without BatchNorm
    task_names: tuple[str, ...]

    def score(self, features: np.ndarray) -> np.ndarray:
        """Per-task probabilities ``[n, len(task_names)]`` for a float32 matrix."""
        ...


@dataclass(frozen=True)
class Manifest:
    version: str
    sha256: str
    feature_names: tuple[str, ...]
    task_names: tuple[str, ...]
    bn_layers: dict[str, Any]
    input_name: str
    output_name: str
    model_path: Path
    taps: dict[str, str] | None = None  # file and sha256 of the BN taps graph (models.ranker)
    bn_stats: dict[str, str] | None = None  # file and sha256 of the trained BN statistics

    @classmethod
    def load(cls, path: Path, signing_key: bytes | None = None) -> Manifest:
        """Read a manifest; with ``signing_key``, only one that key signed (the bytes checked
        are the bytes parsed, so the file cannot change in between)."""
        try:
            raw = orjson.loads(path.read_bytes())
            if not isinstance(raw, dict):
                raise TypeError(f"a JSON object was expected, not {type(raw).__name__}")
            if signing_key is not None and not signature_matches(raw, signing_key):
                state = "wrongly signed" if SIGNATURE_FIELD in raw else "unsigned"
                raise UntrustedModel(f"model manifest {path} is {state}; this worker serves "
                                     "only manifests signed with STREAMRANK_MODEL_SIGNING_KEY")
            return cls(
                version=str(raw["version"]), sha256=str(raw["sha256"]),
                feature_names=tuple(raw["feature_names"]), task_names=tuple(raw["task_names"]),
                bn_layers=dict(raw["bn_layers"]), input_name=str(raw["input_name"]),
                output_name=str(raw["output_name"]), model_path=path.parent / MODEL_FILE,
                taps=raw.get("taps"), bn_stats=raw.get("bn_stats"))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelError(f"unreadable model manifest {path}: {exc}") from exc

    def trained_stats(self) -> BnStats:
        """The statistics training left; models exported before online BN have none."""
        if self.bn_stats is None:
            raise ModelError(f"model {self.version} has no BN statistics file: retrain it to "
                             "adapt its BatchNorm statistics online")
        try:
            return read_stats(self.model_path.parent / self.bn_stats["file"],
                              self.bn_stats["sha256"])
        except StatsError as exc:
            raise ModelError(f"model {self.version}: {exc}") from exc


def cuda_usable() -> bool:
    """True only if onnxruntime has the CUDA EP *and* a CUDA device answers.

    onnxruntime-gpu lists the CUDA EP even on machines without a GPU and then logs loud load
    errors, so ask the driver directly (no torch on the serving path).
    """
    if CUDA not in ort.get_available_providers():
        return False
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 \
        and count.value > 0


def choose_provider(device: Device) -> str:
    if device == "cpu":
        return CPU
    if cuda_usable():
        _preload_cuda_libraries()
        return CUDA
    if device == "cuda":
        raise ModelError("STREAMRANK_SCORER_DEVICE=cuda but no usable CUDA device was found")
    return CPU


@functools.cache
def _preload_cuda_libraries() -> None:
    """Once per process, not per model load. onnxruntime-gpu[cuda,cudnn] puts the CUDA
    libraries in site-packages/nvidia, where the CUDA EP's own loader does not look; system-wide
    installs are found as well. directory="": those packages first, never a co-installed
    torch's (never imported here)."""
    ort.preload_dlls(directory="")


# A large micro-batch runs on the CPU in slices of this many rows: each slice's activations stay
# in cache. Measured on the ~240k-parameter ranker, 20k rows at once scored 268k rows/s (2
# threads) and 153k (1 thread); in slices of 500, 358k and 199k. A GPU gets the whole batch.
CPU_ROWS_PER_RUN = 512


class OnnxScorer:
    """One onnxruntime session for one model version and one set of its BatchNorm statistics;
    immutable, so swapping is a reference.

    Adapted statistics replace the BN initializers when the session is built (onnxruntime's
    ``add_initializer``), so the serving graph and its speed stay those of the export.
    """

    def __init__(self, manifest: Manifest, provider: str, intra_op_threads: int = 0,
                 stats: BnStats | None = None) -> None:
        self.manifest = manifest
        self.version = manifest.version
        self.stats_version = TRAINED if stats is None else stats.version
        self.stats = stats
        self.task_names = manifest.task_names
        self.intra_op_threads = intra_op_threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # Spinning pool threads burn a core between the many small runs of a serving loop.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._overrides = self._override_stats(options, stats)  # kept alive with the session
        model_bytes = manifest.model_path.read_bytes()
        if hashlib.sha256(model_bytes).hexdigest() != manifest.sha256:
            raise ModelError(f"{manifest.model_path} does not match the manifest's sha256")
        providers = [CUDA, CPU] if provider == CUDA else [CPU]
        try:
            self.session = ort.InferenceSession(model_bytes, options, providers=providers)
        except Exception as exc:  # onnxruntime's errors (InvalidProtobuf, Fail...) are bare
            raise ModelError(f"onnxruntime cannot load {manifest.model_path}: {exc}") from exc
        got = self.session.get_providers()[0]
        if got != provider:
            raise ModelError(f"asked onnxruntime for {provider}, session got {got}")
        self.provider = provider
        log.info("model %s loaded on %s (%d intra-op threads), %s statistics", self.version,
                 provider, intra_op_threads, self.stats_version)

    def with_stats(self, stats: BnStats) -> OnnxScorer:
        """The same model with other BatchNorm statistics: blocking, run it off the loop."""
        return OnnxScorer(self.manifest, self.provider, self.intra_op_threads, stats)

    def _override_stats(self, options: ort.SessionOptions, stats: BnStats | None
                        ) -> list[ort.OrtValue]:
        if stats is None:
            return []
        if stats.model_version != self.version:
            raise ModelError(f"statistics {stats.version} belong to model {stats.model_version}"
                             f", not {self.version}")
        if not same_shapes(stats, self.manifest.trained_stats()):
            raise ModelError(f"statistics {stats.version} do not fit model {self.version}")
        values = []
        for layer, (mean, var) in stats.layers.items():
            names = self.manifest.bn_layers[layer]
            for name, array in ((names["running_mean"], mean), (names["running_var"], var)):
                value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
                options.add_initializer(name, value)
                values.append(value)
        return values

    def score(self, features: np.ndarray) -> np.ndarray:
        if self.provider == CUDA:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.manifest.input_name, features)
            binding.bind_output(self.manifest.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            return np.asarray(binding.copy_outputs_to_cpu()[0])
        if len(features) <= CPU_ROWS_PER_RUN:
            return self._run(features)
        return np.concatenate([self._run(features[start:start + CPU_ROWS_PER_RUN])
                               for start in range(0, len(features), CPU_ROWS_PER_RUN)])

    def _run(self, features: np.ndarray) -> np.ndarray:
        outputs = self.session.run([self.manifest.output_name],
                                   {self.manifest.input_name: features})
        return np.asarray(outputs[0])


def load_scorer(manifest_path: Path, expected_features: tuple[str, ...], device: Device,
                intra_op_threads: int = 0, expected_sha256: str | None = None,
                signing_key: bytes | None = None) -> OnnxScorer:
    """Load a model, refusing one trained on a different feature layout than serving builds,
    one whose bytes are not the ones that were published, or (with ``signing_key``) one whose
    manifest that key did not sign."""
    manifest = Manifest.load(manifest_path, signing_key)
    if expected_sha256 is not None and manifest.sha256 != expected_sha256:
        raise ModelError(f"model {manifest.version}: published sha256 {expected_sha256[:12]}… "
                         f"differs from the manifest's {manifest.sha256[:12]}…")
    if manifest.feature_names != expected_features:
        missing = sorted(set(expected_features) ^ set(manifest.feature_names))[:5]
        raise ModelError(f"model {manifest.version} was trained on other features "
                         f"(differences include {missing or 'the column order'})")
    return OnnxScorer(manifest, choose_provider(device), intra_op_threads)


class PopularityScorer:
    """Cold-start scorer used until a model is published: the items' smoothed rates.

    Columns are read from the ranking matrix by name, so it needs no training and no ONNX.
    """

    version = "popularity-fallback"
    stats_version = "none"
    stats: BnStats | None = None

    def __init__(self, feature_names: tuple[str, ...], task_names: tuple[str, ...]) -> None:
        self.task_names = task_names
        self._columns = [feature_names.index(f"item_{task}_rate_1d") for task in task_names]

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features[:, self._columns])
