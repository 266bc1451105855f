"""The ``streamrank`` command line."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError

from models.scenarios import SCENARIOS
from models.scorer import ModelError
from schemas.export import export_schemas
from stream.drift.client import SubscriptionsApi
from stream.errors import StreamrankError
from stream.redaction import mask, mask_secrets
from stream.settings import Settings

if TYPE_CHECKING:
    from models.bandit import BanditParams
    from stream.ads.offline import AdLogs, JoinCounts, SlotRounds

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="streamrank: a streaming real-time ranker.")
schemas_app = typer.Typer(no_args_is_help=True, help="Wire contracts.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each writes JSON with a ratio.")
app.add_typer(schemas_app, name="schemas")
model_app = typer.Typer(no_args_is_help=True, help="Trained models.")
app.add_typer(bench_app, name="bench")
app.add_typer(model_app, name="model")
alerts_app = typer.Typer(no_args_is_help=True,
                         help="Drift-alert subscriptions, through a worker's HTTP API.")
app.add_typer(alerts_app, name="alerts")
drift_app = typer.Typer(no_args_is_help=True, help="Drift monitors.")
app.add_typer(drift_app, name="drift")
bn_app = typer.Typer(no_args_is_help=True,
                     help="Online BatchNorm statistics: status, freeze, rollback, reset.")
app.add_typer(bn_app, name="bn")
ads_app = typer.Typer(no_args_is_help=True,
                      help="Ad slots: the policy's status and knobs, off-policy evaluation.")
app.add_typer(ads_app, name="ads")

log = logging.getLogger("streamrank")
F = TypeVar("F", bound=Callable[..., Any])


def _clear_errors(command: F) -> F:
    """Turn expected operational failures into one readable line and exit code 2."""
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValidationError as exc:
            _fail("invalid STREAMRANK_* setting: " + "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
                for e in exc.errors()))
        except (StreamrankError, ModelError, OSError) as exc:
            _fail(str(exc))
    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> None:
    typer.secho(f"error: {mask(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, where a command-line option overrides its variable."""
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    mask_secrets(settings.secrets())  # before anything can log or fail
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("kafka", "aiokafka"):  # connection-level chatter drowns our own lines
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))
    return settings


def _json(report: dict[str, Any]) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def _report(report: dict[str, Any], json_out: Path | None) -> None:
    text = _json(report)
    if json_out is not None:
        json_out.write_bytes(text)
    typer.echo(text.decode())


@app.command()
@_clear_errors
def worker(
    roles: Annotated[str | None, typer.Option(
        help="Roles to run, comma-separated (features, scoring, outcomes); default "
             "STREAMRANK_ROLES, all of them.")] = None,
    processes: Annotated[int | None, typer.Option(
        min=1, max=64, help="Scoring processes sharing the web port and the scoring group; "
        "default STREAMRANK_PROCESSES (1). See docs/scoring.md.")] = None,
) -> None:
    """Run a worker: its roles' consumers and the web views (/health, /stats, /metrics)."""
    import faust

    from stream.app import create_app
    from stream.runtime.access import check_exposure
    from stream.runtime.environment import broker, check_store, describe
    from stream.runtime.gc_policy import tune_for_batches

    settings = _settings(roles=roles, processes=processes)
    tune_for_batches()
    check_exposure(settings)
    check_store(settings)
    with broker(settings) as bootstrap:
        log.info(describe(bootstrap, settings))
        if settings.processes > 1:
            from stream.runtime.process_group import run_processes

            raise typer.Exit(run_processes(settings, bootstrap))
        faust_app = create_app(settings, bootstrap)
        faust.Worker(faust_app, loglevel=settings.log_level).execute_from_commandline()


