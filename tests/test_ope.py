"""Off-policy estimators: hand-computed values on a tiny log, the identities between them, and
recovery of a known policy value on a synthetic contextual log."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest

import models.ope
from models.ope import (
    BanditFeedback,
    dm,
    dr,
    effective_sample_size,
    evaluate,
    importance_weights,
    ips,
    snips,
)

# A tiny log: 4 rows, 3 actions, 2 positions. Only each row's logged position matters; the other
# position holds different numbers, so reading the wrong slot changes every result below.
REWARD = [1.0, 0.0, 1.0, 0.5]
ACTION = [0, 1, 2, 1]
POSITION = [0, 1, 0, 1]
PSCORE = [0.5, 0.25, 0.2, 0.5]
ACTION_DIST = np.zeros((4, 3, 2))
ACTION_DIST[:, :, 0] = [[0.6, 0.2, 0.2], [0.0, 0.0, 1.0], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]]
ACTION_DIST[:, :, 1] = [[1.0, 0.0, 0.0], [0.1, 0.5, 0.4], [0.0, 1.0, 0.0], [0.4, 0.4, 0.2]]
Q_HAT = np.zeros((4, 3, 2))
Q_HAT[:, :, 0] = [[0.5, 0.3, 0.1], [0.9, 0.9, 0.9], [0.0, 0.5, 0.9], [0.9, 0.9, 0.9]]
Q_HAT[:, :, 1] = [[0.9, 0.9, 0.9], [0.2, 0.4, 0.6], [0.9, 0.9, 0.9], [0.3, 0.3, 0.3]]
# By hand: w = pi_e(a_i | pos_i) / pscore_i = [0.6/0.5, 0.5/0.25, 0.6/0.2, 0.4/0.5]
WEIGHTS = [1.2, 2.0, 3.0, 0.8]
# DM per row, sum_a pi_e * q_hat: [0.38, 0.46, 0.64, 0.30]
# DR residuals w * (r - q_hat(a_i)): [1.2*0.5, 2.0*-0.4, 3.0*0.1, 0.8*0.2] = [0.6, -0.8, 0.3, 0.16]


def tiny_log(**changes: Any) -> BanditFeedback:
    arrays: dict[str, Any] = {"reward": REWARD, "action": ACTION, "pscore": PSCORE,
                              "n_actions": 3, "position": POSITION, "len_list": 2}
    return BanditFeedback(**(arrays | changes))


def test_module_example_runs() -> None:
    assert doctest.testmod(models.ope).failed == 0


def test_estimators_match_hand_computed_values() -> None:
    log = tiny_log()
    assert importance_weights(log, ACTION_DIST) == pytest.approx(WEIGHTS)
    estimates = evaluate(log, ACTION_DIST, Q_HAT)
    assert estimates["ips"].value == pytest.approx(1.15)  # (1.2 + 0 + 3.0 + 0.4) / 4
    assert estimates["snips"].value == pytest.approx(4.6 / 7.0)  # sum(w) = 7.0
    assert estimates["dm"].value == pytest.approx(0.445)  # 1.78 / 4
    assert estimates["dr"].value == pytest.approx(0.51)  # 0.445 + 0.26 / 4
    assert estimates["ips"].ess == pytest.approx(49.0 / 15.08)  # 7^2 / sum(w^2)
    assert estimates["dm"].ess == 4.0
    assert {e.n for e in estimates.values()} == {4}
    # The single estimators agree with the combined entry point.
    assert ips(log, ACTION_DIST).value == pytest.approx(1.15)
    assert snips(log, ACTION_DIST).value == pytest.approx(4.6 / 7.0)
    assert dm(log, ACTION_DIST, Q_HAT).value == pytest.approx(0.445)
    assert dr(log, ACTION_DIST, Q_HAT).value == pytest.approx(0.51)


def test_clipping_changes_the_weighted_estimators_as_by_hand() -> None:
    log = tiny_log()
    assert importance_weights(log, ACTION_DIST, max_weight=2.0) == pytest.approx(
        [1.2, 2.0, 2.0, 0.8])
    clipped = evaluate(log, ACTION_DIST, Q_HAT, max_weight=2.0)
    assert clipped["ips"].value == pytest.approx(0.9)  # (1.2 + 0 + 2.0 + 0.4) / 4
    assert clipped["snips"].value == pytest.approx(0.6)  # 3.6 / 6.0
    assert clipped["dr"].value == pytest.approx(0.485)  # 0.445 + (0.6 - 0.8 + 0.2 + 0.16) / 4
    assert clipped["dm"].value == pytest.approx(0.445)  # DM has no weights to clip
    assert clipped["ips"].ess == pytest.approx(36.0 / 10.08)
    # A cap above every weight changes nothing.
    assert ips(log, ACTION_DIST, max_weight=3.0).value == pytest.approx(1.15)


def test_snips_is_invariant_to_scaling_all_weights() -> None:
    halved = tiny_log(pscore=[p / 2 for p in PSCORE])  # every weight doubles
    assert ips(halved, ACTION_DIST).value == pytest.approx(2 * 1.15)
    assert snips(halved, ACTION_DIST).value == pytest.approx(4.6 / 7.0)


def test_dm_ignores_the_logged_rewards() -> None:
    other = tiny_log(reward=[0.0, 1.0, 0.0, 3.0])
    assert dm(other, ACTION_DIST, Q_HAT).value == pytest.approx(0.445)
    assert ips(other, ACTION_DIST).value != pytest.approx(1.15)


def test_dr_equals_dm_when_the_reward_model_is_exact() -> None:
    exact = Q_HAT.copy()
    exact[np.arange(4), ACTION, POSITION] = REWARD
    log = tiny_log()
    assert dr(log, ACTION_DIST, exact).value == pytest.approx(dm(log, ACTION_DIST, exact).value)
    assert dr(log, ACTION_DIST, Q_HAT).value != pytest.approx(dm(log, ACTION_DIST, Q_HAT).value)


def test_ess_is_n_for_equal_weights_and_smaller_for_skewed_ones() -> None:
    assert effective_sample_size(np.full(50, 0.7)) == pytest.approx(50.0)
    assert effective_sample_size([1.0, 1.0, 1.0, 5.0]) == pytest.approx(64.0 / 28.0)
    assert effective_sample_size([4.0, 0.0, 0.0, 0.0]) == pytest.approx(1.0)
    # Evaluating the logging policy itself: every weight is 1, IPS is the mean reward.
    log = tiny_log(pscore=[0.5, 0.5, 0.5, 0.5])
    logging = np.full((4, 3, 2), 0.25)
    logging[np.arange(4), ACTION, :] = 0.5
    estimate = ips(log, logging)
    assert (estimate.value, estimate.ess) == pytest.approx((np.mean(REWARD), 4.0))


def test_a_policy_that_never_takes_a_logged_action_leaves_snips_undefined() -> None:
    elsewhere = np.zeros((4, 3, 2))
    elsewhere[np.arange(4), (np.array(ACTION) + 1) % 3, :] = 1.0
    estimates = evaluate(tiny_log(), elsewhere, Q_HAT)
    assert estimates["ips"].value == 0.0
    assert np.isnan(estimates["snips"].value)
    assert estimates["snips"].ess == 0.0
    assert np.isfinite(estimates["dm"].value)


def test_bootstrap_sums_each_resample_as_a_loop_would(monkeypatch: pytest.MonkeyPatch) -> None:
    log, n, n_bootstrap, chunk = tiny_log(), 4, 10, 3
    monkeypatch.setattr(models.ope, "_BOOTSTRAP_CELLS", chunk * n)  # 3 resamples per draw
    estimate = snips(log, ACTION_DIST, n_bootstrap=n_bootstrap, alpha=0.2, seed=5)
    w, r = np.array(WEIGHTS), np.array(REWARD)
    rng, ratios = np.random.default_rng(5), []
    for start in range(0, n_bootstrap, chunk):
        for rows in rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n)):
            ratios.append((w[rows] * r[rows]).sum() / w[rows].sum())
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx(
        tuple(np.quantile(ratios, [0.1, 0.9])))


def test_intervals_are_seeded() -> None:
    log = tiny_log()
    first, again = ips(log, ACTION_DIST, seed=3), ips(log, ACTION_DIST, seed=3)
    assert first == again
    assert first.ci_low < first.value < first.ci_high
    assert ips(log, ACTION_DIST, seed=4) != first


# -- a synthetic contextual log with a known value --------------------------------------------

N_ACTIONS, LEN_LIST, DIM = 4, 2, 5
SLOT_DECAY = np.array([1.0, 0.7])  # the second slot is seen less


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def synthetic(n: int, seed: int) -> tuple[BanditFeedback, np.ndarray, np.ndarray, float]:
    """A log from a stochastic logging policy; the evaluated policy, a biased reward model, and
    the evaluated policy's true expected reward on the logged contexts and slots."""
    world = np.random.default_rng(7)
    theta, bias = world.normal(size=(DIM, N_ACTIONS)) * 0.5, world.normal(size=N_ACTIONS) * 0.5
    phi = world.normal(size=(DIM, N_ACTIONS))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM))
    q = (1 / (1 + np.exp(-(x @ theta + bias + 0.5))))[:, :, None] * SLOT_DECAY  # [n, A, L]
    logging = 0.6 * _softmax(x @ phi) + 0.4 / N_ACTIONS  # an exploration floor of 0.1
    target = np.stack([_softmax(4.0 * q[:, :, k]) for k in range(LEN_LIST)], axis=2)
    position = rng.integers(0, LEN_LIST, n)
    action = (rng.random(n)[:, None] > np.cumsum(logging, axis=1)).sum(axis=1)
    reward = (rng.random(n) < q[np.arange(n), action, position]).astype(np.float64)
    log = BanditFeedback(reward, action, logging[np.arange(n), action], N_ACTIONS, position,
                         LEN_LIST)
    # The model is off by a fixed logit per action: DM inherits the bias, DR corrects it.
    q_hat = 1 / (1 + np.exp(-(np.log(q / (1 - q)) + np.array([0.6, -0.6, 0.4, -0.4])[:, None])))
    at_slot = np.arange(n), slice(None), position
    truth = float(np.mean(np.sum(target[at_slot] * q[at_slot], axis=1)))
    return log, target, q_hat, truth


