"""``streamrank ads evaluate --from-topics`` against the embedded broker: the feature-log and
outcomes topics read to their end, and the newest bandit version on model-updates."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from schemas import ModelUpdate, Outcome, encode
from stream.cli import app
from stream.runtime.environment import ensure_topics
from stream.runtime.versioned_state import publish_update
from stream.settings import Settings
from tests.integration.harness import publish
from tests.test_ads_offline import learnt_params, synthetic_records

pytestmark = pytest.mark.integration


def test_evaluate_from_topics_uses_the_newest_bandit_version(settings: Settings,
                                                             tmp_path: Path) -> None:
    assert settings.broker_url is not None
    ensure_topics(settings.broker_url, settings)
    params = learnt_params()
    records = synthetic_records(params, requests=30)
    model_dir = (tmp_path / "models").resolve()
    model_dir.mkdir()
    path = model_dir / f"{params.version}.json"
    path.write_bytes(params.to_bytes())
    update = ModelUpdate(ts=time.time(), model="bandit", kind="bandit", version=params.version,
                         uri=path.as_uri(), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    asyncio.run(publish(settings, "feature-log", [
        ("u1", encode(r)) for r in records if not isinstance(r, Outcome)]))
    asyncio.run(publish(settings, "outcomes", [
        ("u1", encode(r)) for r in records if isinstance(r, Outcome)] + [("u1", b"garbage")]))
    asyncio.run(publish_update(settings, settings.broker_url, update))
    env = {"STREAMRANK_BROKER_URL": settings.broker_url,
           "STREAMRANK_TOPIC_PREFIX": settings.topic_prefix,
           "STREAMRANK_MODEL_DIR": str(model_dir)}
    result = CliRunner().invoke(app, ["ads", "evaluate", "--from-topics", "--dial", "1",
                                      "--epsilon", "0.1", "--json", str(tmp_path / "out.json")],
                                env=env)
    assert result.exit_code == 0, result.output
    report = orjson.loads((tmp_path / "out.json").read_bytes())
    assert report["target"]["parent"] == params.version
    assert report["counts"]["used"] == sum(isinstance(r, Outcome) for r in records)
    assert report["counts"]["malformed_records"] == 1
    assert "outcomes partition" in report["counts"]["malformed"][0]


def test_evaluate_from_topics_without_a_bandit_version_is_a_clear_error(
        settings: Settings) -> None:
    assert settings.broker_url is not None
    env = {"STREAMRANK_BROKER_URL": settings.broker_url,
           "STREAMRANK_TOPIC_PREFIX": settings.topic_prefix}
    result = CliRunner().invoke(app, ["ads", "evaluate", "--from-topics", "--dial", "1",
                                      "--epsilon", "0.1"], env=env)
    assert result.exit_code == 2
    assert "error: no bandit parameters:" in result.stderr
    assert "holds no bandit version that loads; give --params FILE" in result.stderr
