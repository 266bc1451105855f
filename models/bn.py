"""AdaBN: the ranker's BatchNorm running statistics re-estimated from live feature rows.

When traffic shifts (a surge inflates every counter, a client changes a unit), a ranker trained
last week normalises today's inputs with last week's moments. Re-estimating only those moments
on live inputs recovers much of the loss with no labels and no retraining (AdaBN, Li et al.
2016; Schneider et al., NeurIPS 2020). Weights and the BatchNorm affine parameters stay as
trained.

Conventions:

- **Momentum is PyTorch's**: the weight of the new batch,
  ``running = (1 - momentum) * running + momentum * batch``. Keras's ``momentum`` is the weight
  of the old value, so Keras 0.9 is PyTorch 0.1.
- The batch variance is unbiased (``n - 1``), as in PyTorch's running_var update.
- **The variance blend is the mixture's**: ``(1 - m) * var + m * batch_var
  + m * (1 - m) * (batch_mean - mean) ** 2``, the variance of the blended distribution, where
  PyTorch drops the last term. A batch of a live stream spans minutes, not the population: a
  channel that moves with time (an age, a growing counter) barely varies within one batch, and
  PyTorch's blend would shrink its variance step by step towards zero. The between-batch term
  keeps the spread the stream shows across batches.
- **Layer by layer**: a hidden layer's input is computed with the statistics already adapted
  before it (:class:`LayerInputs`), as AdaBN does.

The guards (:class:`Guards`) answer the known failure modes of test-time adaptation: too few
rows give unstable moments, broken inputs poison them, and over long runs statistics can drift
towards a collapse. An update either passes every guard or changes nothing (:class:`Refused`);
within one that passes, a channel that does not vary in the batch keeps its moments.

>>> trained = stats_from_arrays("m1", {"bn_input": (np.zeros(2), np.ones(2))})
>>> rows = np.tile([[1.0, 3.0], [3.0, 5.0]], (1000, 1))
>>> guards = Guards(momentum=0.5, min_rows=100, max_step_sd=3.0)
>>> adapted = adapt(trained, trained, rows, guards, layers=("bn_input",))
>>> adapted.layers["bn_input"][0].tolist()
[1.0, 2.0]
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from models.metrics import log_loss
from models.signing import SIGNATURE_FIELD, sign, signature_matches

BN_LAYERS = ("bn_input", "bn_hidden1", "bn_hidden2")
# The taps graph (models.ranker.BatchNormTaps): features and the statistics of the first two
# layers in, the inputs of the two hidden BatchNorm layers out.
TAPS_INPUTS = ("features", "input_mean", "input_var", "hidden1_mean", "hidden1_var")
TAPS_OUTPUTS = ("hidden1", "hidden2")
TRAINED = "trained"
FORMAT = 1

Moments = tuple[np.ndarray, np.ndarray]  # mean, variance: float32, one per channel
_VERSION = re.compile(rf"{TRAINED}|bn-[1-9][0-9]{{0,17}}")


class StatsError(ValueError):
    """A statistics file that cannot be used: unreadable, malformed or not finite."""


class UntrustedStats(StatsError):
    """Statistics not signed with the key this worker requires."""


@dataclass(frozen=True)
class BnStats:
    """One version of a model's BatchNorm statistics, with where it came from.

    ``offsets`` are the feature-log offsets (per partition, the last one) whose rows are in it:
    stored with the statistics, so a role that restarts skips rows it already blended in.
    """

    model_version: str
    version: str
    layers: Mapping[str, Moments]
    parent: str | None = None
    note: str = TRAINED
    rows: int = 0
    frozen: bool = False
    offsets: Mapping[int, int] = field(default_factory=dict)
    created_ts: float = 0.0

    @property
    def number(self) -> int:
        """n of ``bn-<n>``; 0 for the trained statistics."""
        return 0 if self.version == TRAINED else int(self.version.removeprefix("bn-"))

    def successor(self, number: int, **changes: Any) -> BnStats:
        """Version ``bn-<number>``, whose parent is this one."""
        return replace(self, version=f"bn-{number}", parent=self.version, **changes)

    def to_bytes(self, signing_key: bytes | None = None) -> bytes:
        body: dict[str, Any] = {
            "format": FORMAT, "model_version": self.model_version, "version": self.version,
            "parent": self.parent, "note": self.note, "rows": self.rows, "frozen": self.frozen,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "created_ts": self.created_ts,
            "layers": {name: {"mean": mean.tolist(), "var": var.tolist()}
                       for name, (mean, var) in self.layers.items()}}
        if signing_key is not None:
            body[SIGNATURE_FIELD] = sign(body, signing_key)
        return orjson.dumps(body)

    @classmethod
    def from_bytes(cls, data: bytes, signing_key: bytes | None = None) -> BnStats:
        """Parse and check a statistics file; with ``signing_key``, only one it signed."""
        try:
            raw = orjson.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise StatsError(f"not a format-{FORMAT} statistics file")
            if signing_key is not None and not signature_matches(raw, signing_key):
                raise UntrustedStats("the statistics are not signed with "
                                     "STREAMRANK_MODEL_SIGNING_KEY")
            layers = {name: (_channel_array(value["mean"]), _channel_array(value["var"]))
                      for name, value in raw["layers"].items()}
            stats = cls(model_version=str(raw["model_version"]), version=str(raw["version"]),
                        layers=layers, parent=raw["parent"], note=str(raw["note"]),
                        rows=int(raw["rows"]), frozen=bool(raw["frozen"]),
                        offsets={int(p): int(o) for p, o in raw["offsets"].items()},
                        created_ts=float(raw["created_ts"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StatsError(f"unreadable statistics: {exc}") from exc
        _check(stats)
        return stats


def stats_from_arrays(model_version: str, layers: Mapping[str, tuple[Any, Any]]) -> BnStats:
    """A model's trained statistics."""
    return BnStats(model_version, TRAINED, {
        name: (_channel_array(mean), _channel_array(var)) for name, (mean, var) in layers.items()})


