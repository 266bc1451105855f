"""Secrets are masked in log records, error text, and the settings' repr and dumps."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from mode.utils.logging import ExtensionFormatter
from pydantic import SecretStr

from stream.redaction import Redactor, mask, mask_secrets, redact_url, url_secrets
from stream.settings import Settings


@pytest.mark.parametrize(("url", "redacted"), [
    ("redis://:hunter2@db:6379/0", "redis://:***@db:6379/0"),
    ("rediss://app:hunter2@db/1", "rediss://app:***@db/1"),
    ("redis://app:p%40ss@db/1", "redis://app:***@db/1"),
    ("redis://db:6379/0", "redis://db:6379/0"),
    ("redis://app@db:6379/0", "redis://app@db:6379/0"),
])
def test_redact_url_masks_only_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_url_secrets_are_the_password_as_written_and_decoded() -> None:
    assert url_secrets("redis://app:p%40ss@db/1") == ["p%40ss", "p@ss"]
    assert url_secrets("redis://db/1") == []


def test_redactor_masks_a_secret_that_contains_another_whole() -> None:
    redact = Redactor(["abc", "abcdef", ""])
    assert redact("x abcdef y abc z") == "x *** y *** z"


FORMAT = "%(levelname)s %(message)s"


@pytest.fixture(params=["logging", "mode"])
def captured(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """A logger writing through the standard formatter or the one Faust's worker installs
    (mode's, which formats the arguments again), with the record factory restored after."""
    factory = logging.getLogRecordFactory()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT) if request.param == "logging"
                         else ExtensionFormatter(stream=stream, fmt=FORMAT))
    logger = logging.getLogger("test_redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logging.setLogRecordFactory(factory)
        mask_secrets(())


def test_log_records_are_masked_in_message_arguments_and_traceback(
        captured: io.StringIO) -> None:
    mask_secrets(["hunter2", "tok-0123456789abcdef"])
    log = logging.getLogger("test_redaction")
    log.warning("connecting to %s with %r", "redis://:hunter2@db/0",
                {"token": "tok-0123456789abcdef"})
    try:
        raise ConnectionError("AUTH hunter2 refused")
    except ConnectionError:
        log.exception("store failed")
    log.warning("bad call %s %s", "hunter2")  # a malformed call stays visible, and masked
    log.warning("100%% of %s", "hunter2")
    text = captured.getvalue()
    assert "hunter2" not in text and "tok-0123456789abcdef" not in text
    assert "connecting to redis://:***@db/0 with {'token': '***'}" in text
    assert "ConnectionError: AUTH *** refused" in text
    assert "bad call" in text
    assert "WARNING 100% of ***\n" in text
    assert mask("error: hunter2") == "error: ***"


def test_masking_again_replaces_the_secrets(captured: io.StringIO) -> None:
    mask_secrets(["first-secret"])
    mask_secrets(["second-secret"])
    logging.getLogger("test_redaction").warning("first-secret second-secret")
    assert captured.getvalue() == "WARNING first-secret ***\n"


SECRET_SETTINGS = {
    "redis_url": "redis://:hunter2@db:6379/0",
    "api_token": "tok-0123456789abcdef",
    "kafka_security_protocol": "SASL_PLAINTEXT",
    "kafka_sasl_username": "alice",
    "kafka_sasl_password": "sasl-pw-42",
}


def test_settings_never_show_a_secret_but_pass_them_to_child_processes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(**SECRET_SETTINGS)
    shown = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    for secret in ("hunter2", "tok-0123456789abcdef", "sasl-pw-42"):
        assert secret not in shown
    assert "redis://:***@db:6379/0" in shown
    env = settings.as_env()
    assert env["STREAMRANK_REDIS_URL"] == "redis://:hunter2@db:6379/0"
    assert env["STREAMRANK_API_TOKEN"] == "tok-0123456789abcdef"
    assert env["STREAMRANK_KAFKA_SASL_PASSWORD"] == "sasl-pw-42"
    for name, value in env.items():  # a child process reads them back unchanged
        monkeypatch.setenv(name, value)
    assert Settings().as_env() == env


def test_every_secret_setting_is_masked_whatever_its_name() -> None:
    class WithAnotherSecret(Settings):
        bandit_store_password: SecretStr | None = None

    signing_key = "sign-key-7" * 4
    settings = WithAnotherSecret(**SECRET_SETTINGS, model_signing_key=signing_key,
                                 bandit_store_password="vault-pw-3")
    assert sorted(settings.secrets()) == sorted(
        ["hunter2", "hunter2", "tok-0123456789abcdef", "sasl-pw-42", signing_key, "vault-pw-3"])


def test_a_short_token_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError) as error:
        Settings(api_token="short-tok")
    assert "at least 16 characters" in str(error.value)
    assert "short-tok" not in str(error.value)
