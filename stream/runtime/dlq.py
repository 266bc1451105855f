"""Dead-letter records: the original bytes, why they were refused, and where they came from."""

from __future__ import annotations

import base64
import time

from aiokafka.structs import ConsumerRecord

from schemas import DeadLetter, Rejection, encode


def encoded_dead_letter(record: ConsumerRecord[bytes, bytes], rejection: Rejection) -> bytes:
    return encode(DeadLetter(
        ts=time.time(),
        reason=rejection.reason,
        detail=rejection.detail,
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        original_b64=base64.b64encode(record.value or b"").decode("ascii"),
    ))