@app.command()
@_clear_errors
def simulate(
    rate: Annotated[float, typer.Option(min=0.1, help="Ranking requests per second.")] = 100.0,
    seconds: Annotated[float, typer.Option(min=0, help="How long to play; 0 = forever.")] = 0.0,
    policy: Annotated[str, typer.Option(
        help="random: show random feeds; served: show the worker's rankings.")] = "random",
    seed: Annotated[int, typer.Option(help="World and user-behaviour seed.")] = 7,
    log_file: Annotated[Path | None, typer.Option(
        "--log", help="Append items, requests, served feeds and engagements as JSON lines.")
    ] = None,
) -> None:
    """Play the synthetic world's users against the running system."""
    from models.world import World, WorldConfig
    from stream.runtime.environment import broker, describe
    from stream.simulator import Simulator

    if policy not in ("random", "served"):
        _fail(f"--policy must be 'random' or 'served', not {policy!r}")
    settings = _settings()

    async def play(bootstrap: str) -> dict[str, Any]:
        world = World(WorldConfig(seed=seed, dim=settings.embedding_dim))
        async with Simulator(settings, bootstrap, world, seed=seed, log_path=log_file) as sim:
            await sim.publish_catalogue()
            try:
                report = await sim.run(rate, seconds, policy)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                report = sim.report
        summary = {k: v for k, v in report.__dict__.items()
                   if k not in ("expected_clicks", "round_trip_ms", "ndcg10_sum",
                                "warmup_requests", "warmup_wall_s", "change_request")}
        return summary | (report.quality() if policy == "served" else {})

    with broker(settings) as bootstrap:
        log.info(describe(bootstrap, settings))
        _report(asyncio.run(play(bootstrap)), None)


@app.command()
@_clear_errors
def demo(
    seconds: Annotated[float, typer.Option(
        min=10, help="Seconds of served traffic, in real time, after the warm-up.")] = 30.0,
    rate: Annotated[float, typer.Option(min=0.1, help="Ranking requests per second.")] = 150.0,
    warmup: Annotated[float, typer.Option(
        min=1, help="Seconds of random-feed traffic at --rate before the first model, "
        "simulated as fast as it can be made, not in real time; the model learns from its "
        "second half.")] = 240.0,
    retrain_every: Annotated[float, typer.Option(
        min=0, help="Retrain on all logs so far every this many seconds; 0: train once.")
    ] = 10.0,
    workdir: Annotated[Path, typer.Option(help="Logs and trained models go here.")] = Path(
        "artifacts/demo"),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    scenario: Annotated[str | None, typer.Option(
        help=f"Change the world during the served phase: {', '.join(SCENARIOS)}, or a "
        "scenario class of your own as package.module:Class (docs/scenarios.md).")] = None,
    change_after: Annotated[float | None, typer.Option(
        min=0, help="Seconds into the served phase (retrain pauses not counted) at which "
        "--scenario's change happens; default: half of --seconds.")] = None,
    retrieval: Annotated[bool, typer.Option(
        "--retrieval", help="Served requests carry no candidates: the worker retrieves them "
        "(docs/interests.md).")] = False,
    retrieval_source: Annotated[str | None, typer.Option(
        help="With --retrieval: interests (the user's interests, trending for a user with "
        "none) or trending (for everyone); default STREAMRANK_RETRIEVAL_SOURCE, interests.")
    ] = None,
    compare: Annotated[bool, typer.Option(
        "--compare", help="With --retrieval: run once per source, on the same seeds, and "
        "compare their served CTRs (each run in WORKDIR/<source>).")] = False,
) -> None:
    """Broker, worker and simulator end to end: warm up, train, publish, serve, measure.
    Prints a summary; --json writes the full report."""
    from typing import get_args

    from models.scenarios import load_scenario
    from stream.demo import ScenarioPlan, compare_retrieval, comparison_summary, run_demo, summary
    from stream.settings import RetrievalSource

    # A run takes minutes: a report that cannot be written fails now, not after it.
    if json_out is not None and (json_out.is_dir() or not json_out.parent.is_dir()):
        _fail(f"--json {json_out}: not a file in an existing directory")
    sources = get_args(RetrievalSource)
    if retrieval_source is not None and retrieval_source not in sources:
        _fail(f"--retrieval-source must be {' or '.join(map(repr, sources))}, "
              f"not {retrieval_source!r}")
    if (retrieval_source is not None or compare) and not retrieval:
        _fail(f"--{'compare' if compare else 'retrieval-source'} is about --retrieval; "
              "give --retrieval too")
    if compare and retrieval_source is not None:
        _fail("--compare runs every --retrieval-source; give one or the other")
    plan = None
    if scenario is None and change_after is not None:
        _fail("--change-after places a --scenario's change; give --scenario too")
    if scenario is not None:
        after = seconds / 2 if change_after is None else change_after
        if after >= seconds:
            _fail(f"--change-after {after:g} must fall within the --seconds {seconds:g} served")
        try:
            plan = ScenarioPlan.place(load_scenario(scenario), warmup, rate, after)
        except ValueError as exc:
            _fail(str(exc))
    settings = _settings(retrieval_source=retrieval_source)
    demo_args: dict[str, Any] = {"seconds": seconds, "rate": rate, "warmup_s": warmup,
                                 "retrain_every_s": retrain_every, "scenario": plan}
    if compare:
        report = compare_retrieval(settings, workdir, **demo_args)
    else:
        report = run_demo(settings, workdir=workdir, retrieval=retrieval, **demo_args)
    if json_out is not None:
        json_out.write_bytes(_json(report))
    typer.echo((comparison_summary if compare else summary)(report, json_out))


