"""One typed settings object, read from ``STREAMRANK_*`` environment variables."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

import orjson
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.ranking_features import TASK_NAMES
from schemas import Limits, topic_name

# Every role is a consumer group of its own, so a deployment can scale each apart.
ROLES = ("features", "scoring")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMRANK_", frozen=True)

    broker_url: str | None = Field(
        None, description="Kafka bootstrap servers (host:port,...). Unset: start embedded tansu."
    )
    redis_url: str | None = Field(
        None, description="Redis URL for the feature store. Unset: in-memory store."
    )
    topic_prefix: str = Field("streamrank", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(4, ge=1, description="Partitions for topics that streamrank creates.")
    replication_factor: int = Field(1, ge=1)

    embedding_dim: int = Field(32, ge=1, le=4096)
    max_candidates: int = Field(1000, ge=1)
    max_ads: int = Field(50, ge=0)
    max_ad_slots: int = Field(20, ge=0)
    max_future_skew_s: float = Field(3600.0, gt=0)

    features_group: str = "streamrank-features"
    batch_max_records: int = Field(20_000, ge=1)
    batch_wait_ms: int = Field(20, ge=0)
    dedup_ttl_s: int = Field(
        86_400, ge=60, description="How long event_ids are remembered, to drop duplicates that "
        "a producer sent; replays are recognised by offset whatever their age.")
    feature_ttl_s: int = Field(
        30 * 86_400, ge=60, description="Feature keys (counters, metas, histories) expire this "
        "long after their entity's last write; the store's entity indexes are trimmed to it.")
    redis_cluster: bool = Field(False, description="STREAMRANK_REDIS_URL names a Redis Cluster.")
    redis_key_slots: int = Field(
        1, ge=1, le=16384, description="Hash tags the feature keys are spread over; every "
        "atomic write stays within one. 1 suits one Redis; on a cluster use 64 or more. "
        "Changing it starts on new keys.")
    history_length: int = Field(50, ge=1, le=1000, description="Engagements kept per user.")
    consumer_session_timeout_ms: int = Field(10_000, ge=1000)
    consumer_rebalance_timeout_ms: int = Field(3_000, ge=500)
    handler_attempts: int = Field(
        3, ge=1, le=100, description="Times a record is tried before it goes to the DLQ as "
        "handler_error.")
    commit_interval_ms: int = Field(
        100, ge=0, le=60_000, description="Longest a consumed offset waits to be committed "
        "once its effects are durable; a crash replays at most this much (idempotently).")

    scoring_group: str = "streamrank-scoring"
    scoring_batch_max_requests: int = Field(64, ge=1, description="Requests per micro-batch.")
    scoring_wait_ms: int = Field(1, ge=0, description="Fetch wait on the latency path.")
    request_ttl_s: float = Field(
        30.0, gt=0, description="A ranking request older than this (by its ts) is not scored: "
        "it goes to the DLQ as expired. The scoring group also starts at the latest offset.")
    item_cache_ttl_s: float = Field(
        1.0, ge=0, description="How long a worker reuses an item's features before re-reading "
        "them; 0 reads every candidate from the store on every request.")
    scorer_device: Literal["auto", "cpu", "cuda"] = "auto"
    scorer_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = all.")
    model_manifest: Path | None = Field(None, description="Model to serve at start-up.")
    value_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "like": 0.5, "share": 1.0, "hide": -2.0},
        description="Value model: weight per task; negative weights push items down.")

    roles: str = Field(
        "features,scoring", pattern=r"^[a-z]+(,[a-z]+)*$",
        description="Roles this worker runs, comma-separated; each is its own consumer group.")

    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    log_level: str = "info"

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, roles: str) -> str:
        unknown = set(roles.split(",")) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; roles are {list(ROLES)}")
        return roles

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.roles.split(",")))

    @field_validator("value_weights")
    @classmethod
    def _weights_name_tasks(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = set(weights) - set(TASK_NAMES)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; tasks are {list(TASK_NAMES)}")
        return weights

    def as_env(self) -> dict[str, str]:
        """These settings as ``STREAMRANK_*`` variables, to start a child process with them."""
        env = {}
        for name, value in self.model_dump(exclude_none=True).items():
            text = orjson.dumps(value).decode() if isinstance(value, dict) else str(value)
            env[f"STREAMRANK_{name.upper()}"] = text
        return env

    def topic(self, suffix: str) -> str:
        return topic_name(self.topic_prefix, suffix)

    @cached_property
    def limits(self) -> Limits:
        return Limits(
            embedding_dim=self.embedding_dim,
            max_candidates=self.max_candidates,
            max_ads=self.max_ads,
            max_ad_slots=self.max_ad_slots,
            max_future_skew_s=self.max_future_skew_s,
        )
