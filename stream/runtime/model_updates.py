"""Follows ``model-updates`` and hot-swaps the scorer when a new version is published.

Every worker must see every update, so this is a broadcast consumer (no group) that reads the
whole topic from the start: at start-up the latest valid update wins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from models.scorer import Manifest, ModelError
from schemas import ModelUpdate, encode
from stream.runtime.clients import started_producer
from stream.runtime.consumer import Decoded, Sends, SupervisedConsumer
from stream.runtime.metrics import WorkerMetrics
from stream.scoring.ranker import ModelSlot
from stream.settings import Settings

log = logging.getLogger(__name__)


def manifest_path(update: ModelUpdate) -> Path:
    """``file://`` URIs of a model.onnx or its directory; the manifest sits beside the model."""
    parts = urlsplit(update.uri)
    if parts.scheme != "file":
        raise ModelError(f"unsupported model uri scheme {parts.scheme!r} (only file://)")
    path = Path(unquote(parts.path))
    return (path if path.is_dir() else path.parent) / "manifest.json"


class ModelUpdatesService(SupervisedConsumer):
    def __init__(self, settings: Settings, bootstrap: str, slot: ModelSlot,
                 metrics: WorkerMetrics, **kwargs: Any) -> None:
        super().__init__(settings, bootstrap, metrics, name="model-updates",
                         topics={settings.topic("model-updates"): ModelUpdate},
                         group_id=None, fetch_wait_ms=100, max_records=1000, **kwargs)
        self.slot = slot

    async def on_start(self) -> None:
        if self.settings.model_manifest is not None:
            await self.slot.load(self.settings.model_manifest)
        await super().on_start()

    async def handle(self, batch: Sequence[Decoded[Any]]) -> Sends:
        models = [d.value for d in batch if d.value.kind == "model"]
        if models:
            await self._swap(models[-1])
        return []

    async def _swap(self, update: ModelUpdate) -> None:
        try:
            scorer = await self.slot.load(manifest_path(update), expected_sha256=update.sha256)
        except (ModelError, OSError) as exc:
            self.metrics.model_load_failures.inc()
            log.error("model %s not loaded, still serving %s: %s", update.version,
                      self.slot.current.version, exc)
            return
        log.info("now serving model %s", scorer.version)


def model_update(manifest: Path) -> ModelUpdate:
    """The record announcing a trained model (its directory must be readable by the workers)."""
    loaded = Manifest.load(manifest)
    return ModelUpdate(ts=time.time(), model="ranker", kind="model", version=loaded.version,
                       uri=loaded.model_path.resolve().as_uri(), sha256=loaded.sha256)


async def publish_model(settings: Settings, bootstrap: str, manifest: Path) -> ModelUpdate:
    update = model_update(manifest)
    producer = await started_producer(settings, bootstrap)
    try:
        await producer.send_and_wait(settings.topic("model-updates"), encode(update),
                                     key=update.model.encode())
    finally:
        await producer.stop()
    return update