@app.command("train")
@_clear_errors
def train_command(
    out: Annotated[Path, typer.Option(help="Directory for model.onnx and manifest.json.")],
    logs: Annotated[Path | None, typer.Option(
        help="Simulator log (streamrank simulate --log), an offline file.")] = None,
    topics: Annotated[bool, typer.Option(
        "--topics", help="Train on the outcomes topic: the served feature rows of the logged "
        "requests (STREAMRANK_FEATURE_LOG_RATE) and what the users did.")] = False,
    version: Annotated[str | None, typer.Option(help="Model version; default from the clock.")
                       ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 8,
) -> None:
    """Train the multi-task ranker on outcomes (--topics) or a simulator log (--logs); export to
    ONNX (signed with STREAMRANK_MODEL_SIGNING_KEY when it is set)."""
    import time

    from models.training import train

    if (logs is None) == (not topics):
        _fail("give one source: --topics (the outcomes topic) or --logs FILE")
    settings = _settings()
    if logs is not None:
        from stream.training_data import build_dataset

        if not logs.is_file():
            _fail(f"no log file at {logs}")
        dataset = asyncio.run(build_dataset(logs, settings))
    else:
        from stream.outcomes.dataset import outcomes_dataset
        from stream.runtime.environment import broker

        with broker(settings) as bootstrap:
            dataset = asyncio.run(outcomes_dataset(settings, bootstrap))
    report = train(dataset, out, version or f"m-{int(time.time())}", epochs=epochs,
                   signing_key=settings.signing_key)
    _report({"manifest": str(report.manifest_path), "train_rows": report.n_train,
             "holdout_rows": report.n_holdout, "holdout": report.metrics}, None)


@model_app.command("publish")
@_clear_errors
def model_publish(
    manifest: Annotated[Path, typer.Argument(help="manifest.json of a trained model.")],
) -> None:
    """Announce a trained model on model-updates; every worker hot-swaps to it.

    With STREAMRANK_MODEL_SIGNING_KEY set, an unsigned manifest is signed in place first.
    """
    from stream.runtime.environment import broker
    from stream.runtime.versioned_state import publish_update
    from stream.scoring.model_kind import model_update

    settings = _settings()
    # A missing, broken or refused model fails before the broker is touched.
    update = model_update(settings, manifest)
    with broker(settings) as bootstrap:
        asyncio.run(publish_update(settings, bootstrap, update))
    _report(update.model_dump(mode="json"), None)


def _bn(operation: str, target: str | None = None) -> None:
    """Read the versions on model-updates, then show them or publish the operation's."""
    from stream.bn import control
    from stream.runtime.environment import broker

    settings = _settings()

    async def run(bootstrap: str) -> dict[str, Any]:
        versions = await control.read_versions(settings, bootstrap)
        if operation == "status":
            return control.status(versions)
        stats = {"freeze": lambda: control.freeze(versions, True),
                 "unfreeze": lambda: control.freeze(versions, False),
                 "rollback": lambda: control.rollback(versions, settings, target or ""),
                 "reset": lambda: control.reset(versions)}[operation]()
        await control.publish(versions, settings, bootstrap, stats)
        versions.install(stats)
        return control.status(versions)

    with broker(settings) as bootstrap:
        _report(asyncio.run(run(bootstrap)), None)


def _ads(dial: float | None = None, epsilon: float | None = None) -> None:
    """Read the bandit versions on model-updates, then show them or publish retuned knobs."""
    from stream.ads import control
    from stream.runtime.environment import broker

    settings = _settings()

    async def run(bootstrap: str) -> dict[str, Any]:
        slot = await control.read_params(settings, bootstrap)
        if dial is not None or epsilon is not None:
            try:
                params = control.retuned(slot, dial, epsilon)
            except ValueError as exc:
                raise StreamrankError(str(exc)) from exc
            await control.publish(settings, bootstrap, params)
            slot.install(params)
        return control.status(slot)

    with broker(settings) as bootstrap:
        _report(asyncio.run(run(bootstrap)), None)


@ads_app.command("status")
@_clear_errors
def ads_status() -> None:
    """The policy version served, its dial, epsilon and alpha, and how much it has learnt."""
    _ads()


@ads_app.command("set")
@_clear_errors
def ads_set(
    dial: Annotated[float | None, typer.Option(
        min=0.0, help="Revenue given up per unit of organic engagement an ad costs.")] = None,
    epsilon: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Exploration floor, shared out over each slot's actions.")
    ] = None,
) -> None:
    """Publish the served parameters under a new dial and/or epsilon, as the next version:
    every scorer swaps it in, and every decision after it names it."""
    if dial is None and epsilon is None:
        _fail("give --dial, --epsilon or both")
    _ads(dial, epsilon)


