"""The CLI as a user meets it: clear one-line errors, never a traceback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from models.scenarios import SCENARIOS
from schemas.export import EXPORTED
from stream.settings import Settings


def streamrank(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")}
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("env", "message"), [
    ({"STREAMRANK_BROKER_URL": "127.0.0.1:1"}, "Kafka broker at 127.0.0.1:1 is not reachable"),
    ({"STREAMRANK_REDIS_URL": "redis://127.0.0.1:1/0"}, "Redis at redis://127.0.0.1:1/0 is not"),
    ({"STREAMRANK_PARTITIONS": "zero"}, "invalid STREAMRANK_* setting: partitions"),
])
def test_unreachable_or_invalid_configuration_is_a_clear_error(
        env: dict[str, str], message: str) -> None:
    result = streamrank("worker", **env)
    assert result.returncode == 2
    assert f"error: {message}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_schemas_export_writes_one_file_per_record(tmp_path: Path) -> None:
    result = streamrank("schemas", "export", str(tmp_path / "schemas"))
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "schemas").glob("*.json"))
    assert [f.name for f in files] == sorted(f"{r.__name__}.v1.json" for r in EXPORTED)
    assert orjson.loads(files[0].read_bytes())["$schema"].endswith("2020-12/schema")


def test_bad_option_value_is_reported_by_the_cli() -> None:
    result = streamrank("simulate", "--rate", "-3")
    assert result.returncode == 2
    assert "Invalid value" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("content", "message"), [
    (b"this is not json\n", "line 1: not a simulator log record"),
    (b'{"request": {"user_id": 5}}\n', "line 1: not a simulator log record"),
    (b"", "no logged requests"),
])
def test_train_on_a_bad_log_is_a_clear_error(tmp_path: Path, content: bytes,
                                             message: str) -> None:
    logs = tmp_path / "logs.jsonl"
    logs.write_bytes(content)
    result = streamrank("train", "--logs", str(logs), "--out", str(tmp_path / "model"))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_publishing_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    result = streamrank("model", "publish", str(tmp_path / "nope" / "manifest.json"),
                        STREAMRANK_BROKER_URL="127.0.0.1:1")
    assert result.returncode == 2
    assert "error: unreadable model manifest" in result.stderr
    assert "Traceback" not in result.stderr


SECRETS = {"STREAMRANK_API_TOKEN": "tok-0123456789abcdef",
           "STREAMRANK_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
           "STREAMRANK_KAFKA_SASL_USERNAME": "alice",
           "STREAMRANK_KAFKA_SASL_PASSWORD": "sasl-pw-42",
           "STREAMRANK_LOG_LEVEL": "debug"}


@pytest.mark.parametrize(("env", "message"), [
    ({"STREAMRANK_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"},
     "error: Redis at redis://:***@127.0.0.1:1/0 is not reachable"),
    ({"STREAMRANK_BROKER_URL": "127.0.0.1:1", "STREAMRANK_REDIS_URL": "redis://:hunter2@x/0"},
     "error: Redis at redis://:***@x/0 is not reachable"),
    ({"STREAMRANK_API_TOKEN": "hunter2"}, "invalid STREAMRANK_* setting: api_token"),
])
def test_failing_start_never_prints_a_secret(env: dict[str, str], message: str) -> None:
    result = streamrank("worker", **{**SECRETS, **env})
    assert result.returncode == 2
    assert message in result.stderr
    output = result.stdout + result.stderr
    for secret in ("hunter2", "tok-0123456789abcdef", "sasl-pw-42"):
        assert secret not in output


def test_web_port_beyond_loopback_needs_a_token() -> None:
    exposed = streamrank("worker", STREAMRANK_WEB_HOST="0.0.0.0",
                         STREAMRANK_BROKER_URL="127.0.0.1:1")
    assert exposed.returncode == 2
    assert exposed.stderr.strip().splitlines() == [
        "error: STREAMRANK_WEB_HOST=0.0.0.0 makes POST /rank reachable from other machines: "
        "set STREAMRANK_API_TOKEN, or bind to 127.0.0.1"]
    # With a token it goes on to the broker, which is the next thing to fail here.
    tokened = streamrank("worker", STREAMRANK_WEB_HOST="0.0.0.0",
                         STREAMRANK_BROKER_URL="127.0.0.1:1",
                         STREAMRANK_API_TOKEN="tok-0123456789abcdef")
    assert tokened.returncode == 2
    assert "error: Kafka broker at 127.0.0.1:1 is not reachable" in tokened.stderr


def test_publishing_a_model_the_workers_would_refuse_is_a_clear_error(tmp_path: Path) -> None:
    model = tmp_path / "elsewhere" / "m1"
    model.mkdir(parents=True)
    (model / "model.onnx").write_bytes(b"model")
    (model / "manifest.json").write_bytes(orjson.dumps({
        "version": "m1", "sha256": hashlib.sha256(b"model").hexdigest(), "feature_names": [],
        "task_names": [], "bn_layers": {}, "input_name": "x", "output_name": "y"}))
    result = streamrank("model", "publish", str(model / "manifest.json"),
                        STREAMRANK_BROKER_URL="127.0.0.1:1",  # refused before it is reached
                        STREAMRANK_MODEL_DIR=str(tmp_path / "models"),
                        STREAMRANK_MODEL_SIGNING_KEY="k" * 32)
    assert result.returncode == 2
    assert "outside STREAMRANK_MODEL_DIR" in result.stderr
    assert "k" * 32 not in result.stderr + result.stdout
    assert "signature" not in orjson.loads((model / "manifest.json").read_bytes())


@pytest.mark.parametrize("where", ["missing/out.json", "."])
def test_demo_refuses_a_report_path_it_could_not_write_before_it_starts(
        tmp_path: Path, where: str) -> None:
    target = tmp_path / where
    result = streamrank("demo", "--json", str(target), "--workdir", str(tmp_path / "work"))
    assert result.returncode == 2
    assert f"error: --json {target}: not a file in an existing directory" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "work").exists()  # nothing was started


@pytest.mark.parametrize(("args", "message"), [
    (["--scenario", "nope"], f"unknown scenario 'nope': give one of {', '.join(SCENARIOS)}, "
                             "or package.module:Class"),
    (["--scenario", "no_such_package.mod:Cls"], "no module named 'no_such_package'"),
    (["--scenario", "models.world:Nope"], "models.world has no class 'Nope'"),
    (["--scenario", "models.world:WorldConfig"], "does not satisfy the Scenario interface"),
    (["--scenario", "covariate", "--seconds", "20", "--change-after", "20"],
     "--change-after 20 must fall within the --seconds 20 served"),
    (["--change-after", "5"], "--change-after places a --scenario's change; give --scenario"),
    (["--retrieval", "--retrieval-source", "popular"],
     "--retrieval-source must be 'interests' or 'trending', not 'popular'"),
    (["--retrieval-source", "trending"],
     "--retrieval-source is about --retrieval; give --retrieval too"),
    (["--compare"], "--compare is about --retrieval; give --retrieval too"),
    (["--retrieval", "--compare", "--retrieval-source", "trending"],
     "--compare runs every --retrieval-source; give one or the other"),
])
def test_demo_refuses_bad_options_before_it_starts(
        tmp_path: Path, args: list[str], message: str) -> None:
    result = streamrank("demo", *args, "--workdir", str(tmp_path / "work"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "work").exists()  # nothing was started


def test_processes_share_the_port_and_the_cores() -> None:
    from stream.runtime.process_group import process_settings

    settings = Settings(processes=2, web_port=7000, roles="features,scoring,outcomes",
                        redis_url="redis://127.0.0.1:6379/15")
    first, second = process_settings(settings, 0), process_settings(settings, 1)
    assert (first.roles, second.roles) == ("features,scoring,outcomes", "scoring")
    assert (first.process_port, second.process_port) == (7001, 7002)
    assert first.web_port == second.web_port == 7000 and first.web_reuse_port
    assert first.processes == second.processes == 1  # a child never forks again
    cores = os.cpu_count() or 1
    assert first.scorer_threads == max(1, cores // 2)
    assert process_settings(settings.model_copy(update={"scorer_threads": 3}),
                            1).scorer_threads == 3


def test_processes_need_scoring_a_fixed_port_and_a_shared_store() -> None:
    redis = "redis://127.0.0.1:6379/15"
    with pytest.raises(ValueError, match="no scoring role"):
        Settings(processes=2, roles="features", redis_url=redis)
    with pytest.raises(ValueError, match="fixed STREAMRANK_WEB_PORT"):
        Settings(processes=2, web_port=0, redis_url=redis)
    with pytest.raises(ValueError, match="in-memory one lives in a single process"):
        Settings(processes=2)
