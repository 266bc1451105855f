"""``streamrank bn``: the operator's hand on the statistics, through versions like any other.

Freeze, unfreeze, rollback and reset each publish a new version (``bn-<n+1>``, its parent the
version served), so every worker and the BN role see the change the way they see an update,
a restart keeps it, and the history says who did what. A rollback names an earlier version
of the model served; its file is read from beside the model.
"""

from __future__ import annotations

import time
from typing import Any

from models.bn import TRAINED, BnStats, StatsError, read_stats
from schemas import ModelUpdate
from stream.bn.kind import stats_path, write_stats
from stream.bn.versions import BnVersions
from stream.errors import StreamrankError
from stream.runtime.versioned_state import publish_update, replay_versions
from stream.settings import Settings


class BnControlError(StreamrankError):
    """An operation that cannot apply: no model served, an unknown version."""


async def read_versions(settings: Settings, bootstrap: str) -> BnVersions:
    """Every version on model-updates, installed in order as a worker would."""
    versions = BnVersions(settings)
    await replay_versions(settings, bootstrap, versions.kinds())
    return versions


def status(versions: BnVersions) -> dict[str, Any]:
    model, current = versions.model, versions.current
    if model is None or current is None:
        return {"model_version": None, "stats_version": None, "newest": versions.newest_number}
    return {
        "model_version": model.version, "stats_version": current.version,
        "parent": current.parent, "note": current.note, "frozen": current.frozen,
        "rows": current.rows, "created_ts": current.created_ts,
        "newest": f"bn-{versions.newest_number}" if versions.newest_number else TRAINED,
        "history": [{"version": s.version, "parent": s.parent, "note": s.note}
                    for s in versions.known.values()]}


def freeze(versions: BnVersions, frozen: bool) -> BnStats:
    current = _current(versions)
    return versions.next_version(current, frozen=frozen, created_ts=time.time(),
                                 note="freeze" if frozen else "unfreeze")


def rollback(versions: BnVersions, settings: Settings, target: str) -> BnStats:
    current = _current(versions)
    assert versions.model is not None
    old = versions.known.get(target)
    if old is None:
        try:
            old = read_stats(stats_path(versions.model.scorer.manifest, target),
                             signing_key=settings.signing_key)
        except StatsError as exc:
            raise BnControlError(f"no statistics version {target!r} of model "
                                 f"{versions.model.version}: {exc}") from exc
    if old.model_version != versions.model.version:
        raise BnControlError(f"{target} belongs to model {old.model_version}, not "
                             f"{versions.model.version}")
    return versions.next_version(current, layers=old.layers, created_ts=time.time(),
                                 note=f"rollback to {target}")


def reset(versions: BnVersions) -> BnStats:
    current = _current(versions)
    assert versions.model is not None
    return versions.next_version(current, layers=versions.model.trained.layers, rows=0,
                                 created_ts=time.time(), note="reset")


async def publish(versions: BnVersions, settings: Settings, bootstrap: str,
                  stats: BnStats) -> ModelUpdate:
    assert versions.model is not None
    update = write_stats(stats, versions.model.scorer.manifest, settings)
    await publish_update(settings, bootstrap, update)
    return update


def _current(versions: BnVersions) -> BnStats:
    if versions.model is None or versions.current is None:
        raise BnControlError("no model with BN taps is published on model-updates: there "
                             "are no statistics to change")
    return versions.current
