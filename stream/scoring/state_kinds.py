"""The kinds of versioned state a scoring worker installs from model-updates."""

from __future__ import annotations

from typing import Any

from stream.ads.kind import bandit_kind
from stream.ads.serving import BanditSlot
from stream.bn.kind import bn_stats_kind
from stream.runtime.versioned_state import StateKind
from stream.scoring.model_kind import model_kind
from stream.scoring.ranker import ModelSlot
from stream.settings import Settings


def serving_kinds(models: ModelSlot, bandit: BanditSlot, settings: Settings
                  ) -> list[StateKind[Any]]:
    return [model_kind(models, settings), bn_stats_kind(models, settings),
            bandit_kind(bandit, settings)]
