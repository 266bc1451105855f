"""Operational failures that the CLI reports as one clear line, never as a traceback."""



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


class UnsafeConfiguration(StreamrankError):
    """The settings would expose the worker without protection (e.g. no API token)."""
