"""Drift-alert subscriptions and their delivery, through a real worker process, the embedded
broker and real Redis: the API, its refusals, a restart, routing end to end, signed webhooks
and a dead one that delays nobody else."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from kafka.admin import NewTopic

from schemas import DriftAlert, encode
from schemas.examples import EXAMPLES
from stream.demo import WorkerProcess
from stream.drift.signatures import (
    ALERT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)
from stream.runtime.broker import free_port
from stream.runtime.clients import kafka_admin
from stream.runtime.environment import ensure_topics
from stream.settings import Settings
from tests.integration.harness import publish, read_dead_letters, wait_until

pytestmark = pytest.mark.integration

TOKEN = "tok-" + uuid.uuid4().hex
SECRET = "whsec-" + uuid.uuid4().hex
ATTEMPTS = 3
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def settings(bootstrap: str, redis_url: str) -> Settings:
    return Settings(broker_url=bootstrap, redis_url=redis_url, partitions=2,
                    topic_prefix=f"subs{uuid.uuid4().hex[:8]}", api_token=TOKEN, roles="drift",
                    webhook_allow=["127.0.0.1"], webhook_attempts=ATTEMPTS,
                    webhook_backoff_max_s=0.5, webhook_timeout_s=2.0,
                    consumer_session_timeout_ms=2000, consumer_rebalance_timeout_ms=1000)


@pytest.fixture(scope="module")
def worker(bootstrap: str, settings: Settings) -> Iterator[WorkerProcess]:
    ensure_topics(bootstrap, settings)
    with WorkerProcess(settings, bootstrap) as process:
        yield process


async def call(worker: WorkerProcess, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    async with aiohttp.ClientSession() as http, http.request(
            method, f"http://127.0.0.1:{worker.port}{path}", data=data,
            headers=AUTH if headers is None else headers) as response:
        return response.status, await response.json()


def webhook(subscription_id: str, url: str, **fields: Any) -> dict[str, Any]:
    return {"subscription_id": subscription_id, "owner": "ml-platform",
            "sink": {"kind": "webhook", "url": url, "secret": SECRET}, **fields}


def kafka(subscription_id: str, topic: str, **fields: Any) -> dict[str, Any]:
    return {"subscription_id": subscription_id, "owner": "ops",
            "sink": {"kind": "kafka", "topic": topic}, **fields}


def alert(signal: str, number: int, severity: str = "critical",
          detector: str = "adwin") -> DriftAlert:
    return DriftAlert.model_validate({
        **EXAMPLES["drift-alerts"], "signal": signal, "severity": severity,
        "detector": detector, "alert_id": f"{signal}-{detector}-{number}", "update": number,
        "ts": time.time()})


async def publish_alerts(settings: Settings, alerts: list[DriftAlert]) -> None:
    await publish(settings, "drift-alerts", [(a.signal, encode(a)) for a in alerts])


@dataclass
class Receiver:
    """A webhook receiver that checks every delivery's signature as a subscriber would."""

    status: int = 200
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    attempts: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        headers = dict(request.headers)
        if not verify_signature(SECRET, headers.get(TIMESTAMP_HEADER, ""), body,
                                headers.get(SIGNATURE_HEADER, ""), now=time.time()):
            return web.Response(status=401)
        if self.status == 200:
            self.deliveries.append((headers, body))
        return web.Response(status=self.status)

    def alert_ids(self) -> list[str]:
        return [orjson.loads(body)["alert_id"] for _, body in self.deliveries]


@asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[Receiver]:
    hook = Receiver(status)
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    hook.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


def create_topics(settings: Settings, *names: str) -> None:
    assert settings.broker_url is not None
    admin = kafka_admin(settings, settings.broker_url)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        admin.close()


