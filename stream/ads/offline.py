"""Logged ad-slot decisions joined with their outcomes, in OBP's array layout, for off-policy
evaluation (:mod:`models.ope`) of another bandit setting before it serves anyone.

A round is one slot decision of a sampled request: its feature-log entry carries every feasible
action, the logging policy's whole distribution over them and each ad's context row; its ad
outcome carries what was shown, the propensity it was drawn with, and what it earned. Only a
round with both is usable, and only if the outcome's propensity is the logged probability of
its action: a propensity that disagrees with the distribution would bias every estimate.

Feasible ads differ from round to round, so actions go on a fixed axis: index 0 is "no ad" and
index ``i`` (1..K) the round's ``i``-th feasible ad, K the most feasible ads of any round.
Indices past a round's own ads are padding: infeasible, with probability 0 under every policy.

The reward at evaluation dial D is ``revenue + D * engagements_after``. The slot's net reward,
``revenue - D * (engagement without an ad - engagement with the action taken)``, differs from it
by ``D * engagement without an ad``, which no action changes, so comparisons of policies and
lifts are the same under both; only the level differs.

Each slot is a round given the logged decisions above it: the evaluated policy's decision at a
slot is judged in the feed the logging policy built above that slot, not in the feed it would
have built itself (the per-slot value, not the whole slate's).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from models.bandit import (
    CONTEXT_NAMES,
    DIM,
    BanditParams,
    action_probabilities,
    action_values,
    without_ad,
)
from models.ope import BanditFeedback, Estimate, evaluate, ips
from schemas import AdLabels, AdSlotLog, FeatureLog, Outcome
from stream.errors import StreamrankError

REWARD = "revenue + dial * engagements_after"
REWARD_NOTE = ("the slot's net reward (revenue - dial * engagement an ad costs against no ad) "
               "differs from this reward by dial * the engagement without an ad, which no "
               "action changes: policy comparisons and lifts are the same under both")
ACTION_AXIS = ("0 = no ad; i = the round's i-th feasible ad (its logged actions[i]); indices past "
               "a round's feasible ads are padding, with probability 0")
SKIP_REASONS = {
    "no_distribution": "the request was not in the feature-log sample: no distribution logged",
    "no_outcome": "no ad outcome for the decision yet (its window is still open, or it was lost)",
    "propensity_mismatch": "the outcome's action, slot or propensity is not the logged one",
    "other_context": "logged on context features other than this version's",
    "bad_distribution": "the logged probabilities do not sum to 1",
    "incomplete_outcome": "the ad outcome carries no propensity or labels",
}
PROPENSITY_RTOL = 1e-6  # a propensity stored as float32 somewhere still matches


class _Round(NamedTuple):
    slot: AdSlotLog
    chosen: int
    propensity: float
    labels: AdLabels
    policy_version: str


class NoRounds(StreamrankError):
    """No logged decision could be joined with an outcome: nothing to evaluate or export."""


@dataclass
class AdLogs:
    """The ad-slot records of a log, gathered one at a time so a topic is never held whole:
    the sampled slots' logs and the ad outcomes, each by decision id."""

    slots: dict[str, tuple[AdSlotLog, bool]] = field(default_factory=dict)  # and: our context?
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    unsampled: int = 0  # slot decisions logged without their distribution
    duplicates: int = 0
    malformed: list[str] = field(default_factory=list)  # where, and why

    def add(self, record: FeatureLog | Outcome) -> None:
        if isinstance(record, Outcome):
            if record.kind == "ad" and record.decision_id is not None:
                self._keep(self.outcomes, record.decision_id, record)
            return
        ours = tuple(record.ad_feature_names) == CONTEXT_NAMES
        for slot in record.ads:
            if slot.actions is None:
                self.unsampled += 1
            else:
                self._keep(self.slots, slot.decision_id, (slot, ours))

    def _keep(self, into: dict[str, Any], key: str, value: Any) -> None:
        if key in into:
            self.duplicates += 1  # a replayed record: the first one stands
        else:
            into[key] = value


@dataclass(frozen=True, eq=False)
class SlotRounds:
    """The usable rounds on the fixed action axis (see the module docstring)."""

    decision_ids: tuple[str, ...]
    policy_versions: tuple[str, ...]
    slot: np.ndarray          # int64 [n]: the feed position decided
    action: np.ndarray        # int64 [n]
    pscore: np.ndarray        # [n]: the logged propensity of ``action``
    revenue: np.ndarray       # [n]
    engagements: np.ndarray   # [n]: organic engagements below the slot
    context: np.ndarray       # [n, DIM]: the chosen action's row
    contexts: np.ndarray      # [n, n_actions, DIM]: no ad's row, each ad's row, zero padding
    feasible: np.ndarray      # bool [n, n_actions]
    logging_dist: np.ndarray  # [n, n_actions]: the logging policy's distribution

    @property
    def n(self) -> int:
        return len(self.action)

    @property
    def n_actions(self) -> int:
        return int(self.feasible.shape[1])


