"""One signed POST of one alert to one webhook.

The body is the alert record as it is on the drift-alerts topic; the headers carry its
signature (:mod:`stream.drift.signatures`) and its ``alert_id``, by which a receiver drops a
repeat (delivery is at least once). Each attempt checks the URL again
(:func:`stream.drift.egress.check_webhook`) and connects only to the addresses that check
allowed: aiohttp takes a resolver, so ours answers with those addresses instead of asking DNS
a second time. TLS still verifies the certificate against the URL's host name. Redirects are
not followed (a 3xx could point anywhere), and proxies from the environment are not used.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from stream.drift.egress import IPAddress, Unresolvable, UnsafeWebhook, check_webhook
from stream.drift.signatures import ALERT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign

# Worth another attempt: the receiver is overloaded, timed out, or failed on its side.
RETRYABLE_STATUS = frozenset({408, 429})


class DeliveryError(Exception):
    """An attempt failed; ``final`` when trying again cannot help (a 4xx, an unsafe URL)."""

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


class _Pinned(AbstractResolver):
    """Answers every lookup with the addresses the egress check allowed."""

    def __init__(self, addresses: Sequence[IPAddress]) -> None:
        self._addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=str(address), port=port,
                              family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)
                for address in self._addresses]

    async def close(self) -> None:
        pass


async def post_alert(url: str, secret: str, alert_id: str, body: bytes, *,
                     allow: Sequence[str], timeout_s: float) -> None:
    """One attempt: a 2xx answer, or :class:`DeliveryError`."""
    try:
        target = await check_webhook(url, allow)
    except Unresolvable as exc:
        raise DeliveryError(str(exc), final=False) from None
    except UnsafeWebhook as exc:
        raise DeliveryError(f"unsafe webhook: {exc}", final=True) from None
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "streamrank-alerts",
               TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body),
               ALERT_ID_HEADER: alert_id}
    connector = aiohttp.TCPConnector(resolver=_Pinned(target.addresses), use_dns_cache=False,
                                     force_close=True)
    try:
        async with (aiohttp.ClientSession(
                        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)
                    ) as session,
                    session.post(url, data=body, headers=headers,
                                 allow_redirects=False) as response):
            status = response.status
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout_s:g} s", final=False) from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}", final=False) from None
    if not 200 <= status < 300:
        retryable = status >= 500 or status in RETRYABLE_STATUS
        raise DeliveryError(f"HTTP {status}", final=not retryable)
