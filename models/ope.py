"""Off-policy evaluation of logged ad-slot decisions: IPS, SNIPS, DM and DR.

A new ad policy is judged on the logs of the one that ran, before it serves anyone. No single
estimator is safe on real logs (the benchmarks of Saito et al. 2021, "Open Bandit Dataset and
Pipeline"), so all four are reported side by side, each with a bootstrap interval and the
effective sample size of its weights (Kish's ``(sum w)^2 / sum w^2``), which says how many rows
the estimate really rests on:

- IPS reweights each logged reward by ``w = pi_e(a|x) / pscore``: unbiased, but its variance
  grows with the weights;
- SNIPS divides by the sum of the weights instead of ``n``: a small bias, bounded by the rewards;
- DM averages a reward model over the evaluated policy: no weights, but all of the model's bias;
- DR is DM plus IPS on the model's residuals: unbiased when either the propensities or the
  reward model is right (Dudík, Langford and Li 2011).

The arrays are OBP's (``reward``, ``action``, ``position``, ``pscore``, ``action_dist``,
``estimated_rewards_by_reg_model``), so a log can be checked against OBP. Two differences:
``max_weight`` clips SNIPS's weights as well as IPS's and DR's (OBP's SNIPW ignores its
``lambda_``), and each bootstrap resample recomputes the estimator, so SNIPS renormalises per
resample (OBP resamples the per-row terms with the full sample's normaliser).

>>> log = BanditFeedback(reward=[1.0, 0.0, 1.0, 1.0], action=[0, 1, 1, 0],
...                      pscore=[0.5, 0.5, 0.5, 0.5], n_actions=2)
>>> always_0 = np.array([[[1.0], [0.0]]] * 4)
>>> estimate = ips(log, always_0)
>>> print(f"{estimate.value:.2f}, ess {estimate.ess:.1f}")
1.00, ess 2.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

SUM_TOLERANCE = 1e-6  # how far a row of action_dist may sum from 1
_BOOTSTRAP_CELLS = 1 << 21  # row draws held at once: resamples go in chunks of ~50 MB


def _fail(name: str, rule: str, bad: np.ndarray, values: np.ndarray,
          axes: tuple[str, ...] = ("row",), verb: str = "is") -> None:
    """Raise naming the first cell that breaks ``rule``, in one line (the CLI shows it so)."""
    if bad.any():
        where = tuple(np.argwhere(bad)[0])
        cell = ", ".join(f"{axis} {int(i)}" for axis, i in zip(axes, where, strict=True))
        more = f" ({int(bad.sum())} bad in all)" if bad.sum() > 1 else ""
        raise ValueError(f"{name} must {rule}: {cell} {verb} {values[where]:.6g}{more}")


def _vector(name: str, values: ArrayLike, n: int | None, integer: bool) -> np.ndarray:
    """A read-only 1-d copy: the log is validated once, so it must not change afterwards."""
    array = np.array(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} has {len(array)} rows but reward has {n}")
    if integer and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {array.dtype}")
    array = array.astype(np.int64 if integer else np.float64)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False, init=False)
class BanditFeedback:
    """Logged decisions in OBP's layout, validated once so the estimators can index freely.

    ``pscore`` is the logging policy's probability of the logged action, recorded at decision
    time. The weights divide by it, so 0 is refused; a fallback of 1 would silently drop the
    correction, which is why there is no default. ``position`` defaults to slot 0 for every row."""

    reward: np.ndarray  # float64 [n]
    action: np.ndarray  # int64 [n], in [0, n_actions)
    pscore: np.ndarray  # float64 [n], in (0, 1]
    position: np.ndarray  # int64 [n], in [0, len_list)
    n_actions: int
    len_list: int

    def __init__(self, reward: ArrayLike, action: ArrayLike, pscore: ArrayLike, n_actions: int,
                 position: ArrayLike | None = None, len_list: int = 1) -> None:
        r = _vector("reward", reward, None, integer=False)
        n = len(r)
        if n == 0:
            raise ValueError("reward is empty: the log needs at least one row")
        if n_actions < 1 or len_list < 1:
            raise ValueError(f"n_actions and len_list must be >= 1, got {n_actions}, {len_list}")
        a = _vector("action", action, n, integer=True)
        p = _vector("pscore", pscore, n, integer=False)
        pos = _vector("position", np.zeros(n, np.int64) if position is None else position, n,
                      integer=True)
        _fail("reward", "be finite", ~np.isfinite(r), r)
        _fail("action", f"be in [0, {n_actions})", (a < 0) | (a >= n_actions), a)
        _fail("pscore", "be in (0, 1]", ~((p > 0.0) & (p <= 1.0)), p)
        _fail("position", f"be in [0, {len_list})", (pos < 0) | (pos >= len_list), pos)
        for name, value in (("reward", r), ("action", a), ("pscore", p), ("position", pos),
                            ("n_actions", int(n_actions)), ("len_list", int(len_list))):
            object.__setattr__(self, name, value)

    @property
    def n(self) -> int:
        return len(self.reward)

    def _per_row(self, name: str, values: ArrayLike) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        shape = (self.n, self.n_actions, self.len_list)
        if array.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (rows, actions, positions), "
                             f"got {array.shape}")
        return array

    def check_action_dist(self, action_dist: ArrayLike) -> np.ndarray:
        """The evaluated policy's probabilities as float64, or a ValueError saying what is off."""
        dist = self._per_row("action_dist", action_dist)
        _fail("action_dist", "be a probability in [0, 1]", ~((dist >= 0.0) & (dist <= 1.0)), dist,
              ("row", "action", "position"))
        sums = dist.sum(axis=1)
        _fail("action_dist", "sum to 1 over actions", np.abs(sums - 1.0) > SUM_TOLERANCE, sums,
              ("row", "position"), verb="sums to")
        return dist

    def check_estimated_rewards(self, estimated_rewards: ArrayLike) -> np.ndarray:
        """The reward model's predictions as float64, or a ValueError saying what is off."""
        q_hat = self._per_row("estimated_rewards", estimated_rewards)
        _fail("estimated_rewards", "be finite", ~np.isfinite(q_hat), q_hat,
              ("row", "action", "position"))
        return q_hat

    def at_logged_position(self, per_row: np.ndarray) -> np.ndarray:
        """``per_row[i, :, position[i]]``: ``[n, n_actions]``, the slot each row was shown in."""
        return per_row[np.arange(self.n), :, self.position]


