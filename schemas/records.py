"""Versioned wire records: everything that crosses Kafka or HTTP is one of these.

Records are strict (no coercion, no unknown fields, no NaN/Inf) so that bad input is
rejected at the edge instead of leaking into features, statistics or the bandit.
Checks that depend on deployment limits (embedding length, list sizes, clock skew) read
them from the validation context, see :mod:`schemas.limits`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from schemas.limits import Limits

SCHEMA_VERSION: Literal[1] = 1

EngagementType = Literal["impression", "click", "like", "share", "hide", "dwell"]
AdEventType = Literal["ad_impression", "ad_click", "conversion"]
EventType = Literal[
    "impression", "click", "like", "share", "hide", "dwell",
    "ad_impression", "ad_click", "conversion",
]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]

# Printable, bounded ids: control characters never reach keys, logs or the store's encoding.
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
NonNegative = Annotated[float, Field(ge=0)]
# Finite is not enough: 1e300 is finite in JSON but overflows the float32 feature store.
Amount = Annotated[float, Field(ge=0, le=1e6)]
EmbeddingValue = Annotated[float, Field(ge=-1e3, le=1e3)]
Probability = Annotated[float, Field(ge=0, le=1)]
# Ranking features are logs, rates, similarities and bids: a bound keeps a hostile row from
# overflowing the statistics that read it (drift monitors, training).
FeatureValue = Annotated[float, Field(ge=-1e6, le=1e6)]
Scalar = str | int | float | bool


def _limits(info: ValidationInfo) -> Limits:
    context = info.context
    return context if isinstance(context, Limits) else Limits()


def _check_ts(value: float, info: ValidationInfo) -> float:
    limits = _limits(info)
    if value < limits.min_ts:
        raise PydanticCustomError(
            "absurd_timestamp",
            "{value} is before {min_ts} (timestamps are Unix seconds)",
            {"value": value, "min_ts": limits.min_ts},
        )
    latest = limits.now() + limits.max_future_skew_s
    if value > latest:
        hint = " (is it in milliseconds? timestamps are Unix seconds)" if value > 1e11 else ""
        raise PydanticCustomError(
            "absurd_timestamp",
            "{value} is more than {skew}s in the future{hint}",
            {"value": value, "skew": limits.max_future_skew_s, "hint": hint},
        )
    return value


def _check_length(value: list[Any], limit: int, what: str) -> list[Any]:
    if len(value) > limit:
        raise PydanticCustomError(
            "list_too_long",
            "{count} {what} exceed the limit of {limit}",
            {"count": len(value), "what": what, "limit": limit},
        )
    return value


class Record(BaseModel):
    """Base of every wire record: strict, closed, finite, versioned."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True
    )

    schema_version: Literal[1] = SCHEMA_VERSION


class TimedRecord(Record):
    ts: float

    @field_validator("ts")
    @classmethod
    def _ts_is_plausible(cls, value: float, info: ValidationInfo) -> float:
        return _check_ts(value, info)


class ItemUpsert(TimedRecord):
    """An organic item or an ad entering (or changing in) the catalogue."""

    item_id: Id
    kind: Literal["item", "ad"] = "item"
    embedding: list[EmbeddingValue]
    created_ts: float | None = None
    bid: Amount | None = None
    metadata: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("embedding")
    @classmethod
    def _embedding_has_model_dim(cls, value: list[float], info: ValidationInfo) -> list[float]:
        dim = _limits(info).embedding_dim
        if len(value) != dim:
            raise PydanticCustomError(
                "embedding_length",
                "embedding has {got} values, expected {dim}",
                {"got": len(value), "dim": dim},
            )
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_within_limit(cls, value: dict[str, Scalar], info: ValidationInfo
                               ) -> dict[str, Scalar]:
        limit = _limits(info).max_metadata_entries
        if len(value) > limit:
            raise PydanticCustomError(
                "list_too_long", "{count} metadata entries exceed the limit of {limit}",
                {"count": len(value), "limit": limit})
        return value

    @field_validator("created_ts")
    @classmethod
    def _created_is_plausible(cls, value: float | None, info: ValidationInfo) -> float | None:
        return None if value is None else _check_ts(value, info)


class Event(TimedRecord):
    """One interaction or ad event. ``event_id`` makes redelivery idempotent."""

    event_id: Id
    user_id: Id
    item_id: Id
    type: EventType
    request_id: Id | None = None
    position: Annotated[int, Field(ge=0, le=10_000)] | None = None
    dwell_s: Annotated[float, Field(ge=0, le=86_400)] | None = None
    revenue: Amount | None = None


class Context(Record):
    """Request context the ranker conditions on."""

    device: Literal["mobile", "desktop", "tablet"] = "mobile"
    surface: Literal["feed", "search", "related"] = "feed"


