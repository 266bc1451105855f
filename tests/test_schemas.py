"""Wire contracts: one clear, typed reason for every kind of bad message."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from schemas import (
    REASONS,
    TOPIC_RECORDS,
    DriftSubscription,
    Event,
    ItemUpsert,
    Limits,
    RankingRequest,
    Record,
    Rejection,
    decode,
    encode,
)
from schemas.codec import DECODE_REASONS
from schemas.examples import EXAMPLES
from schemas.export import EXPORTED, export_schemas

EVENT = EXAMPLES["events"]
ITEM = EXAMPLES["items"]
REQUEST = EXAMPLES["requests"]


def reason_of(data: bytes, record_type: type[Record], limits: Limits | None = None) -> str:
    with pytest.raises(Rejection) as caught:
        decode(data, record_type, limits)
    assert caught.value.detail, "every rejection explains itself"
    return caught.value.reason


def dumps(payload: dict[str, Any], **changes: Any) -> bytes:
    return orjson.dumps({**payload, **changes})


@pytest.mark.parametrize("topic", sorted(EXAMPLES))
def test_every_topic_example_decodes_and_round_trips(topic: str) -> None:
    record = decode(orjson.dumps(EXAMPLES[topic]), TOPIC_RECORDS[topic])
    assert decode(encode(record), TOPIC_RECORDS[topic]) == record
    assert record.schema_version == 1


BAD_MESSAGES: list[tuple[str, bytes, type[Record], str]] = [
    ("garbage", b"\x00\xffnot json", Event, "not_json"),
    ("truncated", b'{"event_id": "e1", ', Event, "not_json"),
    ("array", b"[1, 2]", Event, "wrong_type"),
    ("nan literal", dumps(EVENT).replace(b'"position":3', b'"position":NaN'), Event, "non_finite"),
    ("infinity", dumps(ITEM).replace(b'"bid":0.8', b'"bid":Infinity'), ItemUpsert, "non_finite"),
    ("overflow", dumps(ITEM).replace(b'"bid":0.8', b'"bid":1e999'), ItemUpsert, "non_finite"),
    ("missing", orjson.dumps({k: v for k, v in EVENT.items() if k != "user_id"}), Event,
     "missing_field"),
    ("unknown field", dumps(EVENT, colour="red"), Event, "unknown_field"),
    ("wrong type", dumps(EVENT, user_id=7), Event, "wrong_type"),
    ("string number", dumps(EVENT, ts=str(EVENT["ts"])), Event, "wrong_type"),
    ("short embedding", dumps(ITEM, embedding=[0.1] * 31), ItemUpsert, "embedding_length"),
    ("negative ts", dumps(EVENT, ts=-5.0), Event, "absurd_timestamp"),
    ("milliseconds ts", dumps(EVENT, ts=time.time() * 1000), Event, "absurd_timestamp"),
    ("far future ts", dumps(EVENT, ts=time.time() + 30 * 86_400), Event, "absurd_timestamp"),
    ("too many candidates", dumps(REQUEST, candidates=[f"i{i}" for i in range(1001)]),
     RankingRequest, "list_too_long"),
    ("too many ads", dumps(REQUEST, ad_candidates=[f"a{i}" for i in range(51)]),
     RankingRequest, "list_too_long"),
    ("too much metadata", dumps(ITEM, metadata={f"k{i}": i for i in range(33)}), ItemUpsert,
     "list_too_long"),
    ("unknown event type", dumps(EVENT, type="poke"), Event, "unknown_event_type"),
    ("future version", dumps(EVENT, schema_version=2), Event, "unsupported_version"),
    ("control chars in id", dumps(EVENT, user_id="u\x00x"), Event, "invalid_value"),
    ("negative position", dumps(EVENT, position=-1), Event, "invalid_value"),
]


@pytest.mark.parametrize(("name", "data", "record_type", "reason"), BAD_MESSAGES,
                         ids=[m[0] for m in BAD_MESSAGES])
def test_bad_message_is_rejected_with_its_reason(
        name: str, data: bytes, record_type: type[Record], reason: str) -> None:
    assert reason_of(data, record_type) == reason


def test_every_decode_reason_is_exercised() -> None:
    assert {m[3] for m in BAD_MESSAGES} == set(DECODE_REASONS)


def test_readme_documents_every_reason() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme.split("### Rejections", 1)[1].split("\n## ", 1)[0]
    assert {reason for reason in REASONS if f"`{reason}`" not in table} == set()


def test_limits_come_from_configuration() -> None:
    wide = Limits(embedding_dim=8, max_candidates=2)
    decode(dumps(ITEM, embedding=[0.5] * 8), ItemUpsert, wide)
    assert reason_of(dumps(ITEM), ItemUpsert, wide) == "embedding_length"
    assert reason_of(dumps(REQUEST), RankingRequest, wide) == "list_too_long"


def test_rejection_names_the_field() -> None:
    with pytest.raises(Rejection) as caught:
        decode(dumps(EVENT, user_id=7), Event)
    assert caught.value.detail.startswith("user_id:")


def test_subscription_sinks_are_validated() -> None:
    DriftSubscription.model_validate(EXAMPLES["subscriptions"])
    bad = {**EXAMPLES["subscriptions"], "sink": {"kind": "webhook", "url": "ftp://x"}}
    assert reason_of(orjson.dumps(bad), DriftSubscription) == "invalid_value"


def test_exported_json_schemas_accept_the_examples(tmp_path: Path) -> None:
    written = export_schemas(tmp_path)
    assert len(written) == len(EXPORTED)
    by_name = {path.name: orjson.loads(path.read_bytes()) for path in written}
    for topic, example in EXAMPLES.items():
        schema = by_name[f"{TOPIC_RECORDS[topic].__name__}.v1.json"]
        jsonschema.validate(example, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**example, "unexpected": 1}, schema)
