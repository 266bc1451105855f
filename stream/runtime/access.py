"""Who may call the worker's web views.

``/health``, ``/stats`` and ``/metrics`` are read-only aggregates for probes, dashboards and
Prometheus, and stay open. ``POST /rank`` and every write endpoint take ``Authorization: Bearer
<STREAMRANK_API_TOKEN>`` when a token is set; a worker whose web port is reachable from other
machines must have one.
"""

from __future__ import annotations

import hmac
import ipaddress

from pydantic import SecretStr

from stream.errors import UnsafeConfiguration
from stream.settings import Settings


def is_loopback(host: str) -> bool:
    """Only this machine can connect: ``localhost``, 127.0.0.0/8 or ::1 (not ``0.0.0.0``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to start a worker that would answer ``POST /rank`` from anywhere, for anyone."""
    if settings.api_token is None and not is_loopback(settings.web_host):
        raise UnsafeConfiguration(
            f"STREAMRANK_WEB_HOST={settings.web_host} makes POST /rank reachable from other "
            "machines: set STREAMRANK_API_TOKEN, or bind to 127.0.0.1")


def authorized(header: str | None, token: SecretStr | None) -> bool:
    """Whether an ``Authorization`` header carries the token (always, when none is set).

    ``hmac.compare_digest`` takes as long for a near miss as for a wild guess, so response
    times do not reveal the token a character at a time."""
    if token is None:
        return True
    scheme, _, credentials = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode("utf-8", "surrogateescape"),
        token.get_secret_value().encode())