async def read_topic(settings: Settings, topic: str, expected: int,
                     timeout_s: float = 20.0) -> list[tuple[bytes | None, DriftAlert]]:
    """``expected`` records of ``topic`` (and any more that come within half a second)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.broker_url,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    got: list[tuple[bytes | None, DriftAlert]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(got) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += [(r.key, DriftAlert.model_validate_json(r.value or b"")) for r in records]
        for records in (await consumer.getmany(timeout_ms=500)).values():
            got += [(r.key, DriftAlert.model_validate_json(r.value or b"")) for r in records]
    finally:
        await consumer.stop()
    return got


async def test_subscriptions_are_created_read_listed_and_deleted_without_their_secret(
        worker: WorkerProcess) -> None:
    created = webhook("crud-hook", "http://127.0.0.1:9/hook", signals=["calibration.*"])
    status, answer = await call(worker, "POST", "/subscriptions", created)  # no ts: the server's
    assert status == 201
    assert answer["sink"] == {"schema_version": 1, "kind": "webhook",
                              "url": "http://127.0.0.1:9/hook", "secret": "***"}
    assert answer["ts"] > 1.7e9 and answer["min_severity"] == "warning"
    status, listing = await call(worker, "GET", "/subscriptions")
    assert status == 200 and answer in listing["subscriptions"]
    assert await call(worker, "GET", "/subscriptions/crud-hook") == (200, answer)
    assert SECRET not in orjson.dumps(listing).decode()

    replaced = {**created, "min_severity": "critical"}
    status, answer = await call(worker, "POST", "/subscriptions", replaced)
    assert status == 201 and answer["min_severity"] == "critical"
    assert (await call(worker, "GET", "/subscriptions/crud-hook"))[1]["min_severity"] == "critical"

    assert (await call(worker, "DELETE", "/subscriptions/crud-hook"))[0] == 200
    status, refusal = await call(worker, "GET", "/subscriptions/crud-hook")
    assert (status, refusal["error"]) == (404, "not_found")
    assert (await call(worker, "DELETE", "/subscriptions/crud-hook"))[0] == 404


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/subscriptions"), ("POST", "/subscriptions"), ("GET", "/subscriptions/any"),
    ("DELETE", "/subscriptions/any")])
async def test_every_subscription_route_needs_the_token(worker: WorkerProcess, method: str,
                                                        path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        status, answer = await call(worker, method, path, kafka("x", "alerts-x"), headers)
        assert (status, answer["error"]) == (401, "unauthorized")


async def test_hostile_bodies_are_refused_and_change_nothing(worker: WorkerProcess,
                                                             settings: Settings) -> None:
    _, before = await call(worker, "GET", "/subscriptions")
    valid = webhook("hostile", "http://127.0.0.1:9/hook")
    hostile: list[tuple[Any, int, str]] = [
        (b"x" * (1024 * 1024), 413, "body_too_large"),
        (orjson.dumps({**valid, "owner": "o" * 100_000}), 413, "body_too_large"),
        (b"{not json", 400, "not_json"),
        (b"[1, 2]", 400, "wrong_type"),
        ({**valid, "signals": "calibration.*"}, 400, "wrong_type"),
        ({**valid, "owner": 7}, 400, "wrong_type"),
        ({**valid, "min_severity": "loud"}, 400, "invalid_value"),
        ({**valid, "ts": 1.79e12}, 400, "absurd_timestamp"),
        ({**valid, "admin": True}, 400, "unknown_field"),
        ({**valid, "signals": ["*"] * 65}, 400, "list_too_long"),
        ({**valid, "sink": {"kind": "webhook", "url": "file:///etc/passwd", "secret": SECRET}},
         400, "invalid_value"),
        ({**valid, "sink": {"kind": "webhook", "url": "http://127.0.0.1:9/"}}, 400,
         "missing_field"),
        ({**valid, "sink": {"kind": "webhook", "url": "http://127.0.0.1:9/", "secret": "short"}},
         400, "invalid_value"),
        ({**valid, "sink": {"kind": "email", "to": "x@example.com"}}, 400, "invalid_value"),
        (webhook("hostile", "http://169.254.169.254/latest/meta-data/"), 400, "unsafe_webhook"),
        (webhook("hostile", "http://10.0.0.7/hook"), 400, "unsafe_webhook"),
        (webhook("hostile", "http://admin:pw@127.0.0.1:9/hook"), 400, "unsafe_webhook"),
        (kafka("hostile", settings.topic("events")), 400, "reserved_topic"),
        (kafka("hostile", settings.topic("drift-alerts")), 400, "reserved_topic"),
        (kafka("hostile", "__consumer_offsets"), 400, "reserved_topic"),
    ]
    for body, expected_status, reason in hostile:
        status, answer = await call(worker, "POST", "/subscriptions", body)
        assert (status, answer["error"]) == (expected_status, reason), answer
        assert answer["detail"]
    assert await call(worker, "GET", "/subscriptions") == (200, before)


async def test_subscriptions_and_deletions_survive_a_worker_restart(
        worker: WorkerProcess, settings: Settings) -> None:
    signal = f"score.click_{uuid.uuid4().hex[:6]}"
    async with receiver() as hook:
        kept = webhook("restart-kept", hook.url, signals=[signal])
        for body in (kept, kafka("restart-gone", "alerts-gone")):
            assert (await call(worker, "POST", "/subscriptions", body))[0] == 201
        assert (await call(worker, "DELETE", "/subscriptions/restart-gone"))[0] == 200
        _, before = await call(worker, "GET", "/subscriptions")
        await publish_alerts(settings, [alert(signal, 1)])
        await wait_until(lambda: len(hook.deliveries) == 1)

        await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(worker.start)
        status, after = await call(worker, "GET", "/subscriptions")
        assert status == 200 and after == before
        ids = [s["subscription_id"] for s in after["subscriptions"]]
        assert "restart-kept" in ids and "restart-gone" not in ids

        # The first alert was committed once delivered: after the restart only the second
        # comes (a repeat of the first would come before it, from the same partition).
        await publish_alerts(settings, [alert(signal, 2)])
        await wait_until(lambda: len(hook.deliveries) == 2)
        assert hook.alert_ids() == [f"{signal}-adwin-1", f"{signal}-adwin-2"]


async def test_alerts_reach_exactly_the_sinks_whose_filters_match(
        worker: WorkerProcess, settings: Settings) -> None:
    tag = uuid.uuid4().hex[:6]
    calibration, features = f"alerts-calibration-{tag}", f"alerts-features-{tag}"
    create_topics(settings, calibration, features)
    async with receiver() as everything:
        for body in (kafka(f"cal-{tag}", calibration, signals=[f"calibration.*_{tag}"]),
                     kafka(f"feat-{tag}", features, signals=[f"feature.*_{tag}"],
                           min_severity="critical", detectors=["kswin"]),
                     webhook(f"all-{tag}", everything.url, signals=[f"*_{tag}"],
                             min_severity="info")):
            assert (await call(worker, "POST", "/subscriptions", body))[0] == 201
        alerts = [alert(f"calibration.click_{tag}", 1, "warning"),
                  alert(f"calibration.click_{tag}", 2, "info"),  # below warning
                  alert(f"feature.sim_max_{tag}", 3, "critical", "kswin"),
                  alert(f"feature.sim_max_{tag}", 4, "critical", "adwin"),  # not kswin
                  alert(f"feature.sim_mean_{tag}", 5, "warning", "kswin"),  # not critical
                  alert(f"score.click_{tag}", 6, "info", "page_hinkley")]
        await publish_alerts(settings, alerts)
        await wait_until(lambda: len(everything.deliveries) == len(alerts))

        ids = [a.alert_id for a in alerts]
        assert sorted(everything.alert_ids()) == sorted(ids)
        calibration_got = await read_topic(settings, calibration, 1)
        assert [(key, a.alert_id) for key, a in calibration_got] == [
            (f"calibration.click_{tag}".encode(), ids[0])]
        assert [a for _, a in calibration_got] == [alerts[0]]  # the record, unchanged
        assert [a.alert_id for _, a in await read_topic(settings, features, 1)] == [ids[2]]

        headers, body = everything.deliveries[0]
        alert_id = orjson.loads(body)["alert_id"]
        assert headers[ALERT_ID_HEADER] == alert_id
        assert headers[SIGNATURE_HEADER].startswith("sha256=")
        timestamp, signature = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
        assert abs(int(timestamp) - time.time()) < 60
        # What the receiver refuses: the same delivery tampered with, or replayed later.
        forged = body.replace(alert_id.encode(), b"forged")
        assert forged != body
        assert not verify_signature(SECRET, timestamp, forged, signature, now=time.time())
        assert not verify_signature(SECRET, timestamp, body, signature,
                                    now=int(timestamp) + 301)


async def test_a_dead_webhook_is_dead_lettered_and_delays_no_other_subscription(
        worker: WorkerProcess, settings: Settings) -> None:
    tag = uuid.uuid4().hex[:6]
    signal = f"label_rate.click_{tag}"
    async with receiver() as healthy, receiver(status=500) as failing:
        for body in (webhook(f"healthy-{tag}", healthy.url, signals=[signal]),
                     webhook(f"failing-{tag}", failing.url, signals=[signal]),
                     webhook(f"nobody-{tag}", f"http://127.0.0.1:{free_port()}/hook",
                             signals=[signal])):
            assert (await call(worker, "POST", "/subscriptions", body))[0] == 201
        alerts = [alert(signal, n) for n in range(3)]
        await publish_alerts(settings, alerts)

        await wait_until(lambda: len(healthy.deliveries) == len(alerts))
        # Each alert costs the failing lane at least two backoffs: it is still on the first.
        assert failing.attempts < len(alerts) * ATTEMPTS
        assert healthy.alert_ids() == [a.alert_id for a in alerts]  # in order

        letters = await read_dead_letters(settings, 2 * len(alerts), timeout_s=60)
        assert failing.attempts == len(alerts) * ATTEMPTS
    assert len(letters) == 2 * len(alerts)
    assert {letter.reason for letter in letters} == {"delivery_failed"}
    assert {letter.source_topic for letter in letters} == {settings.topic("drift-alerts")}
    for name, error in ((f"failing-{tag}", "HTTP 500"), (f"nobody-{tag}", "ClientConnector")):
        mine = [x for x in letters if f"subscription {name}:" in x.detail]
        assert len(mine) == len(alerts) and all(error in x.detail for x in mine), mine
        assert all(f"attempt {ATTEMPTS} of {ATTEMPTS}" in x.detail for x in mine)
    assert SECRET not in "".join(letter.detail for letter in letters)

    metrics = await asyncio.to_thread(metrics_text, worker)
    assert f'streamrank_alert_delivery_failures_total{{subscription="failing-{tag}"}} 3.0' in (
        metrics)
    assert 'streamrank_alert_deliveries_total{outcome="retried",sink="webhook"}' in metrics


def metrics_text(worker: WorkerProcess) -> str:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as page:
        return str(page.read().decode())


def streamrank(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMRANK_")}
    return subprocess.run([sys.executable, "-m", "stream.cli", "alerts", *args],
                          env={**env, "STREAMRANK_API_TOKEN": token}, capture_output=True,
                          text=True, timeout=60)


def test_the_cli_subscribes_lists_and_unsubscribes_with_clear_errors(
        worker: WorkerProcess, tmp_path: Any) -> None:
    url = f"http://127.0.0.1:{worker.port}"
    made = streamrank("subscribe", "--url", url, "--id", "cli-hook", "--owner", "me",
                      "--signal", "calibration.*", "--signal", "score.*", "--detector", "adwin",
                      "--min-severity", "critical", "--webhook", "http://127.0.0.1:9/hook",
                      "--secret", SECRET)
    assert made.returncode == 0, made.stderr
    shown = orjson.loads(made.stdout)
    assert shown["signals"] == ["calibration.*", "score.*"] and shown["detectors"] == ["adwin"]
    assert shown["sink"]["secret"] == "***" and SECRET not in made.stdout

    body = tmp_path / "body.json"
    body.write_bytes(orjson.dumps(kafka("cli-kafka", "alerts-cli")))
    assert streamrank("subscribe", "--url", url, "--file", str(body)).returncode == 0
    listed = streamrank("list", "--url", url)
    ids = [s["subscription_id"] for s in orjson.loads(listed.stdout)["subscriptions"]]
    assert {"cli-hook", "cli-kafka"} <= set(ids)
    assert streamrank("unsubscribe", "cli-hook", "--url", url).returncode == 0

    for args, message in [
        (("unsubscribe", "cli-hook", "--url", url), "refused (404 not_found): no subscription"),
        (("list", "--url", url), "refused (401 unauthorized)"),
        (("subscribe", "--url", url, "--id", "x", "--owner", "me", "--webhook",
          "http://10.0.0.1/", "--secret", SECRET), "refused (400 unsafe_webhook): 10.0.0.1"),
        (("subscribe", "--url", url, "--id", "x", "--owner", "me"), "give one sink"),
        (("subscribe", "--url", url, "--id", "x", "--owner", "me", "--webhook",
          "http://example.com/"), "--webhook needs --secret"),
        (("subscribe", "--url", url, "--file", str(body), "--id", "x"), "not both"),
        (("list", "--url", f"http://127.0.0.1:{free_port()}"), "no streamrank worker answers"),
    ]:
        result = streamrank(*args, token=TOKEN if "401" not in message else "wrong-" + TOKEN)
        assert result.returncode == 2, (args, result.stdout)
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
