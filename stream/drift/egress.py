"""Which addresses a webhook may reach: the guard against server-side request forgery.

Whoever can subscribe chooses a URL that the worker will POST to. Without a guard, that is a
way into the worker's network: the cloud metadata service (169.254.169.254, fd00:ec2::254)
hands out credentials, and Redis, Kafka and admin pages listen on loopback and private
addresses. So a webhook may only be http(s), and every address its host resolves to must be a
public one: not loopback, private, shared (100.64/10), link-local, multicast, reserved or
unspecified, in IPv4 or IPv6, including IPv4 addresses written as IPv6 (``::ffff:10.0.0.1``,
6to4, Teredo). ``STREAMRANK_WEBHOOK_ALLOW`` lists the exceptions: host names, addresses or
CIDR networks (a receiver on the local network, the tests' receiver on 127.0.0.1).

The check runs when a subscription is written and again before every delivery attempt, as
DNS can change; the delivery then connects to the addresses it checked
(:mod:`stream.drift.webhooks`), so a name that resolves to a public address for the check
and to a private one a moment later (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from stream.errors import StreamrankError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
METADATA = frozenset({ipaddress.ip_address("169.254.169.254"),
                      ipaddress.ip_address("fd00:ec2::254")})


class UnsafeWebhook(StreamrankError):
    """A webhook URL the worker must not call; the message says why."""


class Unresolvable(UnsafeWebhook):
    """The webhook's host does not resolve (now: at delivery, a retry may succeed)."""


@dataclass(frozen=True)
class Target:
    """A checked webhook: where to connect, and the addresses the check allowed."""

    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def refusal(address: IPAddress) -> str | None:
    """Why a webhook may not reach ``address`` (None: it may)."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        why = refusal(embedded)
        return None if why is None else f"{why} (written as {address})"
    if address in METADATA:
        return "a cloud metadata address"
    for kind in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(address, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    if not address.is_global:
        return "not a public address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    return address.teredo[1] if address.teredo is not None else None


def _allowed(host: str, address: IPAddress, allow: Sequence[str]) -> bool:
    for entry in allow:
        if entry.lower() == host.lower():
            return True
        try:
            network: IPNetwork = ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:  # a host name, compared above
            continue
        if address in network:
            return True
    return False


def parse_webhook(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL without credentials, or :class:`UnsafeWebhook`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhook(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeWebhook(f"only http and https webhooks are allowed, not {parts.scheme!r}")
    if not parts.hostname:
        raise UnsafeWebhook("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhook("credentials in the URL are not allowed: receivers authenticate "
                            "deliveries by their signature")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_webhook(url: str, allow: Sequence[str]) -> Target:
    """Resolve the URL's host and check every address it has; :class:`UnsafeWebhook` if any
    is refused (a name with one private address among public ones is refused too: the
    client could connect to either) or the name does not resolve."""
    host, port = parse_webhook(url)
    addresses = await _resolve(host, port)
    for address in addresses:
        why = refusal(address)
        if why is not None and not _allowed(host, address, allow):
            shown = host if host == str(address) else f"{host} resolves to {address}, which"
            raise UnsafeWebhook(f"{shown} is {why}; list it in STREAMRANK_WEBHOOK_ALLOW to "
                                "allow it")
    return Target(host, port, addresses)


async def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        return (ipaddress.ip_address(host.strip("[]")),)
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(f"{host} does not resolve: {exc}") from None
    addresses = tuple(dict.fromkeys(
        ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos))
    if not addresses:
        raise Unresolvable(f"{host} has no address")
    return addresses
