"""The SSRF guard: a webhook may only reach public addresses, unless the operator allows it."""

from __future__ import annotations

import ipaddress

import pytest

from stream.drift.egress import UnsafeWebhook, check_webhook, refusal


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("192.168.0.10", "private"),
    ("172.16.5.4", "private"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.251", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("100.64.0.1", "not a public address"),  # carrier-grade NAT
    ("240.0.0.1", "reserved"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:169.254.169.254", "metadata"),
    ("2002:a9fe:a9fe::1", "metadata"),  # 6to4 around 169.254.169.254
])
def test_internal_addresses_are_refused(address: str, why: str) -> None:
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None and why in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("url", "message"), [
    ("http://127.0.0.1:8080/hook", "127.0.0.1 is a loopback address"),
    ("http://10.0.0.7/hook", "10.0.0.7 is a private address"),
    ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
    ("http://[::ffff:a9fe:a9fe]/", "a cloud metadata address"),
    ("http://localhost:8080/hook", "localhost resolves to"),  # a name for a loopback address
    ("file:///etc/passwd", "only http and https"),
    ("gopher://example.com/", "only http and https"),
    ("http://user:password@example.com/hook", "credentials in the URL"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://no-such-host.invalid/hook", "does not resolve"),
])
async def test_unsafe_webhooks_are_refused_with_the_reason(url: str, message: str) -> None:
    with pytest.raises(UnsafeWebhook, match=message.replace("[", r"\[")):
        await check_webhook(url, allow=[])


@pytest.mark.parametrize(("url", "allow"), [
    ("http://127.0.0.1:8080/hook", ["127.0.0.1"]),
    ("http://127.0.0.1:8080/hook", ["127.0.0.0/8"]),
    ("http://10.0.0.7/hook", ["10.0.0.0/24"]),
    ("http://169.254.169.254/", ["169.254.169.254"]),
    ("http://localhost:8080/hook", ["localhost"]),  # by name: whatever it resolves to
    ("http://localhost:8080/hook", ["127.0.0.0/8", "::1"]),  # by every address it has
    ("http://[::1]:8080/hook", ["::1/128"]),
])
async def test_the_allow_list_lets_listed_hosts_addresses_and_networks_through(
        url: str, allow: list[str]) -> None:
    target = await check_webhook(url, allow)
    assert target.addresses and target.port in (80, 8080)


async def test_an_allow_list_entry_covers_only_itself() -> None:
    with pytest.raises(UnsafeWebhook, match=r"10\.0\.1\.7 is a private address"):
        await check_webhook("http://10.0.1.7/", allow=["10.0.0.0/24", "127.0.0.1", "not-it"])
