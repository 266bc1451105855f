"""What a consume loop does with an exception: retry it, dead-letter the record, or stop.

- **transient**: the broker or the store is unreachable, slow, failing over or loading. The
  same call can succeed later, so the loop retries with capped exponential backoff and
  ``/health`` says why it is not ready meanwhile.
- **fatal**: the store refused the command itself (a script error after a layout change,
  WRONGTYPE, OOM). Every retry would fail the same way while the worker looked alive, so the
  worker stops with a non-zero exit and one clear log line.
- **poison**: anything else came from the handler's own work on one record (an onnxruntime
  error, a value it cannot use). That record goes to the DLQ as ``handler_error`` once it has
  failed ``STREAMRANK_HANDLER_ATTEMPTS`` times, and the loop goes on.
"""

from __future__ import annotations

import asyncio
import enum

from aiokafka.errors import KafkaError
from redis import exceptions as redis_errors

_TRANSIENT_RESPONSES = (redis_errors.ReadOnlyError, redis_errors.TryAgainError,
                        redis_errors.ClusterDownError, redis_errors.MasterDownError,
                        redis_errors.BusyLoadingError)


class Failure(enum.Enum):
    TRANSIENT = "transient"
    FATAL = "fatal"
    POISON = "poison"


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, _TRANSIENT_RESPONSES):
        return Failure.TRANSIENT
    if isinstance(exc, redis_errors.ResponseError | redis_errors.DataError | MemoryError):
        return Failure.FATAL
    if isinstance(exc, KafkaError | redis_errors.RedisError | OSError | asyncio.TimeoutError):
        return Failure.TRANSIENT
    return Failure.POISON


class LoopFailed(RuntimeError):
    """A consume loop met a failure it cannot survive; the worker must stop."""