@dataclass(frozen=True)
class JoinCounts:
    """What the join used and why it left the rest out."""

    slot_decisions: int
    used: int
    skipped: dict[str, int]
    outcomes_without_decision: int  # ad outcomes whose slot log is missing or unsampled
    duplicates: int
    malformed: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"slot_decisions": self.slot_decisions, "used": self.used,
                "skipped": self.skipped, "skip_reasons": SKIP_REASONS,
                "outcomes_without_decision": self.outcomes_without_decision,
                "duplicates": self.duplicates, "malformed_records": len(self.malformed),
                "malformed": list(self.malformed[:100])}


def _round(slot: AdSlotLog, ours: bool, outcome: Outcome | None) -> str | _Round:
    """Why the round is unusable, or the round."""
    assert slot.actions is not None and slot.probabilities is not None
    if not ours or len(slot.context) != DIM:
        return "other_context"
    if abs(math.fsum(slot.probabilities) - 1.0) > 1e-6:
        return "bad_distribution"
    if outcome is None:
        return "no_outcome"
    if outcome.propensity is None or outcome.ad_labels is None:
        return "incomplete_outcome"
    if outcome.item_id not in slot.actions or outcome.position != slot.slot:
        return "propensity_mismatch"
    chosen = slot.actions.index(outcome.item_id)
    logged = slot.probabilities[chosen]
    if logged <= 0.0 or not math.isclose(outcome.propensity, logged, rel_tol=PROPENSITY_RTOL):
        return "propensity_mismatch"
    return _Round(slot, chosen, outcome.propensity, outcome.ad_labels,
                  outcome.policy_version or "unknown")


def join(logs: AdLogs) -> tuple[SlotRounds, JoinCounts]:
    """The usable rounds, in decision-id order (deterministic whatever order the logs came in),
    and the counts; :class:`NoRounds` when there are none."""
    skipped: Counter[str] = Counter({"no_distribution": logs.unsampled})
    kept: list[_Round] = []
    for decision_id in sorted(logs.slots):
        slot, ours = logs.slots[decision_id]
        verdict = _round(slot, ours, logs.outcomes.get(decision_id))
        if isinstance(verdict, str):
            skipped[verdict] += 1
        else:
            kept.append(verdict)
    counts = JoinCounts(
        slot_decisions=logs.unsampled + len(logs.slots), used=len(kept),
        skipped={reason: skipped[reason] for reason in SKIP_REASONS},
        outcomes_without_decision=len(logs.outcomes.keys() - logs.slots.keys()),
        duplicates=logs.duplicates, malformed=tuple(logs.malformed))
    if not kept:
        raise NoRounds(f"no usable rounds: {describe_counts(counts)}")
    return _rounds(kept), counts


def _rounds(kept: list[_Round]) -> SlotRounds:
    n = len(kept)
    n_actions = max(len(r.slot.probabilities or ()) for r in kept)
    contexts = np.zeros((n, n_actions, DIM))
    feasible = np.zeros((n, n_actions), dtype=bool)
    dist = np.zeros((n, n_actions))
    context = np.array([r.slot.context for r in kept], dtype=np.float64).reshape(n, DIM)
    for i, r in enumerate(kept):
        k = len(r.slot.probabilities or ())
        feasible[i, :k] = True
        dist[i, :k] = r.slot.probabilities or ()
        contexts[i, 0] = without_ad(context[i])  # no ad: the user and slot columns only
        if k > 1:
            contexts[i, 1:k] = r.slot.ad_contexts or ()
    return SlotRounds(
        decision_ids=tuple(r.slot.decision_id for r in kept),
        policy_versions=tuple(r.policy_version for r in kept),
        slot=np.array([r.slot.slot for r in kept], dtype=np.int64),
        action=np.array([r.chosen for r in kept], dtype=np.int64),
        pscore=np.array([r.propensity for r in kept], dtype=np.float64),
        revenue=np.array([r.labels.revenue for r in kept], dtype=np.float64),
        engagements=np.array([r.labels.engagements_after for r in kept], dtype=np.float64),
        context=context, contexts=contexts, feasible=feasible, logging_dist=dist)


def describe_counts(counts: JoinCounts) -> str:
    skips = ", ".join(f"{count} {reason.replace('_', ' ')}"
                      for reason, count in counts.skipped.items() if count)
    line = f"{counts.used} of {counts.slot_decisions} slot decisions used"
    return line + (f" (skipped: {skips})" if skips else "") + (
        f"; {len(counts.malformed)} malformed records" if counts.malformed else "")


def rewards(rounds: SlotRounds, dial: float) -> np.ndarray:
    """``revenue + dial * engagements_after`` per round (see the module docstring)."""
    return rounds.revenue + dial * rounds.engagements


