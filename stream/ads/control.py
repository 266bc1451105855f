"""``streamrank ads status|set``: the dial and epsilon, changed at runtime through versions.

A change is a new version (``bandit-<n+1>``, the same posteriors under the new knobs, its
parent the version served), so every scorer and the learner see it the way they see a learnt
update, a restart keeps it, and every decision logged afterwards names the knobs it ran with.
"""

from __future__ import annotations

from typing import Any

from models.bandit import BanditParams
from schemas import ModelUpdate
from stream.ads.kind import bandit_kind, write_params
from stream.ads.serving import BanditSlot, policy_family
from stream.runtime.versioned_state import publish_update, replay_versions
from stream.settings import Settings


class NewestVersion(BanditSlot):
    """The version served, and the highest number published by anyone."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.newest_number = 0
        self.published = 0

    def install(self, params: BanditParams) -> None:
        super().install(params)
        self.newest_number = max(self.newest_number, params.number)
        self.published += 1


async def read_params(settings: Settings, bootstrap: str) -> NewestVersion:
    slot = NewestVersion(settings)
    await replay_versions(settings, bootstrap, [bandit_kind(slot, settings)])
    return slot


def status(slot: NewestVersion) -> dict[str, Any]:
    params = slot.current
    return {"policy": policy_family(params), "policy_version": params.version,
            "parent": params.parent, "dial": params.dial, "epsilon": params.epsilon,
            "alpha": params.alpha, "outcomes_learnt": params.samples,
            "published_versions": slot.published,
            "source": "model-updates" if slot.published else "settings (nothing published)"}


def retuned(slot: NewestVersion, dial: float | None, epsilon: float | None) -> BanditParams:
    """The served posteriors under the new knobs, numbered after every version published;
    an invalid knob raises ValueError before anything is written."""
    return slot.current.retuned(slot.newest_number + 1, dial=dial, epsilon=epsilon)


async def publish(settings: Settings, bootstrap: str, params: BanditParams) -> ModelUpdate:
    update = write_params(params, settings)
    await publish_update(settings, bootstrap, update)
    return update