def test_weighted_estimators_recover_a_known_policy_value() -> None:
    log, target, q_hat, truth = synthetic(20_000, seed=11)
    mean_reward = float(np.mean(log.reward))
    assert abs(mean_reward - truth) > 0.15 * truth  # the evaluated policy is not the logged one
    estimates = evaluate(log, target, q_hat, seed=1)
    # IPS's relative standard error here is about 1.5% (SNIPS's and DR's about 1%); over seeds,
    # about 9 logs in 10 have all three intervals covering the truth, and this one does.
    for name in ("ips", "snips", "dr"):
        estimate = estimates[name]
        assert estimate.value == pytest.approx(truth, rel=0.04), name
        assert estimate.ci_low <= truth <= estimate.ci_high, name
        assert 0.3 * log.n < estimate.ess < log.n, name
    assert estimates["dm"].value < 0.96 * truth  # the biased model alone misses
    assert estimates["dm"].ci_high < truth


# -- validation: one ValueError that says what is wrong -----------------------------------------

@pytest.mark.parametrize(("changes", "message"), [
    ({"pscore": [0.5, 0.0, 0.2, 0.5]}, r"pscore must be in \(0, 1\]: row 1 is 0"),
    ({"pscore": [0.5, 0.25, 1.5, 0.5]}, r"pscore must be in \(0, 1\]: row 2 is 1\.5"),
    ({"action": [0, 1, 2]}, "action has 3 rows but reward has 4"),
    ({"position": [0, 1]}, "position has 2 rows but reward has 4"),
    ({"action": [0, 3, 2, 1]}, r"action must be in \[0, 3\): row 1 is 3"),
    ({"action": [0.0, 1.0, 2.0, 1.0]}, "action must hold integers, got float64"),
    ({"position": [0, 1, 2, 1]}, r"position must be in \[0, 2\): row 2 is 2"),
    ({"reward": [1.0, np.nan, 1.0, np.inf]}, r"reward must be finite: row 1 is nan \(2 bad"),
    ({"reward": []}, "reward is empty"),
    ({"n_actions": 0}, "n_actions and len_list must be >= 1"),
])
def test_an_invalid_log_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_log(**changes)


