"""The ``streamrank`` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError

from schemas.export import export_schemas
from stream.errors import StreamrankError
from stream.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="streamrank: a streaming real-time ranker.")
schemas_app = typer.Typer(no_args_is_help=True, help="Wire contracts.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each writes JSON with a ratio.")
app.add_typer(schemas_app, name="schemas")
app.add_typer(bench_app, name="bench")

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
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
        except (StreamrankError, OSError) as exc:
            _fail(str(exc))
    return wrapper  # type: ignore[return-value]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _settings() -> Settings:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("kafka", "aiokafka"):  # connection-level chatter drowns our own lines
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))
    return settings


def _report(report: dict[str, Any], json_out: Path | None) -> None:
    text = orjson.dumps(report, option=orjson.OPT_INDENT_2)
    if json_out is not None:
        json_out.write_bytes(text)
    typer.echo(text.decode())


@app.command()
@_clear_errors
def worker() -> None:
    """Run a worker: feature consumer and web views (/health, /stats, /metrics)."""
    import faust

    from stream.app import create_app
    from stream.runtime import broker, check_store, describe

    settings = _settings()
    check_store(settings)
    with broker(settings) as bootstrap:
        log.info(describe(bootstrap, settings))
        faust_app = create_app(settings, bootstrap)
        faust.Worker(faust_app, loglevel=settings.log_level).execute_from_commandline()


@app.command()
@_clear_errors
def simulate(
    rate: Annotated[float, typer.Option(min=0.1, help="Ranking requests per second.")] = 100.0,
    seconds: Annotated[float, typer.Option(min=0, help="How long to play; 0 = forever.")] = 0.0,
    seed: Annotated[int, typer.Option(help="World and user-behaviour seed.")] = 7,
    log_file: Annotated[Path | None, typer.Option(
        "--log", help="Append requests, served feeds and engagements as JSON lines.")] = None,
) -> None:
    """Play the synthetic world's users against the running system."""
    from models.world import World, WorldConfig
    from stream.runtime import broker, describe
    from stream.simulator import Simulator

    settings = _settings()
    with broker(settings) as bootstrap:
        log.info(describe(bootstrap, settings))
        world = World(WorldConfig(seed=seed, dim=settings.embedding_dim))
        simulator = Simulator(settings, bootstrap, world, seed=seed, log_path=log_file)
        try:
            report = asyncio.run(simulator.run(rate, seconds))
        except KeyboardInterrupt:
            report = simulator.report
    typer.echo(orjson.dumps(report.__dict__).decode())


@app.command()
@_clear_errors
def demo(
    seconds: Annotated[float, typer.Option(min=1, help="Simulated traffic duration.")] = 30.0,
    rate: Annotated[float, typer.Option(min=0.1, help="Ranking requests per second.")] = 1000.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """Run broker, worker and simulator end to end and report what happened."""
    from stream.demo import run_demo

    _report(run_demo(_settings(), seconds=seconds, rate=rate), json_out)


@schemas_app.command("export")
@_clear_errors
def schemas_export(directory: Path) -> None:
    """Write one JSON Schema file per wire record into DIRECTORY."""
    for path in export_schemas(directory):
        typer.echo(str(path))


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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
