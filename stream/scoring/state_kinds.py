"""The kinds of versioned state a scoring worker installs from model-updates."""

from __future__ import annotations

from typing import Any

from stream.bn.kind import bn_stats_kind
from stream.runtime.versioned_state import StateKind
from stream.scoring.model_kind import model_kind
from stream.scoring.ranker import ModelSlot
from stream.settings import Settings


def serving_kinds(slot: ModelSlot, settings: Settings) -> list[StateKind[Any]]:
    return [model_kind(slot, settings), bn_stats_kind(slot, settings)]
