"""The signature on every webhook delivery, and how a receiver checks it.

A delivery carries ``X-Streamrank-Timestamp: <unix seconds>`` and ``X-Streamrank-Signature:
sha256=<hex>``, the HMAC-SHA256 of ``"<timestamp>.<body>"`` under the subscription's secret
(the scheme Stripe and Slack use). Signing the timestamp with the body lets a receiver refuse
a captured delivery replayed later: it checks the signature, then that the timestamp is
recent. :func:`verify_signature` is written to be copied into a receiver: standard library
only.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Streamrank-Timestamp"
SIGNATURE_HEADER = "X-Streamrank-Signature"
ALERT_ID_HEADER = "X-Streamrank-Alert-Id"
DEFAULT_TOLERANCE_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Streamrank-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, now: float,
                     tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """Whether a delivery is authentic and fresh: ``timestamp`` and ``signature`` are its
    headers as received, ``body`` its raw bytes, ``now`` the receiver's clock (Unix seconds).
    ``compare_digest`` takes as long for a near miss as for a wild guess."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    expected = f"sha256={mac.hexdigest()}".encode()
    authentic = hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape"))
    return authentic and abs(now - int(timestamp)) <= tolerance_s
