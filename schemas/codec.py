"""orjson codec with validation that turns any bad message into one typed :class:`Rejection`."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError

from schemas.limits import Limits
from schemas.records import Record

R = TypeVar("R", bound=Record)

# Pydantic error types mapped to the reason codes that land in the DLQ and in metrics.
_REASONS = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "finite_number": "non_finite",
    "embedding_length": "embedding_length",
    "absurd_timestamp": "absurd_timestamp",
    "list_too_long": "list_too_long",
    "too_long": "list_too_long",
}
_VALUE_ERRORS = {"greater_than_equal", "less_than_equal", "string_too_short", "string_too_long",
                 "string_pattern_mismatch", "union_tag_invalid", "value_error"}

# What decoding a message can refuse it for ...
DECODE_REASONS: tuple[str, ...] = (
    "not_json", "wrong_type", "missing_field", "unknown_field", "non_finite",
    "embedding_length", "absurd_timestamp", "list_too_long", "unknown_event_type",
    "unsupported_version", "invalid_value",
)
# ... and what a role can refuse a well-formed one for: a request with nothing to rank, one
# nobody waits for any more, a record whose handler kept failing, a version on
# model-updates that does not load or that the worker may not trust (outside
# STREAMRANK_MODEL_DIR, unsigned or wrongly signed), a drift alert that could not be
# delivered to one of its subscriptions, and an ad outcome whose reward cannot be (no labels,
# an absurd revenue, earnings on a slot left empty).
ROLE_REASONS: tuple[str, ...] = ("expired", "handler_error", "invalid_state", "untrusted_state",
                                 "delivery_failed", "invalid_outcome")
REASONS: tuple[str, ...] = DECODE_REASONS + ROLE_REASONS


class Rejection(ValueError):
    """Why a message was refused: a stable ``reason`` code plus a human ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(record: Record) -> bytes:
    return orjson.dumps(record.model_dump(mode="json", exclude_none=True))


def decode(data: bytes | str, record_type: type[R], limits: Limits | None = None) -> R:
    """Parse and validate one message, raising :class:`Rejection` on any defect."""
    try:
        payload = orjson.loads(data)  # parse_json, inlined: this runs for every message
    except orjson.JSONDecodeError as exc:
        raise _explain_bad_json(data, exc) from None
    return validate(payload, record_type, limits)


def parse_json(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _explain_bad_json(data, exc) from None


def validate(payload: Any, record_type: type[R], limits: Limits | None = None) -> R:
    if not isinstance(payload, dict):
        raise Rejection("wrong_type", f"expected a JSON object, got {type(payload).__name__}")
    try:
        return record_type.model_validate(payload, context=limits or Limits())
    except ValidationError as exc:
        raise _first_reason(exc) from None


def _explain_bad_json(data: bytes | str, exc: orjson.JSONDecodeError) -> Rejection:
    """orjson refuses NaN/Infinity/overflow outright; tell those apart from plain garbage."""
    try:
        json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite as non_finite:
        return Rejection("non_finite", f"{non_finite.args[0]} is not a finite number")
    except (ValueError, TypeError):
        pass
    return Rejection("not_json", f"not valid JSON: {exc}")


class _NonFinite(Exception):
    pass


def _refuse_constant(token: str) -> float:
    raise _NonFinite(token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NonFinite(token)
    return value


def _first_reason(exc: ValidationError) -> Rejection:
    error = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in error["loc"]) or "<record>"
    kind = error["type"]
    if kind == "literal_error":
        if error["loc"] == ("type",):
            reason = "unknown_event_type"
        elif error["loc"] == ("schema_version",):
            reason = "unsupported_version"
        else:
            reason = "invalid_value"
    elif kind in _REASONS:
        reason = _REASONS[kind]
    elif kind in _VALUE_ERRORS:
        reason = "invalid_value"
    else:
        reason = "wrong_type"
    return Rejection(reason, f"{loc}: {error['msg']}")
