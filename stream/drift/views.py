"""``/subscriptions``: create, list, read and delete drift-alert subscriptions over HTTP.

Every route takes the API token, as ``POST /rank`` does (a listing names every sink). A
``POST`` creates a subscription or replaces the one with its id; its body is a
``DriftSubscription``, whose ``ts`` the server fills in when the client leaves it out. Answers
never carry a webhook's secret (it shows as ``***``). Refusals come as ``{"error": reason,
"detail": ...}``: the codec's reasons for a bad body (400), and ``unsafe_webhook`` (400),
``reserved_topic`` (400), ``body_too_large`` (413), ``not_found`` (404), ``unauthorized``
(401), ``starting`` and ``unavailable`` (503). A refused request changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

import faust
from aiohttp import web
from aiokafka.errors import KafkaError
from faust.web import Request, Response, View

from schemas import TOPIC_RECORDS, DriftSubscription, Rejection
from schemas.codec import parse_json, validate
from stream.drift.egress import UnsafeWebhook, check_webhook
from stream.drift.subscriptions import SubscriptionRegistry
from stream.redaction import MASK
from stream.runtime.access import authorized
from stream.runtime.metrics import WorkerMetrics
from stream.settings import Settings

log = logging.getLogger(__name__)

# A subscription is a few hundred bytes; 64 globs of 128 characters and a long URL fit too.
MAX_BODY_BYTES = 64 * 1024


def shown(subscription: DriftSubscription) -> dict[str, Any]:
    """A subscription as the API answers it: the webhook's secret masked."""
    body = subscription.model_dump(mode="json", exclude_none=True)
    if "secret" in body["sink"]:
        body["sink"]["secret"] = MASK
    return body


class _Refused(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


async def _read_bounded(request: Request) -> bytes:
    """The body, or :class:`_Refused` (413) as soon as it is known to exceed the bound."""
    raw = cast(web.Request, request)
    if (raw.content_length or 0) > MAX_BODY_BYTES:
        raise _Refused(413, "body_too_large", f"a subscription body is at most "
                       f"{MAX_BODY_BYTES} bytes, this one says {raw.content_length}")
    body = bytearray()
    async for chunk in raw.content.iter_any():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(413, "body_too_large",
                           f"a subscription body is at most {MAX_BODY_BYTES} bytes")
    return bytes(body)


def _parse(body: bytes, settings: Settings) -> DriftSubscription:
    """Validate a body like any record (``ts`` defaults to now); :class:`Rejection` if bad."""
    payload = parse_json(body)
    if isinstance(payload, dict) and "ts" not in payload:
        payload["ts"] = time.time()
    return validate(payload, DriftSubscription, settings.limits)


async def _check_sink(subscription: DriftSubscription, settings: Settings) -> None:
    sink = subscription.sink
    if sink.kind == "webhook":
        try:
            await check_webhook(sink.url, settings.webhook_allow)
        except UnsafeWebhook as exc:
            raise _Refused(400, "unsafe_webhook", str(exc)) from None
        return
    ours = {settings.topic(suffix) for suffix in TOPIC_RECORDS}
    if sink.topic in ours or sink.topic.startswith("__"):
        raise _Refused(400, "reserved_topic", f"{sink.topic} is a topic of streamrank or of "
                       "Kafka itself; alerts go to a topic of their own")


def add_subscription_views(app: faust.App, settings: Settings, metrics: WorkerMetrics,
                           registry: Callable[[], SubscriptionRegistry | None]) -> None:
    """Register ``/subscriptions`` and ``/subscriptions/{id}``; ``registry`` gives the
    worker's subscription registry once it started."""

    class _SubscriptionView(View):
        async def _answer(self, request: Request,
                          action: Callable[[SubscriptionRegistry], Any]) -> Response:
            """Authorize, find the registry, run ``action``; turn refusals into answers."""
            if not authorized(request.headers.get("Authorization"), settings.api_token):
                return self._refuse(_Refused(401, "unauthorized", "/subscriptions needs the "
                                    "header 'Authorization: Bearer <STREAMRANK_API_TOKEN>'"),
                                    {"WWW-Authenticate": 'Bearer realm="streamrank"'})
            subscriptions = registry()
            if subscriptions is None or not subscriptions.synced():
                return self._refuse(_Refused(503, "starting", "subscriptions not read yet"))
            try:
                status, answer = await action(subscriptions)
            except _Refused as refused:
                return self._refuse(refused)
            except Rejection as rejection:
                metrics.rejected.labels("http", rejection.reason).inc()
                return self.json({"error": rejection.reason, "detail": rejection.detail},
                                 status=400)
            except (KafkaError, TimeoutError) as exc:
                log.warning("subscription write failed: %s: %s", type(exc).__name__, exc)
                return self._refuse(_Refused(503, "unavailable", "the subscriptions topic "
                                             f"cannot be written now: {type(exc).__name__}"))
            return self.json(answer, status=status)

        def _refuse(self, refused: _Refused, headers: Mapping[str, str] | None = None
                    ) -> Response:
            if refused.reason in ("body_too_large", "unsafe_webhook", "reserved_topic"):
                metrics.rejected.labels("http", refused.reason).inc()
            else:
                metrics.http_refused.labels(refused.reason).inc()
            return self.json({"error": refused.reason, "detail": refused.detail},
                             status=refused.status, headers=dict(headers or {}))

    @app.page("/subscriptions")
    class Subscriptions(_SubscriptionView):
        async def get(self, request: Request) -> Response:
            async def listing(subscriptions: SubscriptionRegistry) -> tuple[int, Any]:
                every = sorted(subscriptions.all(), key=lambda s: s.subscription_id)
                return 200, {"subscriptions": [shown(s) for s in every]}
            return await self._answer(request, listing)

        async def post(self, request: Request) -> Response:
            async def create(subscriptions: SubscriptionRegistry) -> tuple[int, Any]:
                subscription = _parse(await _read_bounded(request), settings)
                await _check_sink(subscription, settings)
                await subscriptions.put(subscription)
                return 201, shown(subscription)
            return await self._answer(request, create)

    @app.page("/subscriptions/{subscription_id}")
    class Subscription(_SubscriptionView):
        async def get(self, request: Request, subscription_id: str) -> Response:
            async def read(subscriptions: SubscriptionRegistry) -> tuple[int, Any]:
                return 200, shown(_existing(subscriptions, subscription_id))
            return await self._answer(request, read)

        async def delete(self, request: Request, subscription_id: str) -> Response:
            async def remove(subscriptions: SubscriptionRegistry) -> tuple[int, Any]:
                gone = _existing(subscriptions, subscription_id)
                await subscriptions.delete(subscription_id)
                return 200, shown(gone)
            return await self._answer(request, remove)


def _existing(subscriptions: SubscriptionRegistry, subscription_id: str) -> DriftSubscription:
    subscription = subscriptions.get(subscription_id)
    if subscription is None:
        raise _Refused(404, "not_found", f"no subscription {subscription_id!r}")
    return subscription