@bn_app.command("status")
@_clear_errors
def bn_status() -> None:
    """The statistics version served, its parent, whether adaptation is frozen, the history."""
    _bn("status")


@bn_app.command("freeze")
@_clear_errors
def bn_freeze() -> None:
    """Stop adapting: the role keeps the statistics served until unfreeze."""
    _bn("freeze")


@bn_app.command("unfreeze")
@_clear_errors
def bn_unfreeze() -> None:
    """Adapt again from the statistics served."""
    _bn("unfreeze")


@bn_app.command("rollback")
@_clear_errors
def bn_rollback(version: Annotated[str, typer.Argument(help="e.g. bn-3, or trained.")]) -> None:
    """Serve an earlier version's statistics again, as a new version."""
    _bn("rollback", version)


@bn_app.command("reset")
@_clear_errors
def bn_reset() -> None:
    """Serve the trained statistics again, as a new version."""
    _bn("reset")


LogsOption = Annotated[Path | None, typer.Option(
    "--logs", help="JSON lines, each a FeatureLog or an Outcome as on the topics.")]
FromTopicsOption = Annotated[bool, typer.Option(
    "--from-topics", help="Read the feature-log and outcomes topics from start to end.")]
ParamsOption = Annotated[Path | None, typer.Option(
    "--params", help="A bandit parameter file; default: the newest bandit version on "
    "model-updates.")]


def _ad_rounds(from_topics: bool, logs: Path | None, params: Path | None, need_params: bool
               ) -> tuple[SlotRounds, JoinCounts, BanditParams | None]:
    """The joined rounds, their counts, and the bandit parameters (None only when not needed
    and there are none), from one source: --logs or --from-topics."""
    from stream.ads.logs import NoBanditVersion, newest_params, params_file, read_file, read_topics
    from stream.ads.offline import join

    if (logs is None) == (not from_topics):
        _fail("give one source: --from-topics or --logs FILE")
    settings = _settings()
    bandit = params_file(params) if params is not None else None

    async def from_broker(bootstrap: str) -> tuple[AdLogs, BanditParams | None]:
        ad_logs = await read_topics(settings, bootstrap)
        if bandit is not None:
            return ad_logs, bandit
        try:
            return ad_logs, await newest_params(settings, bootstrap)
        except NoBanditVersion:
            if need_params:
                raise
            return ad_logs, None

    if logs is not None:
        if bandit is None and need_params:
            _fail("no bandit parameters: --logs needs --params FILE")
        ad_logs = read_file(logs, settings.limits)
    else:
        from stream.runtime.environment import broker

        with broker(settings) as bootstrap:
            ad_logs, bandit = asyncio.run(from_broker(bootstrap))
    rounds, counts = join(ad_logs)
    return rounds, counts, bandit