@dataclass(frozen=True)
class Estimate:
    """One estimator's value of the evaluated policy, with its percentile bootstrap interval.

    ``ess`` is the effective sample size of the weights the estimator applied (``n`` for DM,
    which weights every row alike)."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    ess: float
    n: int


def importance_weights(log: BanditFeedback, action_dist: ArrayLike,
                       max_weight: float | None = None) -> np.ndarray:
    """``pi_e(a_i | x_i, pos_i) / pscore_i``, clipped at ``max_weight`` (OBP's ``lambda_``):
    clipping trades a bias towards the logging policy for a bound on the variance."""
    dist = log.at_logged_position(log.check_action_dist(action_dist))
    weights = dist[np.arange(log.n), log.action] / log.pscore
    if max_weight is None:
        return weights
    if not max_weight > 0.0:
        raise ValueError(f"max_weight must be > 0, got {max_weight}")
    return np.minimum(weights, max_weight)


def effective_sample_size(weights: ArrayLike) -> float:
    """Kish's ``(sum w)^2 / sum w^2``: ``n`` for equal weights, near 1 when one row dominates;
    0 when every weight is 0 (the evaluated policy never takes a logged action)."""
    w = np.asarray(weights, dtype=np.float64)
    squares = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / squares if squares > 0.0 else 0.0


# Per row: the numerator and denominator of the estimator's ratio of sums, and the weights
# whose effective sample size it reports.
_Terms = tuple[np.ndarray, np.ndarray, np.ndarray]


def _ips(log: BanditFeedback, w: np.ndarray) -> _Terms:
    return w * log.reward, np.ones(log.n), w


def _snips(log: BanditFeedback, w: np.ndarray) -> _Terms:
    return w * log.reward, w, w


def _dm(log: BanditFeedback, model_value: np.ndarray) -> _Terms:
    return model_value, np.ones(log.n), np.ones(log.n)


def _dr(log: BanditFeedback, w: np.ndarray, model_value: np.ndarray,
        q_logged: np.ndarray) -> _Terms:
    return model_value + w * (log.reward - q_logged), np.ones(log.n), w


def _model_terms(log: BanditFeedback, action_dist: ArrayLike,
                 estimated_rewards: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the reward model's value of the evaluated policy, and its prediction for the
    logged action (both at the logged position)."""
    dist = log.at_logged_position(log.check_action_dist(action_dist))
    q_hat = log.at_logged_position(log.check_estimated_rewards(estimated_rewards))
    return np.sum(dist * q_hat, axis=1), q_hat[np.arange(log.n), log.action]


def _estimates(terms: dict[str, _Terms], n_bootstrap: int, alpha: float,
               seed: int) -> dict[str, Estimate]:
    """Each estimator's ``sum(numerator) / sum(denominator)``, over the rows and over the same
    bootstrap resamples (so the intervals of one log are paired).

    A resample is a count per row; one matrix product then sums every estimator's terms, which
    keeps 1000 resamples of 20k rows well under a second."""
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    columns = np.stack([column for t in terms.values() for column in t[:2]], axis=1)
    n = len(columns)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    sums = np.empty((n_bootstrap, columns.shape[1]))
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        rows = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        counts = np.bincount(rows.ravel(), minlength=size * n).reshape(size, n)
        sums[start:start + size] = counts @ columns
    totals = columns.sum(axis=0)
    estimates = {}
    with np.errstate(invalid="ignore", divide="ignore"):  # SNIPS with no weight: nan, not 0
        for k, (name, (_, _, weights)) in enumerate(terms.items()):
            low, high = np.quantile(sums[:, 2 * k] / sums[:, 2 * k + 1],
                                    [alpha / 2, 1.0 - alpha / 2])
            estimates[name] = Estimate(name, float(totals[2 * k] / totals[2 * k + 1]),
                                       float(low), float(high), effective_sample_size(weights), n)
    return estimates


def ips(log: BanditFeedback, action_dist: ArrayLike, *, max_weight: float | None = None,
        n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0) -> Estimate:
    """Inverse propensity scoring: ``mean(w * r)``."""
    w = importance_weights(log, action_dist, max_weight)
    return _estimates({"ips": _ips(log, w)}, n_bootstrap, alpha, seed)["ips"]


def snips(log: BanditFeedback, action_dist: ArrayLike, *, max_weight: float | None = None,
          n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0) -> Estimate:
    """Self-normalised IPS: ``sum(w * r) / sum(w)``; nan when every weight is 0."""
    w = importance_weights(log, action_dist, max_weight)
    return _estimates({"snips": _snips(log, w)}, n_bootstrap, alpha, seed)["snips"]


def dm(log: BanditFeedback, action_dist: ArrayLike, estimated_rewards: ArrayLike, *,
       n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0) -> Estimate:
    """Direct method: ``mean_i sum_a pi_e(a | x_i) q_hat(x_i, a)``; the logged rewards are
    not used."""
    model_value, _ = _model_terms(log, action_dist, estimated_rewards)
    return _estimates({"dm": _dm(log, model_value)}, n_bootstrap, alpha, seed)["dm"]


def dr(log: BanditFeedback, action_dist: ArrayLike, estimated_rewards: ArrayLike, *,
       max_weight: float | None = None, n_bootstrap: int = 1000, alpha: float = 0.05,
       seed: int = 0) -> Estimate:
    """Doubly robust: the DM term plus ``mean(w * (r - q_hat(x_i, a_i)))``."""
    w = importance_weights(log, action_dist, max_weight)
    terms = _dr(log, w, *_model_terms(log, action_dist, estimated_rewards))
    return _estimates({"dr": terms}, n_bootstrap, alpha, seed)["dr"]


def evaluate(log: BanditFeedback, action_dist: ArrayLike, estimated_rewards: ArrayLike, *,
             max_weight: float | None = None, n_bootstrap: int = 1000, alpha: float = 0.05,
             seed: int = 0) -> dict[str, Estimate]:
    """All four estimates of one evaluated policy, by name, on the same bootstrap resamples."""
    w = importance_weights(log, action_dist, max_weight)
    model_value, q_logged = _model_terms(log, action_dist, estimated_rewards)
    terms = {"ips": _ips(log, w), "snips": _snips(log, w), "dm": _dm(log, model_value),
             "dr": _dr(log, w, model_value, q_logged)}
    return _estimates(terms, n_bootstrap, alpha, seed)
