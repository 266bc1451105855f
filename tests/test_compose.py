"""Static checks of the container deployment.

No Docker engine runs in CI, so these tests parse ``docker-compose.yml``, ``deploy/Dockerfile``
and ``deploy/prometheus.yml`` and hold them against the code they deploy (``Settings`` fields and
the real CLI) and against each other (listeners, URLs, ports).
"""

from __future__ import annotations

import base64
import binascii
import importlib
import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import pytest
import typer.main
import yaml

from stream.runtime.access import check_exposure
from stream.settings import ROLES, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"
PYPROJECT = ROOT / "pyproject.toml"

APP_SERVICES = ("features", "outcomes", "worker", "simulator")
ENV_PREFIX = "STREAMRANK_"


# ------------------------------------------------------------------------------------ helpers


def load_yaml(path: Path) -> Any:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return yaml.safe_load(path.read_text())


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as str -> str, from either the mapping or the list form."""
    raw = svc.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.split("=", 1) for item in raw)
        raw = {kv[0]: kv[1] if len(kv) == 2 else None for kv in pairs}
    assert isinstance(raw, dict), f"environment must be a mapping or a list, got {raw!r}"
    # Compose writes YAML booleans as true/false, and None means "taken from the host".
    return {
        str(k): "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
        for k, v in raw.items()
    }


def command_of(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    assert cmd, "service has no command"
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def depends_on(svc: dict[str, Any]) -> dict[str, str]:
    """``depends_on`` as name -> condition (the short list form means service_started)."""
    raw = svc.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def container_ports(svc: dict[str, Any]) -> set[int]:
    ports: set[int] = set()
    for entry in svc.get("ports") or []:
        target = entry["target"] if isinstance(entry, dict) else str(entry).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/", 1)[0]))
    return ports


def parse_listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)}; an empty host means all interfaces."""
    out: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        match = re.fullmatch(r"([A-Za-z0-9_]+)://([^:/]*):(\d+)", item)
        assert match, f"malformed listener {item!r}"
        out[match[1]] = (match[2], int(match[3]))
    return out


