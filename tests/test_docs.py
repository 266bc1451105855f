"""The README is a reference users copy from: its examples and settings must be the real ones."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from schemas import TOPIC_RECORDS, decode
from schemas.examples import EXAMPLES
from stream.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize("topic", sorted(TOPIC_RECORDS))
def test_readme_shows_a_valid_example_for_every_topic(topic: str) -> None:
    match = re.search(r"```json " + re.escape(topic) + r"\n(.*?)\n```", README, re.S)
    assert match, f"README has no example for {topic}"
    shown = orjson.loads(match.group(1))
    assert shown == EXAMPLES[topic]
    decode(match.group(1), TOPIC_RECORDS[topic])


def test_readme_documents_every_setting() -> None:
    documented = set(re.findall(r"`STREAMRANK_([A-Z0-9_]+)`", README))
    assert documented == {name.upper() for name in Settings.model_fields}
