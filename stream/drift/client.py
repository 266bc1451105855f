"""A client of a worker's ``/subscriptions`` API: what ``streamrank alerts`` talks to.

Synchronous and standard library only: the CLI makes one request and exits. Every failure
is a :class:`SubscriptionsApiError` whose message a person can act on: the worker's own
``{"error", "detail"}`` refusal, or why no worker answered.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from stream.errors import StreamrankError

TIMEOUT_S = 30.0  # a write waits for the broker's acknowledgement and the read-back


class SubscriptionsApiError(StreamrankError):
    """The worker refused the request, or could not be reached."""


class SubscriptionsApi:
    def __init__(self, url: str, token: str | None) -> None:
        self._url = url.rstrip("/")
        self._token = token

    def subscribe(self, body: bytes) -> dict[str, Any]:
        return self._call("POST", "/subscriptions", body)

    def list(self) -> dict[str, Any]:
        return self._call("GET", "/subscriptions")

    def unsubscribe(self, subscription_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/subscriptions/{quote(subscription_id, safe='')}")

    def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self._url + path, data=body, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return _json(response.read())
        except urllib.error.HTTPError as refused:
            answer = _json(refused.read())
            reason = answer.get("error", refused.reason)
            detail = answer.get("detail", "")
            raise SubscriptionsApiError(f"{method} {path} refused ({refused.code} {reason})"
                                        + (f": {detail}" if detail else "")) from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise SubscriptionsApiError(f"no streamrank worker answers at {self._url} ({why}); "
                                        "start one, or give its address with --url") from None


def _json(data: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(data)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}