@ads_app.command("evaluate")
@_clear_errors
def ads_evaluate(
    dial: Annotated[float, typer.Option(help="The target's dial, also the reward's.")],
    epsilon: Annotated[float, typer.Option(help="The target's exploration floor, in [0, 1].")],
    from_topics: FromTopicsOption = False,
    logs: LogsOption = None,
    params: ParamsOption = None,
    max_weight: Annotated[float | None, typer.Option(
        help="Clip importance weights at this (IPS, SNIPS, DR).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """Estimate the per-slot value of the bandit parameters retuned to --dial and --epsilon on
    the logged decisions (IPS, SNIPS, DM, DR), against the logging policy's on-policy mean."""
    from stream.ads.offline import check_knobs, evaluate_setting, summary

    try:
        check_knobs(dial, epsilon)
        if max_weight is not None and not max_weight > 0.0:
            raise ValueError(f"--max-weight must be > 0, got {max_weight}")
    except ValueError as exc:
        _fail(str(exc))
    rounds, counts, bandit = _ad_rounds(from_topics, logs, params, need_params=True)
    assert bandit is not None  # need_params
    report = evaluate_setting(rounds, counts, bandit, dial, epsilon, max_weight)
    report["source"] = {"logs": str(logs) if logs else "topics",
                        "params": str(params) if params else "model-updates"}
    if json_out is not None:
        json_out.write_bytes(_json(report))
    typer.echo(summary(report))


@ads_app.command("export")
@_clear_errors
def ads_export(
    directory: Annotated[Path, typer.Argument(help="Where bandit_feedback.npz and meta.json "
                                                   "go.")],
    format_: Annotated[str, typer.Option("--format", help="obp (the only one).")] = "obp",
    from_topics: FromTopicsOption = False,
    logs: LogsOption = None,
    params: ParamsOption = None,
    dial: Annotated[float | None, typer.Option(
        help="The reward's dial; default the parameters' (--params or the newest version), "
             "else 1.0.")] = None,
) -> None:
    """Write the joined logged decisions in Open Bandit Pipeline's bandit-feedback layout."""
    from stream.ads.export import export_obp
    from stream.ads.offline import check_knobs

    if format_ != "obp":
        _fail(f"--format must be 'obp', not {format_!r}")
    if dial is not None:
        try:
            check_knobs(dial, 0.0)
        except ValueError as exc:
            _fail(str(exc))
    rounds, counts, bandit = _ad_rounds(from_topics, logs, params,
                                        need_params=params is not None)
    if dial is not None:
        source = "--dial"
    elif bandit is not None:
        dial, source = bandit.dial, f"the parameters' ({bandit.version})"
    else:
        dial, source = 1.0, "default (no parameters found)"
    meta = export_obp(rounds, counts, dial, directory, source)
    _report({"directory": str(directory), **{k: meta[k] for k in
             ("n_rounds", "n_actions", "dial", "dial_source")},
             "counts": meta["counts"]["skipped"] | {"used": meta["counts"]["used"]}}, None)


@schemas_app.command("export")
@_clear_errors
def schemas_export(directory: Path) -> None:
    """Write one JSON Schema file per wire record into DIRECTORY."""
    for path in export_schemas(directory):
        typer.echo(str(path))


@drift_app.command("replay")
@_clear_errors
def drift_replay(
    series: Annotated[Path, typer.Argument(
        help="JSON lines or CSV (by suffix) of ts, signal, value, in time order.")],
    detector: Annotated[str, typer.Option(help="adwin, page_hinkley or kswin.")] = "adwin",
    param: Annotated[list[str] | None, typer.Option(
        help="A detector parameter, k=v (repeatable), e.g. --param delta=0.002.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
) -> None:
    """Run the drift role's monitors on a series from a file and report every detection."""
    from models.drift import DETECTOR_CLASSES, make_detector
    from stream.drift.replay import read_series, replay

    if detector not in DETECTOR_CLASSES:
        _fail(f"--detector must be one of {', '.join(DETECTOR_CLASSES)}, not {detector!r}")
    params: dict[str, float] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            _fail(f"--param {item!r}: expected name=number, e.g. delta=0.002")
    try:
        make_detector(detector, params)
    except (TypeError, ValueError) as exc:
        _fail(f"{detector} does not take these parameters: {exc}")
    _report(replay(read_series(series), detector, params), json_out)


@bench_app.command("features")
@_clear_errors
def bench_features(
    events: Annotated[int, typer.Option(min=1000, help="Events per measured pass.")] = 200_000,
    repeats: Annotated[int, typer.Option(min=1, help="Passes per path; medians reported.")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
) -> None:
    """Feature updates through the broker into Redis, against raw aiokafka consumption."""
    from bench.features import run_features_bench

    _report(run_features_bench(_settings(), n_events=events, repeats=repeats), json_out)


@bench_app.command("scoring")
@_clear_errors
def bench_scoring(
    candidates: Annotated[str, typer.Option(
        help="Candidates per request, comma-separated; each size is measured.")] = "100,500,1000",
    repeats: Annotated[int, typer.Option(
        min=1, help="Maximum-load passes per size; medians reported.")] = 3,
    processes: Annotated[int, typer.Option(
        min=1, max=64, help="Processes of the worker under test (STREAMRANK_PROCESSES).")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    png: Annotated[Path | None, typer.Option(
        help="p99 against offered load per path; default: --json's path as .png.")] = None,
) -> None:
    """A latency-throughput curve per candidates size (end to end through the broker, its echo
    floor, in-worker, HTTP), and the maximum against bare onnxruntime."""
    from bench.scoring import ScoringBenchConfig, parse_candidates, run_scoring_bench

    settings = _settings()
    try:
        sizes = parse_candidates(candidates, settings.max_candidates)
    except ValueError as exc:
        _fail(str(exc))
    if png is None and json_out is not None:
        png = json_out.with_suffix(".png")
    config = ScoringBenchConfig(candidates=sizes, repeats=repeats, processes=processes)
    _report(run_scoring_bench(settings, config, png), json_out)


@bench_app.command("drift")
@_clear_errors
def bench_drift(
    scenarios: Annotated[str, typer.Option(
        help="Comma-separated scenarios to play (models.scenarios).")
    ] = "label_rate,covariate,stale_calibration",
    seconds: Annotated[float, typer.Option(min=10, help="Served seconds per scenario.")] = 40.0,
    control_seconds: Annotated[float, typer.Option(
        min=10, help="Served seconds of the run with no change.")] = 60.0,
    rate: Annotated[float, typer.Option(min=1, help="Ranking requests per second.")] = 120.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
) -> None:
    """Scenarios with known change points through the whole system: delay, misses, alerts per
    change and false alarms, against River's ADWIN alone on the raw series."""
    from bench.drift import DriftBenchConfig, run_drift_bench
    from models.scenarios import load_scenario

    chosen = tuple(name.strip() for name in scenarios.split(",") if name.strip())
    for name in chosen:
        try:
            load_scenario(name)
        except ValueError as exc:
            _fail(str(exc))
    config = DriftBenchConfig(scenarios=chosen, seconds=seconds, change_after_s=seconds / 2,
                              control_seconds=control_seconds, rate=rate)
    _report(run_drift_bench(_settings(), config), json_out)


@bench_app.command("bn")
@_clear_errors
def bench_bn(
    scenarios: Annotated[str, typer.Option(
        help="Covariate shifts, comma-separated (names or package.module:Class); a control "
             "with no shift always runs.")] = "traffic_surge,surface_mix",
    post: Annotated[int, typer.Option(min=1000, help="Requests after each change.")] = 20_000,
    log_rate: Annotated[float, typer.Option(
        min=0.01, max=1.0, help="Share of requests in the feature log.")] = 1.0,
    seed: Annotated[int, typer.Option(help="The world's seed.")] = 7,
    scoring: Annotated[bool, typer.Option(
        help="Also run the scoring bench at 500 candidates with and without the BN role.")
    ] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    png: Annotated[Path | None, typer.Option(
        help="Log loss per arm after the change; default: --json's path as .png.")] = None,
) -> None:
    """Frozen, adaptive and retrained BatchNorm statistics after covariate shifts, against the
    world's true click probabilities; and what the BN role costs the scoring path."""
    from bench.bn import BnBenchConfig, run_bn_bench
    from models.scenarios import load_scenario

    chosen = tuple(name for name in scenarios.split(",") if name)
    for name in chosen:
        try:
            load_scenario(name)
        except ValueError as exc:
            _fail(str(exc))
    if png is None and json_out is not None:
        png = json_out.with_suffix(".png")
    config = BnBenchConfig(scenarios=chosen, post=post, log_rate=log_rate, seed=seed)
    _report(run_bn_bench(_settings(), config, png, scoring), json_out)


@bench_app.command("interests")
@_clear_errors
def bench_interests(
    users: Annotated[int, typer.Option(
        min=10, help="World users; those with 2+ true interests are replayed.")] = 1000,
    items: Annotated[int, typer.Option(
        min=1000, help="Catalogue recall is measured on (the bar needs 10k).")] = 10_000,
    index_items: Annotated[int, typer.Option(
        min=1000, help="Items in the index retrieval is timed on (the bar needs 100k).")
    ] = 100_000,
    seed: Annotated[int, typer.Option(help="The world's seed.")] = 7,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    png: Annotated[Path | None, typer.Option(
        help="Recall@K per source; default: --json's path as .png.")] = None,
    ctr_seconds: Annotated[float, typer.Option(
        min=0, help="Also serve two closed-loop demos this long, with and without the "
        "ranker's interest features (needs the broker and store, and minutes); 0: skip.")
    ] = 0.0,
    ctr_rate: Annotated[float, typer.Option(
        min=0.1, help="The demos' requests per second.")] = 150.0,
    ctr_warmup: Annotated[float, typer.Option(
        min=1, help="The demos' simulated warm-up, in seconds at --ctr-rate.")] = 240.0,
    ctr_retrain_every: Annotated[float, typer.Option(
        min=0, help="The demos retrain every this many seconds; 0: once.")] = 10.0,
) -> None:
    """PinnerSage medoids against the mean embedding and popularity as retrieval sources, with
    the online update, recluster and retrieval costs, and the index's recall; with
    --ctr-seconds, the served CTR with and without the interest features."""
    from bench.interests import InterestsBenchConfig, run_interests_bench
    from bench.interests.ctr import served_ctr
    from stream.runtime.environment import check_store

    if png is None and json_out is not None:
        png = json_out.with_suffix(".png")
    try:
        config = InterestsBenchConfig(users=users, items=items, index_items=index_items,
                                      seed=seed, png=png)
    except ValueError as exc:
        _fail(str(exc))
    settings = None
    if ctr_seconds > 0:  # the demos' settings and store fail now, not after the recall part
        settings = _settings()
        check_store(settings)
    report = run_interests_bench(config)
    report["ctr"] = (served_ctr(settings, ctr_seconds, ctr_rate, ctr_warmup, ctr_retrain_every)
                     if settings is not None
                     else {"skipped": "give --ctr-seconds to serve the two demos"})
    _report(report, json_out)


@bench_app.command("faults")
@_clear_errors
def bench_faults(
    sections: Annotated[str, typer.Option(
        help="Comma-separated sections to run.")] = "features,redis_outage,scoring,outcomes",
    events: Annotated[int, typer.Option(
        min=1000, help="Events per features and redis_outage section.")] = 100_000,
    kills: Annotated[int, typer.Option(min=1, help="kill -9 of the features worker.")] = 20,
    scoring_kills: Annotated[int, typer.Option(
        min=1, help="kill -9 of the scoring worker.")] = 10,
    outcome_kills: Annotated[int, typer.Option(
        min=1, help="kill -9 of the outcomes worker.")] = 10,
    outage_s: Annotated[float, typer.Option(min=1, help="Seconds Redis stays dead.")] = 30.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    png: Annotated[Path | None, typer.Option(
        help="The features section's recovery curve; default: --json's path as .png.")
    ] = None,
) -> None:
    """kill -9 of the worker and of Redis: nothing lost, nothing counted twice, every request
    answered, every outcome emitted once."""
    from bench.faults import parse_sections, run_faults_bench
    from bench.faults.config import FaultsConfig

    try:
        chosen = parse_sections(sections)
    except ValueError as exc:
        _fail(str(exc))
    if png is None and json_out is not None:
        png = json_out.with_suffix(".png")
    config = FaultsConfig(events=events, kills=kills, scoring_kills=scoring_kills,
                          outcome_kills=outcome_kills, outage_s=outage_s, png=png)
    _report(run_faults_bench(_settings(), chosen, config), json_out)


@bench_app.command("ads")
@_clear_errors
def bench_ads(
    requests: Annotated[int, typer.Option(min=1000, help="Requests per arm.")] = 50_000,
    seed: Annotated[int, typer.Option(help="The world's seed.")] = 7,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    png: Annotated[Path | None, typer.Option(
        help="The revenue / engagement frontier and the regret curve; default: --json's path "
             "as .png.")] = None,
) -> None:
    """The bandit ad policy against never, the best fixed ad load, random, epsilon-greedy and
    the oracle, in a closed loop with the world; its frontier, OPE and decision cost."""
    from bench.ads import AdsBenchConfig, run_ads_bench

    _report(run_ads_bench(AdsBenchConfig(
        requests=requests, seed=seed, fixed_requests=min(requests, 5_000),
        frontier_requests=min(requests, 10_000),
        ope_requests=20_000 if requests >= 10_000 else max(requests, 2_000),
        png=png or (json_out.with_suffix(".png") if json_out else None))), json_out)


UrlOption = Annotated[str | None, typer.Option(
    help="A worker's web address; default http://127.0.0.1:$STREAMRANK_WEB_PORT. The token "
         "comes from STREAMRANK_API_TOKEN.")]


def _subscriptions_api(url: str | None) -> SubscriptionsApi:
    settings = _settings()
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return SubscriptionsApi(url or f"http://127.0.0.1:{settings.web_port}", token)


@alerts_app.command("subscribe")
@_clear_errors
def alerts_subscribe(
    subscription_id: Annotated[str | None, typer.Option("--id", help="Subscription id; "
                                                        "an existing one is replaced.")] = None,
    owner: Annotated[str | None, typer.Option(help="Who to ask about it.")] = None,
    signal: Annotated[list[str] | None, typer.Option(
        "--signal", help="Signal glob, e.g. 'calibration.*'; repeatable; default every "
        "signal.")] = None,
    min_severity: Annotated[str | None, typer.Option(
        help="info, warning or critical; default warning.")] = None,
    detector: Annotated[list[str] | None, typer.Option(
        "--detector", help="adwin, page_hinkley or kswin; repeatable; default all.")] = None,
    kafka_topic: Annotated[str | None, typer.Option(help="Sink: this Kafka topic.")] = None,
    webhook: Annotated[str | None, typer.Option(help="Sink: POST to this http(s) URL.")] = None,
    secret: Annotated[str | None, typer.Option(
        help="The webhook's HMAC key, at least 16 characters (a --file keeps it out of the "
             "shell's history).")] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", help="A DriftSubscription JSON body, instead of the options above.")] = None,
    url: UrlOption = None,
) -> None:
    """Create or replace a subscription; prints it as stored (the secret masked)."""
    options = (subscription_id, owner, signal, min_severity, detector, kafka_topic, webhook,
               secret)
    if file is not None:
        if any(option is not None for option in options):
            _fail("give --file or the subscription's options, not both")
        body = file.read_bytes()
    else:
        if subscription_id is None or owner is None:
            _fail("give --id and --owner (or --file)")
        if (kafka_topic is None) == (webhook is None):
            _fail("give one sink: --kafka-topic TOPIC or --webhook URL --secret S")
        if (webhook is None) != (secret is None):
            _fail("--webhook needs --secret, and --secret goes with --webhook")
        sink = ({"kind": "kafka", "topic": kafka_topic} if kafka_topic is not None
                else {"kind": "webhook", "url": webhook, "secret": secret})
        fields = {"subscription_id": subscription_id, "owner": owner, "signals": signal,
                  "min_severity": min_severity, "detectors": detector, "sink": sink}
        body = orjson.dumps({k: v for k, v in fields.items() if v is not None})
    _report(_subscriptions_api(url).subscribe(body), None)


@alerts_app.command("list")
@_clear_errors
def alerts_list(url: UrlOption = None) -> None:
    """Every subscription (secrets masked)."""
    _report(_subscriptions_api(url).list(), None)


@alerts_app.command("unsubscribe")
@_clear_errors
def alerts_unsubscribe(
    subscription_id: Annotated[str, typer.Argument(help="The subscription's id.")],
    url: UrlOption = None,
) -> None:
    """Delete a subscription; prints what it was."""
    _report(_subscriptions_api(url).unsubscribe(subscription_id), None)


def _terminate(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)  # whatever handles Ctrl-C (asyncio.run does) handles it


def main() -> None:
    # SIGTERM (docker stop, timeout) unwinds like Ctrl-C, so embedded brokers and child workers
    # are stopped by their context managers. The Faust worker installs its own handler.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
