"""The BN role's view of model-updates: the model served, its statistics now, the newest number.

The role reads every version, as scorers do, with a reader of its own: it adapts the
statistics of the model the workers serve, starting from the version they serve, and numbers
its versions after the newest one published by anyone (the role itself, the CLI, a rollback).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.bn import TRAINED, BnStats, OnnxTaps, StatsError
from models.ranking_features import RANKER_FEATURE_NAMES
from models.scorer import ModelError, OnnxScorer, UntrustedModel, load_scorer
from schemas import ModelUpdate, Rejection
from stream.bn.kind import load_stats
from stream.runtime.versioned_state import StateKind
from stream.scoring.model_kind import manifest_path
from stream.settings import Settings

KNOWN_VERSIONS = 64  # a rollback names one of the recent versions, kept in memory


@dataclass(frozen=True)
class AdaptedModel:
    """A served model, with what adapting and judging its statistics need."""

    scorer: OnnxScorer  # trained statistics, CPU: the watchdog scores with it
    trained: BnStats
    taps: OnnxTaps

    @property
    def version(self) -> str:
        return self.scorer.version


def adapted_model(update: ModelUpdate, settings: Settings) -> AdaptedModel:
    try:
        scorer = load_scorer(manifest_path(update, settings.model_dir), RANKER_FEATURE_NAMES,
                             "cpu", 1, update.sha256, settings.signing_key)
        manifest = scorer.manifest
        if manifest.taps is None:
            raise ModelError(f"model {manifest.version} has no BN taps graph: retrain it to "
                             "adapt its BatchNorm statistics online")
        taps = OnnxTaps(manifest.model_path.parent / manifest.taps["file"],
                        manifest.taps["sha256"])
        return AdaptedModel(scorer, manifest.trained_stats(), taps)
    except UntrustedModel as exc:
        raise Rejection("untrusted_state", str(exc)) from exc
    except (ModelError, StatsError, OSError) as exc:
        raise Rejection("invalid_state", str(exc)) from exc


class BnVersions:
    """What the role knows of the published versions; ``on_stats`` hears of each new one."""

    def __init__(self, settings: Settings,
                 on_stats: Callable[[BnStats], None] = lambda stats: None) -> None:
        self.settings = settings
        self.model: AdaptedModel | None = None
        self.current: BnStats | None = None
        self.newest_number = 0
        self.known: dict[str, BnStats] = {}
        self._on_stats = on_stats

    def kinds(self) -> list[StateKind[Any]]:
        return [StateKind("model", lambda u: adapted_model(u, self.settings),
                          self.install_model),
                StateKind("bn_stats", lambda u: load_stats(u, self.settings), self.install)]

    def install(self, stats: BnStats) -> None:
        """A version published by anyone, the role included."""
        self.newest_number = max(self.newest_number, stats.number)
        if self.model is None or stats.model_version != self.model.version:
            return
        self.current = stats
        self.known[stats.version] = stats
        while len(self.known) > KNOWN_VERSIONS:
            del self.known[next(v for v in self.known if v != TRAINED)]
        self._on_stats(stats)

    def next_version(self, base: BnStats, **changes: Any) -> BnStats:
        """The next number after every version published, derived from ``base``."""
        return base.successor(self.newest_number + 1, **changes)

    def install_model(self, model: AdaptedModel) -> None:
        self.model = model
        self.current = model.trained
        self.known = {TRAINED: model.trained}