def unknown_settings(env: dict[str, str]) -> list[str]:
    fields = set(Settings.model_fields)
    return sorted(
        key
        for key in env
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() not in fields
    )


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Build ``Settings`` from exactly this environment, as the container would."""
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    overrides: dict[str, Any] = {}  # everything comes from the environment
    return Settings(**overrides)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        keyword, _, rest = (buf + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instructions[starts[-1] :]


def last(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in instructions if kw == keyword]
    assert found, f"final stage has no {keyword}"
    return found[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"expected exec (JSON array) form, got {args!r}"
    assert all(isinstance(part, str) for part in value)
    return value


def pip_installs(run: str) -> list[list[str]]:
    """The arguments of every ``pip install`` in one RUN command line."""
    installs = []
    for segment in re.split(r"&&|\|\||;|\|", run):
        try:
            tokens = shlex.split(segment)
        except ValueError:
            continue
        for i, token in enumerate(tokens[:-1]):
            if re.fullmatch(r"(.*/)?pip3?", token) and tokens[i + 1] == "install":
                installs.append(tokens[i + 2 :])
                break
    return installs


def torch_problems(installs: list[list[str]]) -> list[str]:
    """What in these pip installs would put torch in the image: torch itself or the train extra."""
    problems = []
    for args in installs:
        for arg in args:
            extras = re.search(r"\[([^\]]*)\]", arg)
            wants_train = extras is not None and "train" in {
                e.strip() for e in extras[1].split(",")
            }
            if wants_train or "torch" in arg.lower():
                problems.append(arg)
    return problems


def installs_project(installs: list[list[str]]) -> bool:
    return any(re.fullmatch(r"\.(/)?(\[[^\]]*\])?", arg) for args in installs for arg in args)


def cli_module() -> ModuleType:
    try:
        return importlib.import_module("stream.cli")
    except ModuleNotFoundError as exc:
        if exc.name == "stream.cli":
            pytest.skip("stream/cli.py does not exist yet")
        raise


def parse_cli(args: list[str]) -> Any:
    """Parse ``streamrank ARGS`` with the real CLI and return the subcommand's context.

    Unknown subcommands and options raise a ``UsageError``. Recent typer vendors click as
    ``typer._click``, so this uses the command objects' own API rather than ``import click``.
    """
    root = typer.main.get_command(cli_module().app)
    assert hasattr(root, "resolve_command"), "the streamrank CLI should be a group of subcommands"
    root_ctx = root.context_class(root, info_name="streamrank", resilient_parsing=False)
    name, sub, rest = root.resolve_command(root_ctx, list(args))
    assert sub is not None and name is not None
    return sub.make_context(name, rest, parent=root_ctx, resilient_parsing=False)


def is_usage_error(exc: BaseException) -> bool:
    return any(cls.__name__ == "UsageError" for cls in type(exc).__mro__)


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE_FILE)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def kafka_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return env_of(services["kafka"])


@pytest.fixture(scope="module")
def docker_stage() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), "deploy/Dockerfile is missing"
    return final_stage(dockerfile_instructions(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def worker_port(services: dict[str, dict[str, Any]]) -> int:
    env = env_of(services["worker"])
    default = Settings.model_fields["web_port"].default
    return int(env.get("STREAMRANK_WEB_PORT", default))


# ---------------------------------------------------------------------------------- services


def test_expected_services_and_images(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "redis", "features", "worker", "simulator", "prometheus"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].split(":")[0] == "redis"
    assert services["redis"]["image"].split(":")[1].startswith("7")
    assert services["prometheus"]["image"].startswith("prom/prometheus")


def test_app_services_build_the_deploy_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    build = worker.get("build")
    assert isinstance(build, dict), "worker must build from deploy/Dockerfile"
    context = (ROOT / build.get("context", ".")).resolve()
    assert context == ROOT, "build context must be the repository root (it holds pyproject.toml)"
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    sim = services["simulator"]
    assert sim.get("image") == worker.get("image"), "simulator must run the worker's image"
    assert sim.get("build") in (None, build), "simulator builds nothing else"


def test_no_zookeeper_anywhere(compose: dict[str, Any]) -> None:
    # Every key and value of the parsed file (comments may mention it; config may not).
    assert "zookeeper" not in json.dumps(compose).lower()


def test_kafka_is_single_node_kraft(kafka_env: dict[str, str]) -> None:
    roles = {r.strip() for r in kafka_env.get("KAFKA_PROCESS_ROLES", "").split(",")}
    assert roles == {"broker", "controller"}
    node_id = int(kafka_env["KAFKA_NODE_ID"])

    listeners = parse_listeners(kafka_env["KAFKA_LISTENERS"])
    protocols = dict(
        item.split(":", 1) for item in kafka_env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) <= set(protocols), "every listener needs a security protocol"
    controller_names = kafka_env["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
    assert controller_names and set(controller_names) <= set(listeners)
    controller_ports = {listeners[name][1] for name in controller_names}

    voters = kafka_env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1, "single node: exactly one voter"
    match = re.fullmatch(r"(\d+)@([^:]+):(\d+)", voters[0])
    assert match, f"malformed quorum voter {voters[0]!r}"
    assert int(match[1]) == node_id, "the only voter must be this node"
    assert match[2] == "kafka", "voter host must be the kafka service"
    assert int(match[3]) in controller_ports, "voter port must be the controller listener's"

    advertised = parse_listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    assert not set(advertised) & set(controller_names), "controller listener is not advertised"
    assert set(advertised) <= set(listeners)
    inter_broker = kafka_env.get("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT")
    assert inter_broker in advertised

    # One broker: internal topics must not ask for more replicas than exist.
    assert kafka_env.get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR") == "1"
    assert kafka_env.get("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR") == "1"

    cluster_id = kafka_env["CLUSTER_ID"]
    try:
        raw = base64.urlsafe_b64decode(cluster_id + "=" * (-len(cluster_id) % 4))
    except binascii.Error:
        raw = b""
    assert len(cluster_id) == 22 and len(raw) == 16, "CLUSTER_ID must be a base64url UUID"


@pytest.mark.parametrize("name", ["kafka", "redis"])
def test_infrastructure_has_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name].get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{name} needs a healthcheck"


# ----------------------------------------------------------------------- app env and wiring


@pytest.mark.parametrize("name", APP_SERVICES)
def test_env_vars_are_real_settings(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(services[name])
    assert any(key.startswith(ENV_PREFIX) for key in env)
    assert unknown_settings(env) == [], f"{name} sets variables that Settings does not define"
    settings = settings_from(env, monkeypatch)  # values must also validate
    assert settings.broker_url == env["STREAMRANK_BROKER_URL"]


def test_unknown_setting_is_caught() -> None:
    assert unknown_settings({"STREAMRANK_BROKER_URL": "x", "STREAMRANK_NOT_A_SETTING": "1"}) == [
        "STREAMRANK_NOT_A_SETTING"
    ]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_broker_url_is_kafka_internal_listener(
    services: dict[str, dict[str, Any]], kafka_env: dict[str, str], name: str
) -> None:
    advertised = parse_listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    listeners = parse_listeners(kafka_env["KAFKA_LISTENERS"])
    by_address = {address: lname for lname, address in advertised.items()}
    url = env_of(services[name])["STREAMRANK_BROKER_URL"]
    for server in url.split(","):
        host, _, port = server.strip().rpartition(":")
        assert host == "kafka", f"{name} must reach Kafka by its service name, got {server!r}"
        lname = by_address.get((host, int(port)))
        assert lname is not None, f"{server!r} is not an advertised Kafka listener"
        assert listeners[lname][1] == int(port), f"listener {lname} does not listen on {port}"
    assert depends_on(services[name]).get("kafka") == "service_healthy"


def test_worker_redis_url_is_redis_service(services: dict[str, dict[str, Any]]) -> None:
    url = urlparse(env_of(services["worker"])["STREAMRANK_REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname == "redis" and url.hostname in services
    assert (url.port or 6379) == 6379
    assert re.fullmatch(r"/?\d*", url.path or ""), "redis URL path must be a database number"
    assert depends_on(services["worker"]).get("redis") == "service_healthy"


def test_worker_partitions_match_kafka_default(
    services: dict[str, dict[str, Any]], kafka_env: dict[str, str]
) -> None:
    env = env_of(services["worker"])
    partitions = int(env.get("STREAMRANK_PARTITIONS", Settings.model_fields["partitions"].default))
    assert int(kafka_env.get("KAFKA_NUM_PARTITIONS", partitions)) == partitions


def test_worker_topics_fit_one_broker(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(env_of(services["worker"]), monkeypatch)
    # The bundled Kafka is one node: topics the worker creates cannot ask for more replicas.
    assert getattr(settings, "replication_factor", 1) == 1


def test_worker_web_is_reachable(services: dict[str, dict[str, Any]], worker_port: int) -> None:
    worker = services["worker"]
    assert env_of(worker).get("STREAMRANK_WEB_HOST") == "0.0.0.0"
    assert worker_port in container_ports(worker)


def test_worker_token_comes_from_the_host_and_is_required(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(services["worker"])
    # ${VAR:?message}: compose refuses to start without it; no default token ships in the file.
    assert re.fullmatch(r"\$\{STREAMRANK_API_TOKEN:\?[^}]+\}", env["STREAMRANK_API_TOKEN"])
    # Once the host sets it, the worker passes the start-up check for its 0.0.0.0 binding.
    host_set = {**env, "STREAMRANK_API_TOKEN": "tok-0123456789abcdef"}
    check_exposure(settings_from(host_set, monkeypatch))


def test_simulator_waits_for_worker(services: dict[str, dict[str, Any]]) -> None:
    assert {"features", "worker"} <= set(depends_on(services["simulator"]))


def test_each_role_runs_in_exactly_one_service(services: dict[str, dict[str, Any]]) -> None:
    """Roles are consumer groups of their own: compose runs (and scales) them apart."""
    roles: list[str] = []
    for name in ("features", "outcomes", "drift", "interests", "bn", "ads", "worker"):
        ctx = parse_cli(command_of(services[name]))
        roles += ctx.params["roles"].split(",")
        assert services[name]["build"] == services["worker"]["build"]
    assert sorted(roles) == sorted(ROLES)


def test_bn_writes_statistics_where_the_scoring_workers_load_them(
        services: dict[str, dict[str, Any]]) -> None:
    """A scorer loads statistics only from under its model directory (models/scorer.py)."""
    def model_volume(name: str) -> str:
        volumes = [v for v in services[name].get("volumes") or []
                   if v.split(":")[1] == "/app/artifacts"]
        assert volumes, f"{name} mounts nothing at the model directory /app/artifacts"
        return volumes[0].split(":")[0]

    volume = model_volume("bn")
    assert volume == model_volume("worker") == model_volume("ads")
    assert volume in (load_yaml(COMPOSE_FILE).get("volumes") or {}), "a named volume, shared"


# ---------------------------------------------------------------------------------------- CLI


def test_service_commands_name_the_right_subcommands(
    services: dict[str, dict[str, Any]],
) -> None:
    assert command_of(services["worker"])[0] == "worker"
    assert command_of(services["features"])[0] == "worker"
    sim = command_of(services["simulator"])
    assert sim[0] == "simulate" and "--rate" in sim


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_command_parses_against_cli(services: dict[str, dict[str, Any]], name: str) -> None:
    ctx = parse_cli(command_of(services[name]))
    assert ctx.info_name == command_of(services[name])[0]


def test_image_default_command_parses(docker_stage: list[tuple[str, str]]) -> None:
    parse_cli(exec_form(last(docker_stage, "CMD")))


@pytest.mark.parametrize(
    "args", [["no-such-command"], ["worker", "--no-such-option"], ["simulate", "--bogus", "1"]]
)
def test_cli_parse_rejects_bad_commands(args: list[str]) -> None:
    with pytest.raises(Exception) as info:
        parse_cli(args)
    assert is_usage_error(info.value), f"expected a usage error, got {info.value!r}"


# --------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_entrypoint_and_cmd(docker_stage: list[tuple[str, str]]) -> None:
    assert exec_form(last(docker_stage, "ENTRYPOINT")) == ["streamrank"]
    assert exec_form(last(docker_stage, "CMD")) == ["worker"]


def test_dockerfile_runs_as_non_root(docker_stage: list[tuple[str, str]]) -> None:
    user = last(docker_stage, "USER").split(":", 1)[0]
    assert user not in {"root", "0"}


def test_dockerfile_exposes_and_healthchecks_web_port(
    docker_stage: list[tuple[str, str]], worker_port: int
) -> None:
    exposed = {int(p.split("/")[0]) for p in last(docker_stage, "EXPOSE").split()}
    assert worker_port in exposed
    check = last(docker_stage, "HEALTHCHECK")
    assert not check.upper().startswith("NONE")
    assert re.search(r"/health(?![\w-])", check), "HEALTHCHECK must poll the /health view"
    assert "python" in check and str(worker_port) in check
    assert "curl" not in check and "wget" not in check, "slim images have neither"


def test_dockerfile_installs_project_without_torch() -> None:
    runs = [args for kw, args in dockerfile_instructions(DOCKERFILE.read_text()) if kw == "RUN"]
    installs = [args for run in runs for args in pip_installs(run)]
    assert installs, "the Dockerfile installs nothing with pip"
    assert installs_project(installs), "the Dockerfile must pip install the project (.)"
    assert torch_problems(installs) == []
    base = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert not [dep for dep in base if "torch" in dep.lower()], "torch must stay an extra"


def test_torch_install_detection() -> None:
    assert torch_problems(pip_installs("pip install --no-cache-dir torch==2.13.0")) == [
        "torch==2.13.0"
    ]
    assert torch_problems(pip_installs("cd /src && pip install '.[gpu,train]'")) == [".[gpu,train]"]
    assert torch_problems(pip_installs("pip install . && pip show torch")) == []
    assert installs_project(pip_installs("python -m pip install ."))
    assert not installs_project(pip_installs("pip install streamrank-plugins"))


# --------------------------------------------------------------------------------- Prometheus


def test_prometheus_mounts_config(services: dict[str, dict[str, Any]]) -> None:
    mounts = []
    for volume in services["prometheus"].get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((volume.get("source", ""), volume.get("target", "")))
        else:
            source, target = str(volume).split(":")[:2]
            mounts.append((source, target))
    assert any(
        (ROOT / source).resolve() == PROMETHEUS_FILE and target == "/etc/prometheus/prometheus.yml"
        for source, target in mounts
    ), "prometheus must mount deploy/prometheus.yml as its config"


def test_prometheus_scrapes_worker_metrics(worker_port: int) -> None:
    config = load_yaml(PROMETHEUS_FILE)
    scraped = [
        job.get("metrics_path", "/metrics")
        for job in config.get("scrape_configs") or []
        for static in job.get("static_configs") or []
        if f"worker:{worker_port}" in static.get("targets", [])
    ]
    assert scraped == ["/metrics"], f"expected one scrape of worker:{worker_port}/metrics"
