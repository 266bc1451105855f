"""Secrets never reach a log line or an error message.

Two tools: :func:`redact_url` for the messages we write ourselves (a Redis URL names where the
store is, which is worth printing, and may carry a password, which is not), and
:func:`mask_secrets`, which replaces every configured secret value with ``***`` in every log
record and CLI error, whoever wrote the message (aiokafka, redis-py, Faust, us).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"


def url_secrets(url: str) -> list[str]:
    """The password inside ``url``, as written and percent-decoded (clients print either)."""
    password = urlsplit(url).password
    return [password, unquote(password)] if password else []


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:{MASK}@{host}"))


class Redactor:
    """Replaces every secret value in a text; the longest first, so that a secret which
    contains another is masked whole."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


class SecretFilter(logging.Filter):
    """Rewrites a record so that its message, exception and stack text hold no secret.

    The message is formatted here, once, with its arguments; the traceback text is cached on
    the record, where every ``logging.Formatter`` takes it from instead of formatting again.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.redactor.secrets:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: keep it visible, and masked
            message = f"{record.msg} % {record.args!r}"
        record.msg = self.redactor(message)
        record.args = ()  # an empty tuple, not None: mode's formatter would format with (None,)
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True


_TRACEBACKS = logging.Formatter()
_make_record = logging.getLogRecordFactory()
_active = Redactor(())


def mask_secrets(secrets: Iterable[str]) -> None:
    """Mask these values in every log record made from now on, and in :func:`mask`.

    The filter runs where records are made (the record factory), not on handlers: Faust's
    worker replaces the root handlers when it sets up logging, and some libraries log through
    handlers of their own. Calling it again replaces the secrets, it does not stack filters.
    """
    global _active
    _active = Redactor(secrets)
    secret_filter = SecretFilter(_active)

    def make_record(*args: object, **kwargs: object) -> logging.LogRecord:
        record = _make_record(*args, **kwargs)
        secret_filter.filter(record)
        return record

    logging.setLogRecordFactory(make_record)


def mask(text: str) -> str:
    """``text`` with the secrets given to :func:`mask_secrets` replaced by ``***``."""
    return _active(text)
