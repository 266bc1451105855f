"""One typed settings object, read from ``STREAMRANK_*`` environment variables."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import Field, FilePath, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.ranking_features import TASK_NAMES
from schemas import DETECTORS, Limits, topic_name
from stream.redaction import Redactor, redact_url, url_secrets

# Every role is a consumer group of its own, so a deployment can scale each apart.
ROLES = ("features", "scoring", "outcomes", "drift", "interests", "bn", "ads")
# Features whose distribution holds still while traffic does: context, similarities and
# smoothed rates. Decayed counters grow until their half-life is reached, so monitoring them
# would alert on every warm-up.
# Where retrieval finds candidates: the user's interests (trending for a user with none), or
# the trending items for everyone, the popularity baseline that interests must beat.
RetrievalSource = Literal["interests", "trending"]
GroupName = Literal["features", "scoring", "outcomes", "drift", "alert-delivery", "interests",
                    "bn", "ads", "state-audit"]
DRIFT_FEATURES = ("device_mobile", "device_desktop", "device_tablet", "surface_feed",
                  "sim_max", "sim_mean", "cand_centroid_sim", "item_click_rate_1d",
                  "user_click_rate_1d")


class Settings(BaseSettings):
    # Validation errors never echo an input: it may be a token, a password or a URL with one.
    model_config = SettingsConfigDict(env_prefix="STREAMRANK_", frozen=True,
                                      hide_input_in_errors=True)

    broker_url: str | None = Field(
        None, description="Kafka bootstrap servers (host:port,...). Unset: start embedded tansu."
    )
    redis_url: str | None = Field(
        None, description="Redis URL for the feature store. Unset: in-memory store. Its "
        "password is a secret: masked in repr, dumps, logs and errors."
    )
    topic_prefix: str = Field("streamrank", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(4, ge=1, description="Partitions for topics that streamrank creates.")
    replication_factor: int = Field(1, ge=1)

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = Field(
        None, description="CA bundle that signed the brokers' certificates; unset: system CAs.")
    kafka_ssl_certfile: FilePath | None = Field(None, description="Client certificate (mTLS).")
    kafka_ssl_keyfile: FilePath | None = Field(
        None, description="Client key, unencrypted; unset: the key is in the certificate file.")

    embedding_dim: int = Field(32, ge=1, le=4096)
    max_candidates: int = Field(1000, ge=1)
    max_ads: int = Field(50, ge=0)
    max_ad_slots: int = Field(20, ge=0)
    max_future_skew_s: float = Field(3600.0, gt=0)

    features_group: str | None = Field(None, description="Unset: <topic_prefix>-features.")
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

    scoring_group: str | None = Field(None, description="Unset: <topic_prefix>-scoring.")
    scoring_batch_max_requests: int = Field(64, ge=1, description="Requests per micro-batch.")
    scoring_wait_ms: int = Field(1, ge=0, description="Fetch wait on the latency path.")
    request_ttl_s: float = Field(
        30.0, gt=0, description="A ranking request older than this (by its ts) is not scored: "
        "it goes to the DLQ as expired. The scoring group also starts at the latest offset.")
    item_cache_ttl_s: float = Field(
        1.0, ge=0, description="How long a worker reuses an item's features before re-reading "
        "them; 0 reads every candidate from the store on every request.")
    feature_log_rate: float = Field(
        0.1, ge=0, le=1, description="Share of Kafka ranking requests whose scored feature "
        "rows go to the feature-log topic (and into their outcomes, for training); chosen by "
        "request id, so every worker picks the same ones.")
    scorer_device: Literal["auto", "cpu", "cuda"] = "auto"
    scorer_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 = all.")
    model_manifest: Path | None = Field(None, description="Model to serve at start-up.")
    model_dir: Path = Field(
        Path("artifacts"), description="Published models must lie under this directory, "
        "symlinks resolved; relative to the working directory, resolved at start-up.")
    model_signing_key: SecretStr | None = Field(
        None, description="HMAC-SHA256 key: set, every model served must carry its signature, "
        "and training and publishing sign with it.")
    value_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "like": 0.5, "share": 1.0, "hide": -2.0},
        description="Value model: weight per task; negative weights push items down.")
    item_max_age_s: float = Field(
        30 * 86_400, ge=0, description="Items older than this (by created_ts, else the "
        "upsert's ts) leave every worker's ANN index: checked as each is read and every "
        "10 s. 0 keeps them until retracted.")
    ann_snapshot_dir: Path = Field(
        Path("artifacts/ann"), description="Where a scoring worker keeps the snapshot of its "
        "ANN index of items (one file per topic prefix), so a restart reads only the tail.")
    ann_snapshot_interval_s: float = Field(
        60.0, gt=0, description="How often the ANN index is written to its snapshot, when it "
        "changed; also at a clean stop.")

    outcomes_group: str | None = Field(None, description="Unset: <topic_prefix>-outcomes.")
    outcome_window_s: float = Field(
        300.0, gt=0, description="How long after a ranking (by event time) its items' and ad "
        "slots' events still count; the outcome goes out once the watermark passes it.")

    drift_group: str | None = Field(None, description="Unset: <topic_prefix>-drift.")
    drift_detectors: dict[str, str] = Field(
        default_factory=dict, description="Detector per signal glob, first match wins, e.g. "
        '{"feature.*": "kswin"}; unmatched signals use adwin.')
    drift_params: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {"adwin": {"delta": 0.002, "clock": 32}},
        description="River parameters per detector, e.g. "
        '{"adwin": {"delta": 0.002, "clock": 32}, "page_hinkley": {"threshold": 50}}.')
    drift_features: list[str] = Field(
        default_factory=lambda: list(DRIFT_FEATURES),
        description="Dense ranking features monitored as feature.<name>, from the feature log.")
    drift_replay_records: int = Field(
        20_000, ge=0, description="Records per input partition read again, before the "
        "committed offset, to rebuild the monitors when the drift role starts.")
    drift_severity_warning: float = Field(0.2, gt=0, description="Effect size of a warning.")
    drift_severity_critical: float = Field(0.5, gt=0, description="Effect size of a critical.")
    alert_cooldown_s: float = Field(
        600.0, ge=0, description="After an alert, further detections of the same signal in "
        "the same direction within this many seconds (event time) are the same change.")
    alert_delivery_group: str | None = Field(
        None, description="Unset: <topic_prefix>-alert-delivery.")
    webhook_allow: list[str] = Field(
        default_factory=list, description="Hosts, addresses or CIDR networks webhooks may "
        "reach although they are loopback, private, link-local or metadata addresses.")
    webhook_timeout_s: float = Field(5.0, gt=0, description="Per delivery attempt.")
    webhook_attempts: int = Field(6, ge=1, description="Attempts before delivery_failed.")
    webhook_backoff_max_s: float = Field(
        60.0, gt=0, description="Cap of the exponential backoff between attempts.")

    interests_group: str | None = Field(None, description="Unset: <topic_prefix>-interests.")
    interests_threshold: float = Field(
        2.0, gt=0, description="Ward distance at which a user's engagements are cut into "
        "interests (models/interests.py says how it was chosen).")
    interests_join_cosine: float = Field(
        0.35, ge=-1, le=1, description="Cosine to the nearest medoid from which a new "
        "engagement joins that interest online; below it, it opens one.")
    interests_lambda_per_day: float = Field(
        0.01, ge=0, description="Importance decay: sum of exp(-lambda (now - t)) per day.")
    interests_max_history: int = Field(50, ge=1, le=1000,
                                       description="Engagements kept per user.")
    interests_max_age_s: float = Field(90 * 86_400.0, gt=0,
                                       description="Engagements older than this are dropped.")
    interests_online_max: int = Field(
        20, ge=1, description="Engagements joined online before a full recluster.")
    interests_long_dwell_s: float = Field(
        30.0, ge=0, description="A dwell this long is a positive engagement.")
    trending_size: int = Field(500, ge=1, description="Trending items kept for retrieval.")
    trending_interval_s: float = Field(
        5.0, gt=0, description="How often (event time) the trending items are written.")
    interest_features: bool = Field(
        True, description="The ranker's three interest columns; false leaves them at zero in "
        "training and serving (to measure what they add).")
    retrieval_k: int = Field(
        200, ge=1, description="Candidates retrieved for a request that has none and does "
        "not say how many (retrieve).")
    retrieval_source: RetrievalSource = Field(
        "interests", description="interests: near the user's interest medoids, trending for "
        "a user with none; trending: the trending items for everyone, a popularity baseline.")

    bn_group: str | None = Field(None, description="Unset: <topic_prefix>-bn.")
    bn_momentum: float = Field(
        0.1, gt=0, le=1, description="PyTorch's convention: the weight of each new batch of "
        "feature-log rows in the running BatchNorm statistics (Keras's momentum is 1 minus it).")
    bn_min_rows: int = Field(2000, ge=2, description="Feature-log rows per statistics update.")
    bn_max_rows: int = Field(
        20_000, ge=2, description="Rows waiting for the next update beyond this many make room "
        "by dropping the oldest: memory stays bounded at any traffic.")
    bn_min_interval_s: float = Field(
        30.0, ge=0, description="Event-time seconds from one statistics update to the next at "
        "least, so hot swaps stay rare at any traffic.")
    bn_max_step_sd: float = Field(
        1.0, gt=0, description="An update that moves any channel's mean by more than this many "
        "current standard deviations, or its std by more than 1 + this factor, is refused.")
    bn_var_floor: float = Field(1e-5, gt=0, description="No adapted variance goes below it.")
    bn_collapse_ratio: float = Field(
        0.01, gt=0, lt=1, description="A channel whose batch variance is below this share of "
        "its current one keeps its statistics (a rare flag absent from the batch, a stuck "
        "input); one whose adapted variance would fall below this share of the trained one is "
        "collapsing: the update is refused and an alert goes out.")
    bn_watchdog_outcomes: int = Field(
        1000, ge=10, description="Labelled outcomes (with feature rows) on which a new "
        "statistics version is compared with its parent.")
    bn_watchdog_margin: float = Field(
        0.01, ge=0, description="A version whose click log loss is worse than its parent's by "
        "more than this share is rolled back.")

    ads_dial: float = Field(
        1.0, ge=0, description="Revenue given up per unit of organic engagement (clicks, likes, "
        "shares) an ad costs: net reward = revenue - dial x engagement loss. The prior's; "
        "change it at runtime with `streamrank ads set --dial`.")
    ads_epsilon: float = Field(
        0.1, gt=0, le=1, description="Exploration floor: every feasible action of a slot keeps "
        "at least epsilon / |actions|, so every logged propensity is exact and nonzero. The "
        "prior's; change it at runtime with `streamrank ads set --epsilon`.")
    ads_alpha: float = Field(
        0.0, ge=0, description="LinUCB width, in posterior standard deviations of the net "
        "reward (0: the posterior mean).")
    ads_ridge: float = Field(1.0, gt=0, description="Prior precision of every reward model.")
    ads_max_ads: int = Field(3, ge=0, le=100, description="Ads per ranking at most.")
    ads_min_spacing: int = Field(
        3, ge=1, le=1000, description="Feed positions from one ad to the next at least.")
    ads_seed: int = Field(
        0, ge=0, description="Mixed with the request id into each ranking's decision seed, so "
        "the topic and POST /rank decide a request alike.")
    ads_group: str | None = Field(None, description="Unset: <topic_prefix>-ads.")
    ads_update_outcomes: int = Field(
        500, ge=1, description="Ad-slot outcomes the learner gathers per parameter version.")
    ads_update_interval_s: float = Field(
        60.0, ge=0, description="Event-time seconds from one parameter version to the next at "
        "least, so hot swaps stay rare at any traffic.")
    ads_max_age_s: float = Field(
        86_400.0, gt=0, description="Outcomes of rankings older than this (against the newest "
        "read) are counted and not learnt from: a backlog from another regime.")

    roles: str = Field(
        ",".join(ROLES), pattern=r"^[a-z]+(,[a-z]+)*$",
        description="Roles this worker runs, comma-separated; each is its own consumer group.")

    rank_queue_max: int = Field(
        256, ge=1, description="POST /rank requests waiting for a micro-batch, beyond the one "
        "being scored; more are refused with 429.")
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=0, le=65535)
    processes: int = Field(
        1, ge=1, le=64, description="Scoring processes of this worker (streamrank worker "
        "--processes): the first runs every role, the others only scoring, all in one "
        "consumer group and on one web port (SO_REUSEPORT); process k also answers alone on "
        "web_port + 1 + k. See docs/scoring.md for choosing it.")
    web_reuse_port: bool = Field(
        False, description="Share web_port with other workers of this host through "
        "SO_REUSEPORT, which spreads connections over them (set for each of --processes).")
    process_port: int | None = Field(
        None, ge=1, le=65535, description="A second port on which this process alone answers "
        "/health, /stats and /metrics, when web_port is shared (set for each of --processes).")
    api_token: SecretStr | None = Field(
        None, description="Bearer token for POST /rank and every write endpoint; "
        "required when web_host is not loopback.")
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
    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, url: str | None) -> str | None:
        if url is not None:
            urlsplit(url)  # raises here, cleanly, rather than where its password is masked
        return url

    @field_validator("api_token")
    @classmethod
    def _token_is_long(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters, e.g. from `openssl rand -hex 16`")
        return token

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Settings:
        """Half-configured security is refused, never ignored: a CA file with PLAINTEXT, or a
        SASL user without SASL, would leave a deployment believing it is protected."""
        protocol = self.kafka_security_protocol
        named = f"STREAMRANK_KAFKA_SECURITY_PROTOCOL={protocol}"
        sasl = protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"{named} needs STREAMRANK_KAFKA_SASL_USERNAME and "
                             "STREAMRANK_KAFKA_SASL_PASSWORD")
        if not sasl and (self.kafka_sasl_username or self.kafka_sasl_password):
            raise ValueError(f"STREAMRANK_KAFKA_SASL_* are set, but {named} does not use SASL")
        tls_files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if not protocol.endswith("SSL") and any(tls_files):
            raise ValueError(f"STREAMRANK_KAFKA_SSL_* are set, but {named} does not use TLS")
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("STREAMRANK_KAFKA_SSL_KEYFILE needs STREAMRANK_KAFKA_SSL_CERTFILE")
        return self

    @model_validator(mode="after")
    def _bn_batch_fits(self) -> Settings:
        if self.bn_max_rows < self.bn_min_rows:
            raise ValueError(f"STREAMRANK_BN_MAX_ROWS={self.bn_max_rows} must be at least "
                             f"STREAMRANK_BN_MIN_ROWS={self.bn_min_rows}")
        return self

    @model_validator(mode="after")
    def _processes_can_share(self) -> Settings:
        if self.processes == 1:
            return self
        if "scoring" not in self.role_names:
            raise ValueError(f"STREAMRANK_PROCESSES={self.processes} adds scoring processes, "
                             "but STREAMRANK_ROLES has no scoring role")
        if self.redis_url is None:
            raise ValueError(f"STREAMRANK_PROCESSES={self.processes} needs a feature store "
                             "the processes share (STREAMRANK_REDIS_URL): the in-memory one "
                             "lives in a single process")
        if not 0 < self.web_port <= 65535 - self.processes:
            raise ValueError(f"STREAMRANK_PROCESSES={self.processes} needs a fixed "
                             f"STREAMRANK_WEB_PORT with the {self.processes} ports after it "
                             "free (one per process)")
        return self

    @field_serializer("redis_url")
    def _redis_url_without_password(self, url: str | None) -> str | None:
        return redact_url(url) if url else url

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """``SecretStr`` settings mask themselves; a secret inside a plain string (the Redis
        URL's password) is masked here."""
        redact = Redactor(self.secrets())
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) else value

    @field_validator("model_dir")
    @classmethod
    def _model_dir_absolute(cls, model_dir: Path) -> Path:
        """Resolved once, so a later chdir cannot move it and child workers get the same."""
        return model_dir.resolve()

    @field_validator("model_signing_key")
    @classmethod
    def _key_long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return key

    @property
    def signing_key(self) -> bytes | None:
        key = self.model_signing_key
        return None if key is None else key.get_secret_value().encode()

    @field_validator("drift_detectors")
    @classmethod
    def _detectors_known(cls, chosen: dict[str, str]) -> dict[str, str]:
        unknown = set(chosen.values()) - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown detectors {sorted(unknown)}; "
                             f"detectors are {list(DETECTORS)}")
        return chosen

    @field_validator("drift_params")
    @classmethod
    def _params_name_detectors(cls, params: dict[str, dict[str, float]]
                               ) -> dict[str, dict[str, float]]:
        unknown = set(params) - set(DETECTORS)
        if unknown:
            raise ValueError(f"unknown detectors {sorted(unknown)}; "
                             f"detectors are {list(DETECTORS)}")
        return params

    @field_validator("value_weights")
    @classmethod
    def _weights_name_tasks(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = set(weights) - set(TASK_NAMES)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; tasks are {list(TASK_NAMES)}")
        return weights

    def as_env(self) -> dict[str, str]:
        """These settings as ``STREAMRANK_*`` variables, to start a child process with them:
        the real values, secrets included (``model_dump`` masks them)."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                text = value.get_secret_value()
            else:
                text = (orjson.dumps(value).decode() if isinstance(value, dict | list)
                        else str(value))
            env[f"STREAMRANK_{name.upper()}"] = text
        return env

    def secrets(self) -> list[str]:
        """Every configured secret value, for :func:`stream.redaction.mask_secrets`: each
        ``SecretStr`` setting (whatever its name) and the Redis URL's password."""
        values = [value.get_secret_value() for name in type(self).model_fields
                  if isinstance(value := getattr(self, name), SecretStr)]
        return values + (url_secrets(self.redis_url) if self.redis_url else [])

    def topic(self, suffix: str) -> str:
        return topic_name(self.topic_prefix, suffix)

    def group(self, name: GroupName) -> str:
        """The consumer group of ``name``: its ``*_group`` setting where there is one, or
        ``<topic_prefix>-<name>``.
        Named after the prefix, so that two deployments (or two tests) on one cluster with
        different prefixes never share a group: a member of one would stall the other's
        rebalances, and could be handed partitions of topics it does not read."""
        explicit: str | None = getattr(self, f"{name.replace('-', '_')}_group", None)
        return explicit or f"{self.topic_prefix}-{name}"

    @cached_property
    def limits(self) -> Limits:
        return Limits(
            embedding_dim=self.embedding_dim,
            max_candidates=self.max_candidates,
            max_ads=self.max_ads,
            max_ad_slots=self.max_ad_slots,
            max_future_skew_s=self.max_future_skew_s,
        )