class RankingRequest(TimedRecord):
    request_id: Id
    user_id: Id
    context: Context = Field(default_factory=Context)
    candidates: list[Id] = Field(default_factory=list)
    ad_candidates: list[Id] = Field(default_factory=list)
    ad_slots: list[Annotated[int, Field(ge=0, le=10_000)]] = Field(default_factory=list)
    n: Annotated[int, Field(ge=1, le=10_000)] = 20
    # Candidates to retrieve from the user's interests (or trending items), after the ones
    # given; a request with no candidates gets STREAMRANK_RETRIEVAL_K when this is unset.
    retrieve: Annotated[int, Field(ge=1, le=10_000)] | None = None

    @model_validator(mode="after")
    def _retrieval_within_limit(self, info: ValidationInfo) -> RankingRequest:
        if self.retrieve is not None:
            _check_length([None] * (len(self.candidates) + self.retrieve),
                          _limits(info).max_candidates, "candidates with those retrieved")
        return self

    @field_validator("candidates")
    @classmethod
    def _candidates_within_limit(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return _check_length(value, _limits(info).max_candidates, "candidates")

    @field_validator("ad_candidates")
    @classmethod
    def _ads_within_limit(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return _check_length(value, _limits(info).max_ads, "ad candidates")

    @field_validator("ad_slots")
    @classmethod
    def _slots_within_limit(cls, value: list[int], info: ValidationInfo) -> list[int]:
        return _check_length(value, _limits(info).max_ad_slots, "ad slots")


# Where a ranked item came from: the request's own candidates, one of the user's interests
# (by its rank, 0 the most important), or the trending items.
Source = Annotated[str, Field(pattern=r"^(request|trending|interest:[0-9]{1,2})$")]


class RankedItem(Record):
    item_id: Id
    value: float
    probs: dict[str, Probability]
    source: Source | None = None  # only on a request with retrieval


class AdDecision(Record):
    """What one allowed slot of a ranking got: an ad or none (``ad_id`` null), drawn with
    ``propensity`` by the policy version named, given the decisions of the slots above."""

    decision_id: Id
    slot: Annotated[int, Field(ge=0, le=10_000)]  # a feed position, as in RankingRequest
    ad_id: Id | None = None  # none: the slot stays organic
    propensity: Annotated[float, Field(gt=0, le=1)]  # never 0: every logged choice was drawn
    policy: str  # the policy family, e.g. "linucb"
    policy_version: Id  # e.g. "bandit-12": the parameters and knobs the draw came from


class RankingResult(TimedRecord):
    request_id: Id
    user_id: Id
    items: list[RankedItem]
    ads: list[AdDecision] = Field(default_factory=list)
    model_version: str
    stats_version: str
    latency_ms: NonNegative


class AdSlotLog(Record):
    """The context an ad-slot decision saw: the chosen action's row (what the learner learns
    from) and, on the sampled requests, every feasible ad's row with the whole distribution
    (what off-policy evaluation of another setting needs)."""

    decision_id: Id
    slot: Annotated[int, Field(ge=0, le=10_000)]
    context: list[FeatureValue]  # the chosen action's row, columns ``ad_feature_names``
    actions: list[Id | None] | None = None  # the feasible actions, "no ad" (null) first
    probabilities: list[Probability] | None = None  # P of each of ``actions``
    ad_contexts: list[list[FeatureValue]] | None = None  # a row per ad of ``actions[1:]``

    @model_validator(mode="after")
    def _one_row_per_ad(self) -> AdSlotLog:
        parts = (self.actions, self.probabilities, self.ad_contexts)
        if any(part is None for part in parts) and not all(part is None for part in parts):
            raise ValueError("actions, probabilities and ad_contexts come together")
        if self.actions is not None and self.probabilities is not None \
                and self.ad_contexts is not None:
            if len(self.probabilities) != len(self.actions) \
                    or len(self.ad_contexts) != len(self.actions) - 1:
                raise ValueError("one probability per action and one row per ad action")
            if any(len(row) != len(self.context) for row in self.ad_contexts):
                raise ValueError("every ad row needs as many columns as the context")
        return self


class FeatureLog(TimedRecord):
    """The exact feature rows a ranking scored its shown items from, in rank order: training
    reads these, so training and serving features cannot disagree. ``ts`` is the ranking's.
    A ranking with ad decisions is always logged, for their contexts; its item rows only when
    the request is in the feature-log sample."""

    request_id: Id
    user_id: Id
    model_version: str
    feature_names: list[str]  # the columns of ``rows``
    item_ids: list[Id]
    rows: list[list[FeatureValue]]
    ad_feature_names: list[str] = Field(default_factory=list)  # the columns of ad contexts
    ads: list[AdSlotLog] = Field(default_factory=list)

    @field_validator("rows")
    @classmethod
    def _one_row_per_item(cls, rows: list[list[float]], info: ValidationInfo
                          ) -> list[list[float]]:
        names, items = info.data.get("feature_names"), info.data.get("item_ids")
        if names is not None and any(len(row) != len(names) for row in rows):
            raise ValueError("every row needs one value per feature name")
        if items is not None and len(rows) != len(items):
            raise ValueError("rows and item_ids differ in length")
        return rows


class ItemLabels(Record):
    """What the user did with one shown item within the join window."""

    click: bool = False
    like: bool = False
    share: bool = False
    hide: bool = False
    dwell_s: NonNegative = 0.0


class AdLabels(Record):
    """What one ad slot earned, and what the user did after it: the bandit's reward."""

    impression: bool = False
    click: bool = False
    revenue: NonNegative = 0.0  # conversions: a sum of Amounts, so beyond one Amount's cap
    # Organic clicks, likes and shares below the ad; for a slot left empty, from the slot down.
    engagements_after: Annotated[int, Field(ge=0)] = 0
    session_ended: bool = True  # no organic event on those positions


class Outcome(TimedRecord):
    """One shown item or ad slot of a ranking, joined with what the user did in the window.

    ``ts`` is the ranking's; the record goes out once, when the window closes at
    ``ts + window_s``. ``seq`` orders a ranking's records (items by position, then slots).
    """

    request_id: Id
    user_id: Id
    seq: Annotated[int, Field(ge=0)]
    kind: Literal["item", "ad"]
    item_id: Id | None = None  # the ad of a slot left empty is None
    position: Annotated[int, Field(ge=0, le=10_000)]  # rank, or the slot
    model_version: str
    stats_version: str
    window_s: Annotated[float, Field(gt=0)]
    probs: dict[str, Probability] = Field(default_factory=dict)
    value: float | None = None
    propensity: Annotated[float, Field(ge=0, le=1)] | None = None
    policy: str | None = None
    policy_version: Id | None = None
    decision_id: Id | None = None
    item_labels: ItemLabels | None = None
    ad_labels: AdLabels | None = None
    # Items of a request in the feature log: the row it was scored from, and its columns;
    # ad slots: the context of the decision.
    features: list[FeatureValue] | None = None
    feature_names: list[str] | None = None

    @model_validator(mode="after")
    def _a_row_has_its_columns(self) -> Outcome:
        names, row = self.feature_names, self.features
        if (names is None) != (row is None) or (names is not None and row is not None
                                                 and len(names) != len(row)):
            raise ValueError("features and feature_names come together, one value per name")
        return self


Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[str, ...] = Severity.__args__  # type: ignore[attr-defined]  # ascending
Detector = Literal["adwin", "page_hinkley", "kswin"]
DETECTORS: tuple[str, ...] = Detector.__args__  # type: ignore[attr-defined]
# "<family>.<name>", e.g. "calibration.click" or "feature.sim_max".
SignalName = Annotated[str, Field(min_length=3, max_length=128,
                                  pattern=r"^[a-z_]+\.[A-Za-z0-9_.-]+$")]


class WindowStats(Record):
    """A signal's values on one side of a detected change."""

    mean: float
    std: NonNegative
    n: Annotated[int, Field(ge=0)]
    # Calibration signals: the predictions and labels behind the residuals, and their ratio
    # (mean prediction / mean label; None when no label was positive).
    mean_prediction: float | None = None
    mean_label: float | None = None
    calibration_ratio: float | None = None


class DriftAlert(TimedRecord):
    """One detected change of one signal. ``ts`` is the event time of the value that
    completed the detection; ``update`` counts the signal's values up to it."""

    alert_id: Id
    signal: SignalName
    detector: Detector | Literal["bn_guard"]  # bn_guard: the BN role refused a collapse
    severity: Severity
    direction: Literal["up", "down"]
    effect_size: NonNegative
    before: WindowStats
    after: WindowStats
    update: Annotated[int, Field(ge=0)]
    model_version: str
    stats_version: str


class KafkaSink(Record):
    kind: Literal["kafka"] = "kafka"
    topic: Annotated[str, Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")]


class WebhookSink(Record):
    kind: Literal["webhook"] = "webhook"
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]
    # The HMAC key of X-Streamrank-Signature; never returned by the API.
    secret: Annotated[str, Field(min_length=16, max_length=256)]


class DriftSubscription(TimedRecord):
    """Who wants which alerts, and where. ``signals`` are globs (``calibration.*``); an empty
    ``detectors`` list means every detector."""

    subscription_id: Id
    owner: Id
    signals: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["*"], min_length=1, max_length=64)
    detectors: list[Detector] = Field(default_factory=list, max_length=3)
    min_severity: Severity = "warning"
    sink: KafkaSink | WebhookSink = Field(discriminator="kind")


class ModelUpdate(TimedRecord):
    """A new model, BatchNorm-statistics or bandit version, published for hot swap."""

    model: Id
    kind: Literal["model", "bn_stats", "bandit"]
    version: Id
    uri: Annotated[str, Field(min_length=1, max_length=2048)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class DeadLetter(TimedRecord):
    """A rejected message: the original bytes (base64) and why they were refused."""

    reason: str
    detail: str
    source_topic: str
    partition: int
    offset: int
    original_b64: str
