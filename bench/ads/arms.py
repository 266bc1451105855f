"""The arms the bench compares: the bandit policy learning online, and the baselines and bound
it is judged against. Each places ads under the same rules (``max_ads``, ``min_spacing``, the
slots the feed reaches) so only the choice differs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bench.ads.loop import Request, Slate
from models.bandit import AdRequest, BanditParams, Feedback, decide, learn, valid_slots
from models.world import Engagement, World

POSITIVE = frozenset({"click", "like", "share"})  # what the outcomes join counts


@dataclass(frozen=True)
class Rules:
    slots: tuple[int, ...]
    max_ads: int
    min_spacing: int


def slot_outcome(engagements: Sequence[Engagement], slot: int, ad_id: str | None
                 ) -> tuple[float, float]:
    """What the outcomes join logs for a slot: the ad's conversion revenue, and the organic
    click + like + share events below it (from the slot down when it held no ad)."""
    first = slot + 1 if ad_id is not None else slot
    engaged = sum(e.type in POSITIVE and e.position >= first for e in engagements)
    revenue = sum(e.revenue or 0.0 for e in engagements
                  if ad_id is not None and e.item_id == ad_id and e.type == "conversion")
    return float(revenue), float(engaged)


class Never:
    uses_features = False

    def place(self, request: Request, ads: AdRequest | None, rng: np.random.Generator
              ) -> Slate:
        return Slate({})

    def observe(self, slate: Slate, engagements: Sequence[Engagement]) -> None:
        pass


@dataclass
class Oracle(Never):
    """World.best_ads: the best expected placement, knowing the truth."""

    world: World
    rules: Rules
    dial: float

    def place(self, request: Request, ads: AdRequest | None, rng: np.random.Generator
              ) -> Slate:
        return Slate(self.world.best_ads(request.draw, request.ranked, self.rules.slots,
                                         self.dial, self.rules.max_ads,
                                         self.rules.min_spacing, request.elapsed_s))


@dataclass
class Fixed(Never):
    """An ad every k-th allowed slot (up to max_ads), the best ads by bid x smoothed click
    rate from the arm's counters in the highest slots: a typical hand-tuned ad load."""

    rules: Rules
    k: int
    uses_features = True

    def place(self, request: Request, ads: AdRequest | None, rng: np.random.Generator
              ) -> Slate:
        assert ads is not None
        schedule: list[int] = []
        for slot in valid_slots(self.rules.slots[::self.k], ads.n):
            if len(schedule) < self.rules.max_ads and (
                    not schedule or slot - schedule[-1] >= self.rules.min_spacing):
                schedule.append(slot)
        best = np.argsort(-(ads.bids * ads.click_rates), kind="stable")
        return Slate({slot: int(request.draw.ads[row])
                      for slot, row in zip(schedule, best, strict=False)})


@dataclass
class Policy(Never):
    """models.bandit deciding every slot and learning from the slots' logged outcomes every
    ``learn_every`` requests, as the learner would from the outcomes topic."""

    rules: Rules
    params: BanditParams
    learn_every: int | None = 500  # None: never learn
    uses_features = True
    _rows: list[tuple[np.ndarray, bool, float, float]] = field(default_factory=list,
                                                               init=False)
    _requests: int = field(default=0, init=False)

    def place(self, request: Request, ads: AdRequest | None, rng: np.random.Generator
              ) -> Slate:
        assert ads is not None
        decisions = decide(self.params, ads, rng, self.rules.max_ads, self.rules.min_spacing)
        by_id = dict(zip(ads.ad_ids, request.draw.ads.tolist(), strict=True))
        return Slate({d.slot: by_id[d.ad_id] for d in decisions if d.ad_id is not None},
                     decisions)

    def observe(self, slate: Slate, engagements: Sequence[Engagement]) -> None:
        if self.learn_every is None:
            return
        for d in slate.decisions:
            self._rows.append((d.context, d.ad_id is not None,
                               *slot_outcome(engagements, d.slot, d.ad_id)))
        self._requests += 1
        if self._requests % self.learn_every == 0 and self._rows:
            contexts, placed, revenues, engaged = zip(*self._rows, strict=True)
            self.params = learn(self.params, Feedback(np.array(contexts), np.array(placed),
                                                      np.array(revenues), np.array(engaged)))
            self._rows = []


def uniform(rules: Rules) -> Policy:
    """Random: every feasible action of a slot equally likely (decide with epsilon 1)."""
    return Policy(rules, BanditParams.prior(epsilon=1.0), learn_every=None)


@dataclass
class EpsilonGreedy(Never):
    """Non-contextual: a running mean net reward per (slot, ad) and, per slot, of the organic
    engagement from the slot down without an ad (the loss's baseline); greedy on the means,
    uniform over the feasible actions with probability epsilon."""

    world: World
    rules: Rules
    dial: float
    epsilon: float = 0.05
    uses_features = True
    _sums: np.ndarray = field(init=False)
    _counts: np.ndarray = field(init=False)
    _baseline: np.ndarray = field(init=False)  # per slot: sum, count

    def __post_init__(self) -> None:
        shape = (max(self.rules.slots) + 1, len(self.world.ad_ids))
        self._sums, self._counts = np.zeros(shape), np.zeros(shape)
        self._baseline = np.zeros((shape[0], 2))

    def place(self, request: Request, ads: AdRequest | None, rng: np.random.Generator
              ) -> Slate:
        assert ads is not None
        available = list(request.draw.ads.tolist())
        placed: dict[int, int] = {}
        last = -self.rules.min_spacing
        for slot in valid_slots(self.rules.slots, ads.n):
            if slot > len(request.ranked) + len(placed):
                break
            room = len(placed) < self.rules.max_ads and slot - last >= self.rules.min_spacing
            options = available if room else []
            means = self._sums[slot, options] / np.maximum(self._counts[slot, options], 1.0)
            scores = np.concatenate(([0.0], means))
            choice = (int(rng.integers(len(scores))) if rng.random() < self.epsilon
                      else int(np.argmax(scores)))
            if choice:
                ad = options[choice - 1]
                placed[slot], last = ad, slot
                available.remove(ad)
        return Slate(placed, [])

    def observe(self, slate: Slate, engagements: Sequence[Engagement]) -> None:
        for slot in valid_slots(self.rules.slots, self.world.config.shown):
            ad = slate.ads_by_slot.get(slot)
            revenue, engaged = slot_outcome(engagements, slot,
                                            None if ad is None else self.world.ad_ids[ad])
            if ad is None:
                self._baseline[slot] += (engaged, 1.0)
                continue
            total, count = self._baseline[slot]
            self._sums[slot, ad] += revenue - self.dial * (total / max(count, 1.0) - engaged)
            self._counts[slot, ad] += 1.0
