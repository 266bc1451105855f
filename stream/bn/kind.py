"""The ``bn_stats`` kind of versioned state: a scorer swaps in new BatchNorm statistics.

A version is a statistics file (:class:`models.bn.BnStats`) under ``STREAMRANK_MODEL_DIR``,
announced on model-updates with its sha256 and, with a signing key, signed. It is built into a
session off the loop (:meth:`models.scorer.OnnxScorer.with_stats`) and swapped in by reference,
so a batch in flight finishes on the statistics it took.
"""

from __future__ import annotations

from pathlib import Path

from models.bn import BnStats, StatsError, UntrustedStats, read_stats
from models.scorer import Manifest, ModelError, OnnxScorer, Scorer, UntrustedModel
from schemas import ModelUpdate, Rejection
from stream.runtime.versioned_state import StateKind, write_version
from stream.scoring.model_kind import trusted_file
from stream.scoring.ranker import ModelSlot
from stream.settings import Settings

STATS_DIR = "bn"  # beside the model's manifest: one file per version


def stats_path(manifest: Manifest, version: str) -> Path:
    return manifest.model_path.parent / STATS_DIR / f"{version}.json"


def load_stats(update: ModelUpdate, settings: Settings) -> BnStats:
    """The statistics an update announces, refused as :class:`Rejection` like any version."""
    try:
        return read_stats(trusted_file(update.uri, settings.model_dir), update.sha256,
                          settings.signing_key)
    except (UntrustedModel, UntrustedStats) as exc:
        raise Rejection("untrusted_state", str(exc)) from exc
    except StatsError as exc:
        raise Rejection("invalid_state", str(exc)) from exc


def write_stats(stats: BnStats, manifest: Manifest, settings: Settings) -> ModelUpdate:
    """Write a version's file (atomically) and return the update that announces it."""
    return write_version(stats_path(manifest, stats.version),
                         stats.to_bytes(settings.signing_key), "ranker", "bn_stats",
                         stats.version)


def bn_stats_kind(slot: ModelSlot, settings: Settings) -> StateKind[Scorer | None]:
    def load(update: ModelUpdate) -> Scorer | None:
        stats = load_stats(update, settings)
        current = slot.current
        if not isinstance(current, OnnxScorer) or current.version != stats.model_version:
            return None  # statistics of a model this worker does not serve (any more)
        try:
            return current.with_stats(stats)
        except ModelError as exc:
            raise Rejection("invalid_state", str(exc)) from exc

    def install(scorer: Scorer | None) -> None:
        if scorer is not None:
            slot.install_stats(scorer)

    return StateKind("bn_stats", load, install)
