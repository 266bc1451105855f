"""Offline evaluation of ad-slot settings (stream/ads): the join of logged decisions with their
outcomes, the fixed action axis, the estimates on a synthetic log, the OBP export, and the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from models.bandit import (
    AD_COLUMNS,
    CONTEXT_NAMES,
    DIM,
    AdRequest,
    BanditParams,
    Feedback,
    decide,
    learn,
    net_scores,
)
from models.ope import BanditFeedback
from schemas import AdLabels, AdSlotLog, FeatureLog, Outcome, encode
from stream.ads.export import FEEDBACK_FILE, META_FILE, export_obp
from stream.ads.offline import (
    AdLogs,
    NoRounds,
    evaluate_setting,
    join,
    policy_dist,
    reward_model,
    rewards,
)
from stream.cli import app

REVENUE = CONTEXT_NAMES.index("ad_expected_revenue")
BELOW = CONTEXT_NAMES.index("value_below")
SLOTS = (2, 5, 8, 11)


def make_request(rng: np.random.Generator, k: int = 6) -> AdRequest:
    return AdRequest(
        user=np.array([0.05, 0.02, 3.0]), interests=rng.standard_normal((2, 8)),
        ad_ids=[f"a{i}" for i in range(k)], bids=rng.lognormal(0.7, 0.5, k),
        click_rates=rng.uniform(0.0, 0.1, k), conversion_rates=rng.uniform(0.0, 0.5, k),
        embeddings=rng.standard_normal((k, 8)),
        organic_values=np.sort(rng.uniform(0.0, 1.0, 20))[::-1], slots=SLOTS, n=16)


def feature_log(request_id: str, ads: list[AdSlotLog]) -> FeatureLog:
    return FeatureLog(ts=time.time(), request_id=request_id, user_id="u1", model_version="m1",
                      feature_names=[], item_ids=[], rows=[],
                      ad_feature_names=list(CONTEXT_NAMES), ads=ads)


def outcome(decision_id: str, slot: int, ad_id: str | None, propensity: float, revenue: float,
            engagements: int, version: str = "bandit-3") -> Outcome:
    return Outcome(ts=time.time(), request_id="r", user_id="u1", seq=0, kind="ad",
                   item_id=ad_id, position=slot, model_version="m1", stats_version="s1",
                   window_s=60.0, propensity=propensity, policy="linucb",
                   policy_version=version, decision_id=decision_id,
                   ad_labels=AdLabels(impression=ad_id is not None, revenue=revenue,
                                      engagements_after=engagements))


def row(value: float) -> list[float]:
    return [value] * DIM


def three_rounds() -> AdLogs:
    """Three usable rounds with 2, 0 and 1 feasible ads, and one of each way to be skipped."""
    logs = AdLogs()
    logs.add(feature_log("r1", [
        AdSlotLog(decision_id="d1", slot=2, context=row(3.0), actions=[None, "a1", "a2"],
                  probabilities=[0.8, 0.1, 0.1], ad_contexts=[row(2.0), row(3.0)]),
        AdSlotLog(decision_id="d2", slot=5, context=row(0.5), actions=[None],
                  probabilities=[1.0], ad_contexts=[]),
        AdSlotLog(decision_id="d3", slot=9, context=row(4.0), actions=[None, "a3"],
                  probabilities=[0.3, 0.7], ad_contexts=[row(4.0)]),
        AdSlotLog(decision_id="d4", slot=12, context=row(1.0)),  # not sampled
        AdSlotLog(decision_id="d5", slot=14, context=row(1.0), actions=[None, "a4"],
                  probabilities=[0.5, 0.5], ad_contexts=[row(1.0)]),  # no outcome
        AdSlotLog(decision_id="d6", slot=15, context=row(1.0), actions=[None, "a5"],
                  probabilities=[0.5, 0.5], ad_contexts=[row(1.0)]),  # propensity mismatch
    ]))
    for record in (outcome("d3", 9, "a3", 0.7, 0.5, 0), outcome("d1", 2, "a2", 0.1, 3.0, 1),
                   outcome("d2", 5, None, 1.0, 0.0, 4), outcome("d6", 15, "a5", 0.9, 0.0, 0),
                   outcome("d9", 3, None, 0.5, 0.0, 1), outcome("d1", 2, "a2", 0.1, 3.0, 1)):
        logs.add(record)
    return logs


def test_the_join_puts_each_round_on_the_fixed_action_axis() -> None:
    rounds, counts = join(three_rounds())
    assert rounds.decision_ids == ("d1", "d2", "d3")
    assert rounds.n_actions == 3  # no ad + the most feasible ads of any round (2)
    assert rounds.action.tolist() == [2, 0, 1]
    assert rounds.slot.tolist() == [2, 5, 9]
    assert rounds.pscore.tolist() == [0.1, 1.0, 0.7]
    assert rewards(rounds, 0.5).tolist() == [3.5, 2.0, 0.5]
    assert rounds.feasible.tolist() == [[True, True, True], [True, False, False],
                                        [True, True, False]]
    assert rounds.logging_dist.tolist() == [[0.8, 0.1, 0.1], [1.0, 0.0, 0.0], [0.3, 0.7, 0.0]]
    assert rounds.context[:, 0].tolist() == [3.0, 0.5, 4.0]
    no_ad = rounds.contexts[0, 0]
    assert no_ad[list(AD_COLUMNS)].tolist() == [0.0] * len(AD_COLUMNS)
    assert no_ad[0] == 3.0 and rounds.contexts[0, 1, 0] == 2.0
    assert rounds.contexts[1, 1:].tolist() == [[0.0] * DIM] * 2  # padding
    assert counts.slot_decisions == 6 and counts.used == 3
    assert counts.skipped == {"no_distribution": 1, "no_outcome": 1, "propensity_mismatch": 1,
                              "other_context": 0, "bad_distribution": 0,
                              "incomplete_outcome": 0}
    assert counts.outcomes_without_decision == 1 and counts.duplicates == 1


def test_a_log_with_nothing_usable_says_why() -> None:
    logs = AdLogs()
    logs.add(feature_log("r1", [AdSlotLog(decision_id="d4", slot=12, context=row(1.0))]))
    with pytest.raises(NoRounds, match=r"0 of 1 slot decisions used .*1 no distribution"):
        join(logs)


def learnt_params(seed: int = 0) -> BanditParams:
    """A policy that has learnt that ads earn with their expected revenue and cost a little."""
    rng = np.random.default_rng(seed)
    params = BanditParams.prior(epsilon=0.3)
    for _ in range(3):
        contexts, placed, revenues, engagements = [], [], [], []
        for _ in range(50):
            for d in decide(params, make_request(rng), rng):
                contexts.append(d.context)
                placed.append(d.ad_id is not None)
                revenues.append(30.0 * d.context[REVENUE] if d.ad_id else 0.0)
                engagements.append(d.context[BELOW] * (0.5 if d.ad_id else 0.8))
        params = learn(params, Feedback(np.array(contexts), np.array(placed),
                                        np.array(revenues), np.array(engagements)))
    return params


def synthetic_records(params: BanditParams, requests: int = 200, seed: int = 1
                      ) -> list[FeatureLog | Outcome]:
    """What the serving path and the outcomes role would write, with made-up labels."""
    rng = np.random.default_rng(seed)
    records: list[FeatureLog | Outcome] = []
    for r in range(requests):
        slots = []
        for d in decide(params, make_request(rng), rng):
            decision_id = f"r{r:04d}-{d.slot}"
            slots.append(AdSlotLog(
                decision_id=decision_id, slot=d.slot, context=d.context.tolist(),
                actions=list(d.actions), probabilities=d.probabilities.tolist(),
                ad_contexts=d.ad_contexts.tolist()))
            revenue = float(rng.exponential(20.0 * d.context[REVENUE])) if d.ad_id else 0.0
            engaged = int(rng.poisson(d.context[BELOW] * (0.5 if d.ad_id else 0.8)))
            records.append(outcome(decision_id, d.slot, d.ad_id, d.propensity, revenue, engaged,
                                   params.version))
        records.append(feature_log(f"r{r}", slots))
    return records


@pytest.fixture(scope="module")
def logged() -> tuple[BanditParams, list[FeatureLog | Outcome]]:
    params = learnt_params()
    return params, synthetic_records(params)


def joined(records: list[FeatureLog | Outcome]) -> AdLogs:
    logs = AdLogs()
    for record in records:
        logs.add(record)
    return logs


def test_a_target_distribution_sums_to_one_and_pads_with_zero(logged) -> None:
    params, records = logged
    rounds, _ = join(joined(records))
    dist = policy_dist(rounds, params.retuned(dial=3.0, epsilon=0.1))
    assert dist.shape == (rounds.n, rounds.n_actions, 1)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    assert (dist[~rounds.feasible] == 0.0).all()
    assert (dist[rounds.feasible] >= 0.1 / rounds.n_actions).all()  # the floor, spread wider
    # the logging setting gives back exactly the logged distributions
    np.testing.assert_allclose(policy_dist(rounds, params)[..., 0], rounds.logging_dist)


def test_the_reward_model_is_the_posterior_means_on_the_rewards_scale(logged) -> None:
    params, records = logged
    rounds, _ = join(joined(records))
    q = reward_model(rounds, params, 2.0)[..., 0]
    i = int(np.argmax(rounds.feasible.sum(axis=1)))
    ad_row = rounds.contexts[i, 1]
    at_dial_2 = params.retuned(dial=2.0)
    no_ad = ad_row.copy()
    no_ad[list(AD_COLUMNS)] = 0.0
    # An ad's value less that of no ad is its net reward at that dial; no ad is worth the
    # organic engagement from the slot down.
    assert q[i, 1] - q[i, 0] == pytest.approx(float(net_scores(at_dial_2, ad_row[None])[0]))
    assert q[i, 0] == pytest.approx(2.0 * float(no_ad @ (at_dial_2.organic.mean * (
        np.arange(DIM) != np.array(AD_COLUMNS)[:, None]).all(axis=0))))
    assert (q[~rounds.feasible] == 0.0).all()


def test_evaluating_the_logging_setting_recovers_its_on_policy_mean(logged) -> None:
    params, records = logged
    rounds, counts = join(joined(records))
    report = evaluate_setting(rounds, counts, params, params.dial, params.epsilon)
    mean = float(np.mean(rewards(rounds, params.dial)))
    assert report["logging"]["mean_reward"]["value"] == pytest.approx(mean)
    for name in ("ips", "snips"):  # every weight is 1
        estimate = report["estimates"][name]
        assert estimate["value"] == pytest.approx(mean)
        assert estimate["ess"] == pytest.approx(rounds.n)
        assert estimate["lift"] == pytest.approx(0.0, abs=1e-12)
    dr = report["estimates"]["dr"]  # the model's residuals average out only in expectation
    assert dr["ci_low"] <= mean <= dr["ci_high"]
    assert report["logging"]["policy_versions"] == {params.version: rounds.n}


def test_a_greedier_setting_is_estimated_with_fewer_effective_rows(logged) -> None:
    params, records = logged
    rounds, counts = join(joined(records))
    report = evaluate_setting(rounds, counts, params, params.dial, 0.0, max_weight=20.0)
    ips = report["estimates"]["ips"]
    assert 0 < ips["ess"] < rounds.n
    assert ips["ci_low"] <= ips["value"] <= ips["ci_high"]
    assert report["target"]["epsilon"] == 0.0 and report["max_weight"] == 20.0


def test_the_obp_export_loads_back(logged, tmp_path: Path) -> None:
    records = logged[1]
    rounds, counts = join(joined(records))
    meta = export_obp(rounds, counts, 2.0, tmp_path, "--dial")
    with np.load(tmp_path / FEEDBACK_FILE) as data:
        feedback = {key: data[key] for key in data.files}
    log = BanditFeedback(reward=feedback["reward"], action=feedback["action"],
                         pscore=feedback["pscore"], n_actions=int(feedback["n_actions"]),
                         position=feedback["position"])
    assert log.n == int(feedback["n_rounds"]) == rounds.n
    log.check_action_dist(feedback["action_dist"])
    np.testing.assert_array_equal(feedback["reward"], rewards(rounds, 2.0))
    np.testing.assert_array_equal(feedback["slot"], rounds.slot)
    assert feedback["context"].shape == (rounds.n, DIM)
    assert feedback["decision_id"].tolist() == list(rounds.decision_ids)
    assert orjson.loads((tmp_path / META_FILE).read_bytes()) == meta
    assert meta["context_names"] == list(CONTEXT_NAMES) and meta["dial"] == 2.0


def test_the_obp_export_is_what_obp_reads(logged, tmp_path: Path) -> None:
    ope = pytest.importorskip("obp.ope")
    records = logged[1]
    rounds, counts = join(joined(records))
    export_obp(rounds, counts, 1.0, tmp_path, "--dial")
    with np.load(tmp_path / FEEDBACK_FILE) as data:
        feedback = {key: data[key] for key in data.files}
    evaluation = ope.OffPolicyEvaluation(bandit_feedback=feedback,
                                         ope_estimators=[ope.InverseProbabilityWeighting()])
    value = evaluation.estimate_policy_values(action_dist=feedback["action_dist"])["ipw"]
    assert value == pytest.approx(float(feedback["reward"].mean()))


def write_log(path: Path, records: list[FeatureLog | Outcome], bad_line: int) -> None:
    lines = [encode(record) for record in records]
    lines.insert(bad_line - 1, b'{"seq": "not a number"')
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_the_cli_evaluates_and_exports_a_log_file(logged, tmp_path: Path) -> None:
    params, records = logged
    log_file, params_file = tmp_path / "logs.jsonl", tmp_path / "bandit.json"
    write_log(log_file, records, bad_line=5)
    params_file.write_bytes(params.to_bytes())
    runner = CliRunner()
    result = runner.invoke(app, ["ads", "evaluate", "--logs", str(log_file), "--params",
                                 str(params_file), "--dial", "1", "--epsilon", "0.1",
                                 "--json", str(tmp_path / "out.json")])
    assert result.exit_code == 0, result.output
    assert "malformed: line 5: not_json" in result.stdout
    for name in ("ips", "snips", "dm", "dr"):
        assert f"\n{name} " in result.stdout
    report = orjson.loads((tmp_path / "out.json").read_bytes())
    assert report["counts"]["malformed_records"] == 1
    assert report["counts"]["used"] == sum(isinstance(r, Outcome) for r in records)
    assert report["target"]["parent"] == params.version

    result = runner.invoke(app, ["ads", "export", "--format", "obp", str(tmp_path / "obp"),
                                 "--logs", str(log_file), "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    shown = orjson.loads(result.stdout)
    assert shown["dial"] == params.dial and shown["dial_source"].endswith(f"({params.version})")
    assert (tmp_path / "obp" / FEEDBACK_FILE).is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["evaluate", "--dial", "1", "--epsilon", "0.1"], "give one source"),
    (["evaluate", "--logs", "LOGS", "--dial", "1", "--epsilon", "0.1"],
     "no bandit parameters: --logs needs --params FILE"),
    (["evaluate", "--logs", "nowhere.jsonl", "--params", "PARAMS", "--dial", "1",
      "--epsilon", "0.1"], "no log file at nowhere.jsonl"),
    (["evaluate", "--logs", "LOGS", "--params", "nowhere.json", "--dial", "1",
      "--epsilon", "0.1"], "no bandit parameter file at nowhere.json"),
    (["evaluate", "--logs", "LOGS", "--params", "PARAMS", "--dial", "-1", "--epsilon", "0.1"],
     "--dial must be a finite number >= 0"),
    (["evaluate", "--logs", "LOGS", "--params", "PARAMS", "--dial", "1", "--epsilon", "nan"],
     "--epsilon must be in [0, 1]"),
    (["evaluate", "--logs", "EMPTY", "--params", "PARAMS", "--dial", "1", "--epsilon", "0.1"],
     "no usable rounds: 0 of 0 slot decisions used"),
    (["export", "OUT", "--format", "csv", "--logs", "LOGS"], "--format must be 'obp'"),
])
def test_the_cli_refuses_with_one_clear_line(logged, tmp_path: Path, args: list[str],
                                             message: str) -> None:
    params, records = logged
    paths = {"LOGS": tmp_path / "logs.jsonl", "PARAMS": tmp_path / "bandit.json",
             "EMPTY": tmp_path / "empty.jsonl", "OUT": tmp_path / "out"}
    write_log(paths["LOGS"], records[:20], bad_line=1)
    paths["PARAMS"].write_bytes(params.to_bytes())
    paths["EMPTY"].write_bytes(b"")
    result = CliRunner().invoke(app, ["ads", *(str(paths.get(a, a)) for a in args)])
    assert result.exit_code == 2
    assert f"error: {message}" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
