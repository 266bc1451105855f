"""Who may call the web views: the loopback rule and the bearer-token check (pure logic)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from stream.errors import UnsafeConfiguration
from stream.runtime.access import authorized, check_exposure, is_loopback
from stream.settings import Settings

TOKEN = SecretStr("tok-0123456789abcdef")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.5.6.7", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False),
    ("worker.internal", False), ("::ffff:127.0.0.1", False),
])
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposed_web_port_needs_a_token() -> None:
    check_exposure(Settings(web_host="127.0.0.1"))
    check_exposure(Settings(web_host="0.0.0.0", api_token=TOKEN))
    with pytest.raises(UnsafeConfiguration, match=r"STREAMRANK_WEB_HOST=0\.0\.0\.0 makes"):
        check_exposure(Settings(web_host="0.0.0.0"))


@pytest.mark.parametrize(("header", "ok"), [
    ("Bearer tok-0123456789abcdef", True),
    ("bearer tok-0123456789abcdef", True),
    ("Bearer  tok-0123456789abcdef ", True),
    ("Bearer tok-0123456789abcde", False),
    ("Bearer tok-0123456789abcdefX", False),
    ("Basic tok-0123456789abcdef", False),
    ("tok-0123456789abcdef", False),
    ("Bearer ", False),
    ("", False),
    (None, False),
    ("Bearer tök-0123456789abcdef", False),  # non-ASCII: refused, not an exception
])
def test_bearer_token_check(header: str | None, ok: bool) -> None:
    assert authorized(header, TOKEN) is ok


def test_without_a_token_everyone_is_authorized() -> None:
    assert authorized(None, None) and authorized("Bearer anything", None)
