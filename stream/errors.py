"""Operational failures that the CLI reports as one clear line, never as a traceback."""

import re


class StreamrankError(RuntimeError):
    pass


class BrokerUnavailable(StreamrankError):
    """The configured or embedded broker could not be reached."""


class StoreUnavailable(StreamrankError):
    """The configured Redis could not be reached."""


class WorkerFailed(StreamrankError):
    """A worker child process died or never became ready."""


class BenchFailed(StreamrankError):
    """A benchmark could not measure what it set out to (lost answers, a dead process)."""


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it masked (``redis://:***@host``)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)
