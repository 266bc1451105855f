"""Which subscriptions an alert goes to: pure matching, testable without a broker."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from schemas import SEVERITIES, DriftAlert, DriftSubscription

_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}


def matches(alert: DriftAlert, subscription: DriftSubscription) -> bool:
    """The alert's signal matches one of the globs (case-sensitive, as signal names are), its
    severity is at least the minimum, and its detector is listed (an empty list: any)."""
    return (_RANK[alert.severity] >= _RANK[subscription.min_severity]
            and (not subscription.detectors or alert.detector in subscription.detectors)
            and any(fnmatchcase(alert.signal, glob) for glob in subscription.signals))


def routes(alert: DriftAlert, subscriptions: Iterable[DriftSubscription]
           ) -> list[DriftSubscription]:
    """The subscriptions that get ``alert``, in the order given."""
    return [subscription for subscription in subscriptions if matches(alert, subscription)]
