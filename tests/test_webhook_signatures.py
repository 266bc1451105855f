"""The webhook signature: what a receiver computes, and what it refuses."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from pathlib import Path
from typing import Any

from stream.drift.signatures import sign, verify_signature

SECRET = "whsec-0123456789abcdef"
BODY = b'{"alert_id":"calibration.click-adwin-41230","signal":"calibration.click"}'
SENT_AT = 1_790_000_000


def test_the_signature_is_the_hmac_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1790000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, SENT_AT, BODY) == f"sha256={expected}"


def test_a_fresh_authentic_delivery_verifies() -> None:
    signature = sign(SECRET, SENT_AT, BODY)
    assert verify_signature(SECRET, str(SENT_AT), BODY, signature, now=SENT_AT + 5)
    assert verify_signature(SECRET, str(SENT_AT), BODY, signature, now=SENT_AT - 5)  # skew


def test_a_tampered_delivery_is_refused() -> None:
    signature = sign(SECRET, SENT_AT, BODY)
    now = SENT_AT + 1
    assert not verify_signature(SECRET, str(SENT_AT), BODY.replace(b"click", b"share"),
                                signature, now)
    assert not verify_signature(SECRET, str(SENT_AT + 1), BODY, signature, now)  # new stamp
    assert not verify_signature("another-secret-0123", str(SENT_AT), BODY, signature, now)
    assert not verify_signature(SECRET, str(SENT_AT), BODY, signature[:-1] + "0", now)


def test_a_replayed_delivery_is_refused_once_it_is_old() -> None:
    signature = sign(SECRET, SENT_AT, BODY)
    assert verify_signature(SECRET, str(SENT_AT), BODY, signature, now=SENT_AT + 300)
    assert not verify_signature(SECRET, str(SENT_AT), BODY, signature, now=SENT_AT + 301)
    assert not verify_signature(SECRET, str(SENT_AT), BODY, signature, now=SENT_AT + 60,
                                tolerance_s=30)


def test_malformed_headers_are_refused_not_raised() -> None:
    signature = sign(SECRET, SENT_AT, BODY)
    for timestamp in ("", "-1790000000", "1.79e9", "\uff11\uff17\uff19", "abc"):
        assert not verify_signature(SECRET, timestamp, BODY, signature, now=SENT_AT)
    for bad in ("", "sha256=", "sha256=ünïcode", "md5=00"):
        assert not verify_signature(SECRET, str(SENT_AT), BODY, bad, now=SENT_AT)


def test_the_readme_verification_accepts_a_delivery_and_refuses_a_forgery() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    match = re.search(r"```python verify-signature\n(.*?)\n```", readme, re.S)
    assert match, "README shows no signature check"
    assert len(match.group(1).splitlines()) == 5
    namespace: dict[str, Any] = {}
    exec(match.group(1), namespace)  # the README's own code
    verify = namespace["verify"]
    now = int(time.time())
    headers = {"X-Streamrank-Timestamp": str(now),
               "X-Streamrank-Signature": sign(SECRET, now, BODY)}
    assert verify(SECRET.encode(), headers, BODY)
    assert not verify(SECRET.encode(), headers, BODY + b" ")
    stale = {"X-Streamrank-Timestamp": str(now - 600),
             "X-Streamrank-Signature": sign(SECRET, now - 600, BODY)}
    assert not verify(SECRET.encode(), stale, BODY)