def read_stats(path: Path, expected_sha256: str | None = None,
               signing_key: bytes | None = None) -> BnStats:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StatsError(f"cannot read statistics {path}: {exc}") from exc
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise StatsError(f"{path} does not match its published sha256")
    return BnStats.from_bytes(data, signing_key)


def same_shapes(stats: BnStats, reference: BnStats) -> bool:
    return list(stats.layers) == list(reference.layers) and all(
        stats.layers[n][0].shape == reference.layers[n][0].shape for n in reference.layers)


def _channel_array(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 1 or len(array) == 0:
        raise StatsError("statistics are one non-empty list per layer")
    return array


def _check(stats: BnStats) -> None:
    if not _VERSION.fullmatch(stats.version):
        raise StatsError(f"version {stats.version!r} is neither {TRAINED!r} nor bn-<n>")
    if list(stats.layers) != [n for n in BN_LAYERS if n in stats.layers] or not stats.layers:
        raise StatsError(f"layers must be among {BN_LAYERS}, in that order")
    for name, (mean, var) in stats.layers.items():
        if mean.shape != var.shape:
            raise StatsError(f"{name}: mean and var differ in length")
        if not (np.isfinite(mean).all() and np.isfinite(var).all() and (var > 0).all()):
            raise StatsError(f"{name}: statistics must be finite, variances positive")


@dataclass(frozen=True)
class Guards:
    """What an update must pass. Defaults chosen on the BN bench (docs/bn.md)."""

    momentum: float = 0.1  # PyTorch convention: the new batch's weight
    min_rows: int = 2000  # practitioners report 1-2k samples for stable moments
    max_step_sd: float = 1.0  # per channel, |mean step| <= this x the current std
    var_floor: float = 1e-5  # no variance goes below it (a constant channel stays usable)
    # A batch variance below this share of the current one holds the channel; an adapted
    # variance below this share of the trained one is a collapse.
    collapse_ratio: float = 1e-2

    def __post_init__(self) -> None:
        if not 0.0 < self.momentum <= 1.0:
            raise ValueError("momentum is the new batch's weight, in (0, 1]")
        if self.min_rows < 2 or self.max_step_sd <= 0 or self.var_floor <= 0:
            raise ValueError("min_rows >= 2, max_step_sd > 0 and var_floor > 0")
        if not 0.0 < self.collapse_ratio < 1.0:
            raise ValueError("collapse_ratio is a share, in (0, 1)")


@dataclass(frozen=True)
class Adapted:
    layers: dict[str, Moments]
    rows_used: int
    rows_rejected: int  # NaN or Inf
    channels_held: int = 0  # still within the batch, so kept as they were


@dataclass(frozen=True)
class Refused:
    reason: str  # min_rows | step_cap | collapse
    detail: str
    rows_rejected: int = 0
    # The refused channel before and after the update: its mean for step_cap, its variance
    # for collapse.
    before: float = 0.0
    after: float = 0.0


# Given rows and the statistics of the earlier layers, the inputs of the hidden BN layers.
LayerInputs = Callable[[np.ndarray, Mapping[str, Moments]], Sequence[np.ndarray]]


def adapt(current: BnStats, trained: BnStats, rows: np.ndarray, guards: Guards,
          taps: LayerInputs | None = None, layers: Sequence[str] = BN_LAYERS
          ) -> Adapted | Refused:
    """Blend one batch of feature rows into ``current``, layer by layer, or refuse it whole.

    ``taps`` computes hidden layers' inputs (:class:`OnnxTaps`); only ``layers[0]``, fed the
    rows themselves, needs none.
    """
    finite = np.isfinite(rows).all(axis=1)
    rejected = int((~finite).sum())
    rows = np.asarray(rows[finite], dtype=np.float64)
    if len(rows) < guards.min_rows:
        return Refused("min_rows", f"{len(rows)} finite rows, fewer than {guards.min_rows}",
                       rejected)
    adapted: dict[str, Moments] = {}
    held = 0
    for index, name in enumerate(layers):
        inputs = rows if index == 0 else _layer_input(taps, rows, current, adapted, index)
        mean, var = current.layers[name]
        batch_mean, batch_var = inputs.mean(axis=0), inputs.var(axis=0, ddof=1)
        m = guards.momentum
        # A channel that varies but not within this batch (a rare flag absent from it, an input
        # stuck at one value): the batch says nothing about its spread, so it keeps its moments.
        # Blended, a rare flag's variance would shrink until its rare value explodes.
        still = (var > 10 * guards.var_floor) & (batch_var < guards.collapse_ratio * var)
        held += int(still.sum())
        new_mean = np.where(still, mean, (1 - m) * mean + m * batch_mean)
        new_var = np.where(still, var, np.maximum(
            (1 - m) * var + m * batch_var + m * (1 - m) * (batch_mean - mean) ** 2,
            guards.var_floor))
        refusal = _guard(name, guards, trained.layers[name][1], mean, var, new_mean, new_var)
        if refusal is not None:
            return replace(refusal, rows_rejected=rejected)
        adapted[name] = (new_mean.astype(np.float32), new_var.astype(np.float32))
    return Adapted(adapted, len(rows), rejected, held)


def _layer_input(taps: LayerInputs | None, rows: np.ndarray, current: BnStats,
                 adapted: Mapping[str, Moments], index: int) -> np.ndarray:
    if taps is None:
        raise ValueError("hidden layers need taps to compute their inputs")
    stats = {name: adapted.get(name, current.layers[name]) for name in BN_LAYERS[:2]}
    return np.asarray(taps(rows.astype(np.float32), stats)[index - 1], dtype=np.float64)


def _guard(name: str, guards: Guards, trained_var: np.ndarray, mean: np.ndarray,
           var: np.ndarray, new_mean: np.ndarray, new_var: np.ndarray) -> Refused | None:
    # A channel constant in training (a flag always on, a counter never fed) has a variance
    # near zero; measured in its own sd, float rounding alone would be a huge step.
    reference = np.maximum(var, guards.var_floor)
    step = np.abs(new_mean - mean) / np.sqrt(reference)
    widen = np.abs(np.log(np.sqrt(new_var / reference)))
    too_far = (step > guards.max_step_sd) | (widen > np.log1p(guards.max_step_sd))
    if too_far.any():
        worst = int(np.argmax(np.maximum(step, widen)))
        return Refused("step_cap", f"{name}[{worst}]: mean step {step[worst]:.3g} sd, std "
                       f"ratio {np.sqrt(new_var[worst] / reference[worst]):.3g}; cap "
                       f"{guards.max_step_sd:g} sd", before=float(mean[worst]),
                       after=float(new_mean[worst]))
    # Statistics sliding towards zero over many updates: the long-run collapse of test-time
    # adaptation.
    collapsing = (trained_var > 10 * guards.var_floor) & (
        new_var < guards.collapse_ratio * trained_var)
    if collapsing.any():
        worst = int(np.flatnonzero(collapsing)[0])
        return Refused("collapse", f"{name}[{worst}]: variance {new_var[worst]:.3g} after the "
                       f"update, {trained_var[worst]:.3g} trained", before=float(var[worst]),
                       after=float(new_var[worst]))
    return None


class OnnxTaps:
    """The taps graph on onnxruntime's CPU provider: the BN role's, never the serving path's."""

    def __init__(self, path: Path, expected_sha256: str) -> None:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected_sha256:
            raise StatsError(f"{path} does not match the manifest's sha256")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def __call__(self, rows: np.ndarray, stats: Mapping[str, Moments]) -> Sequence[np.ndarray]:
        (input_mean, input_var), (hidden1_mean, hidden1_var) = (stats[n] for n in BN_LAYERS[:2])
        values = (rows, input_mean, input_var, hidden1_mean, hidden1_var)
        return self.session.run(list(TAPS_OUTPUTS), dict(zip(TAPS_INPUTS, values, strict=True)))


@dataclass(frozen=True)
class Verdict:
    """The watchdog's judgement of a promoted version against its parent, on the same rows."""

    version: str
    parent: str
    loss: float
    parent_loss: float
    outcomes: int
    margin: float

    @property
    def worse(self) -> bool:
        return self.loss > self.parent_loss * (1 + self.margin)


def judge(version: str, parent: str, labels: np.ndarray, probs: np.ndarray,
          parent_probs: np.ndarray, margin: float) -> Verdict:
    """Paired: both versions score the same labelled rows, so a shift in traffic between
    two periods cannot pass for a better or worse version."""
    return Verdict(version, parent, log_loss(labels, probs), log_loss(labels, parent_probs),
                   len(labels), margin)