def test_an_action_dist_that_is_not_a_distribution_is_refused() -> None:
    log = tiny_log()
    short = ACTION_DIST.copy()
    short[2, :, 1] = [0.3, 0.3, 0.3]
    with pytest.raises(ValueError, match=r"action_dist must sum to 1 over actions: "
                                         r"row 2, position 1 sums to 0\.9"):
        ips(log, short)
    negative = ACTION_DIST.copy()
    negative[0, :, 0] = [1.2, -0.2, 0.0]
    with pytest.raises(ValueError, match=r"action_dist must be a probability in \[0, 1\]: "
                                         "row 0, action 0, position 0 is 1.2"):
        snips(log, negative)
    with pytest.raises(ValueError, match=r"action_dist must have shape \(4, 3, 2\)"):
        evaluate(log, ACTION_DIST[:, :, :1], Q_HAT)


def test_a_bad_reward_model_or_option_is_refused() -> None:
    log = tiny_log()
    with pytest.raises(ValueError, match=r"estimated_rewards must have shape \(4, 3, 2\)"):
        dm(log, ACTION_DIST, Q_HAT[:3])
    broken = Q_HAT.copy()
    broken[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="estimated_rewards must be finite: row 3, action 2"):
        dr(log, ACTION_DIST, broken)
    with pytest.raises(ValueError, match="max_weight must be > 0, got 0"):
        ips(log, ACTION_DIST, max_weight=0.0)
    with pytest.raises(ValueError, match="n_bootstrap must be >= 1"):
        ips(log, ACTION_DIST, n_bootstrap=0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        ips(log, ACTION_DIST, alpha=1.0)


def test_the_log_cannot_change_after_validation() -> None:
    log = tiny_log()
    with pytest.raises(ValueError, match="read-only"):
        log.pscore[0] = 0.0