def policy_dist(rounds: SlotRounds, params: BanditParams) -> np.ndarray:
    """``[n, n_actions, 1]``: the distribution ``params`` would have drawn each round's action
    from, by the serving code itself (:func:`models.bandit.action_probabilities`); padding 0."""
    dist = np.zeros((rounds.n, rounds.n_actions, 1))
    for i, k in enumerate(rounds.feasible.sum(axis=1)):
        dist[i, :k, 0] = action_probabilities(params, rounds.contexts[i, 1:k])
    return dist


def reward_model(rounds: SlotRounds, params: BanditParams, dial: float) -> np.ndarray:
    """``[n, n_actions, 1]``: DM's and DR's reward model, the parameters' expected value of
    each action at ``dial`` (:func:`models.bandit.action_values`); padding 0, never weighted."""
    q = action_values(params.retuned(dial=dial), rounds.contexts)
    return np.where(rounds.feasible, q, 0.0)[..., None]


def bandit_feedback(rounds: SlotRounds, dial: float) -> BanditFeedback:
    """The rounds as :class:`models.ope.BanditFeedback`: one slot per round, so position 0 of a
    list of one (the feed slot itself is in ``rounds.slot``)."""
    return BanditFeedback(reward=rewards(rounds, dial), action=rounds.action,
                          pscore=rounds.pscore, n_actions=rounds.n_actions)


def check_knobs(dial: float, epsilon: float) -> None:
    """Refuse a dial or epsilon no policy could run with, naming the option."""
    if not (math.isfinite(dial) and dial >= 0.0):
        raise ValueError(f"--dial must be a finite number >= 0, got {dial}")
    if not (math.isfinite(epsilon) and 0.0 <= epsilon <= 1.0):
        raise ValueError(f"--epsilon must be in [0, 1], got {epsilon}")


def _estimate(estimate: Estimate, baseline: float | None = None) -> dict[str, Any]:
    out = {"value": estimate.value, "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
           "ess": estimate.ess, "n": estimate.n}
    return out if baseline is None else out | {"lift": estimate.value - baseline}


def evaluate_setting(rounds: SlotRounds, counts: JoinCounts, params: BanditParams, dial: float,
                     epsilon: float, max_weight: float | None = None, n_bootstrap: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """The per-slot value of ``params`` retuned to ``dial`` and ``epsilon`` by IPS, SNIPS, DM
    and DR, and the logging policy's on-policy mean on the same rounds, with the same bootstrap
    resamples, so the lifts compare like with like."""
    check_knobs(dial, epsilon)
    target = params.retuned(dial=dial, epsilon=epsilon)
    log = bandit_feedback(rounds, dial)
    logging = ips(log, rounds.logging_dist[..., None], n_bootstrap=n_bootstrap, seed=seed)
    estimates = evaluate(log, policy_dist(rounds, target), reward_model(rounds, target, dial),
                         max_weight=max_weight, n_bootstrap=n_bootstrap, seed=seed)
    return {
        "target": {"version": target.version, "parent": target.parent, "dial": dial,
                   "epsilon": epsilon, "alpha": target.alpha, "samples": target.samples},
        "reward": REWARD, "reward_note": REWARD_NOTE, "action_axis": ACTION_AXIS,
        "counts": counts.as_dict(), "counts_line": describe_counts(counts),
        "n_actions": rounds.n_actions, "max_weight": max_weight, "n_bootstrap": n_bootstrap,
        "logging": {"policy_versions": dict(Counter(rounds.policy_versions).most_common()),
                    "mean_reward": _estimate(logging)},
        "estimates": {name: _estimate(e, logging.value) for name, e in estimates.items()},
    }


def summary(report: dict[str, Any]) -> str:
    """The evaluation report as a person reads it: what was evaluated, on what, and the table."""
    target, logging = report["target"], report["logging"]
    versions = ", ".join(f"{v} ({n})" for v, n in logging["policy_versions"].items())
    mean = logging["mean_reward"]
    lines = [
        f"target: {target['version']} ({target['parent']} at dial {target['dial']:g}, epsilon "
        f"{target['epsilon']:g}, alpha {target['alpha']:g})",
        f"rounds: {report['counts_line']}",
        f"logging policy: {versions}; on-policy mean {mean['value']:.4f} "
        f"[{mean['ci_low']:.4f}, {mean['ci_high']:.4f}]",
        f"{'estimator':<10}{'value':>10}  {'95% interval':<21}{'ESS':>9}{'lift':>10}"]
    for name, e in report["estimates"].items():
        interval = f"[{e['ci_low']:.4f}, {e['ci_high']:.4f}]"
        lines.append(f"{name:<10}{e['value']:>10.4f}  {interval:<21}{e['ess']:>9.1f}"
                     f"{e['lift']:>+10.4f}")
    malformed = report["counts"]["malformed"]
    lines += [f"malformed: {where}" for where in malformed[:5]]
    if len(malformed) > 5:
        lines.append(f"malformed: ... {report['counts']['malformed_records'] - 5} more")
    lines.append(f"reward per slot = {REWARD}; {REWARD_NOTE}.")
    return "\n".join(lines)
