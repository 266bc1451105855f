"""A seeded synthetic world: users, items, ads and the true engagement model behind them.

There is no real traffic here, so every quality number in this project is measured against this
world. It knows the true probability of every engagement for any item at any position, so a
ranking can be scored by its expected clicks instead of by a noisy replay, and drift tests can
shift it at a known time. It imports only numpy, so tests and benchmarks need no broker.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal, get_args

import numpy as np

ENGAGEMENT_TASKS = ("click", "like", "share", "hide")
DEVICES = ("mobile", "desktop", "tablet")
SURFACES = ("feed", "search", "related")
ShiftKind = Literal["covariate", "label_rate", "new_interest", "device_mix", "surface_mix",
                    "calibration", "traffic"]

# Latent space. Users concentrate on a few mainstream topics (Zipf), items cover all topics evenly,
# so a popularity ranking is a real baseline but personalisation still pays.
N_TOPICS = 20
TOPIC_ZIPF = 0.8  # P(user is interested in topic t) ~ 1 / (t + 1) ** TOPIC_ZIPF
ITEM_NOISE = 0.8  # norm of an item's (or ad's) offset from its topic centre: cos to it ~ 0.78
INTEREST_NOISE = 0.5  # norm of an interest's offset from its topic centre
QUALITY_SD = 0.5  # hidden item quality, added to the click logit
INTEREST_CONCENTRATION = 2.0  # Dirichlet parameter of a user's interest weights
ACTIVITY_SD = 1.0  # lognormal spread of how often each user sends a request

# Candidates: part retrieved near the user's interests, the rest random, as a real retriever mixes.
NEAR_FRACTION = {"feed": 0.4, "search": 0.5, "related": 0.3}
NEAR_POOL = 150  # nearest items per interest that the near part is sampled from
DEVICE_MIX = (0.6, 0.3, 0.1)
SURFACE_MIX = (0.7, 0.2, 0.1)

# Organic engagement, given that the user examined the slot (examination = position bias).
# With the defaults, CTR per impression is ~3% for a random feed of the candidates, ~8% for the
# popularity ranking and ~12% for the oracle (tests/test_world.py holds the ratios).
CLICK_AFFINITY = 5.0
CLICK_BIAS = -5.5
DEVICE_EFFECT = {"mobile": 0.0, "desktop": -0.3, "tablet": 0.2}
LIKE_MAX, LIKE_AFFINITY, LIKE_BIAS = 0.5, 4.0, -2.5  # P(like | click)
SHARE_MAX, SHARE_AFFINITY, SHARE_BIAS = 0.25, 4.0, -3.0  # P(share | click)
HIDE_MAX, HIDE_AFFINITY, HIDE_BIAS = 0.12, 5.0, 1.0  # P(hide | examined, no click)
DWELL_LOG_MEAN, DWELL_AFFINITY, DWELL_SD = float(np.log(15.0)), 1.0, 0.7  # seconds, lognormal

# Ads: they earn revenue, and they cost engagement by ending sessions more often.
AD_CLICK_AFFINITY, AD_CLICK_BIAS = 4.0, -4.5
CONVERSION_MAX, CONVERSION_AFFINITY, CONVERSION_BIAS = 0.5, 3.0, -1.0  # P(conversion | ad_click)
BID_LOG_MEAN, BID_SD = float(np.log(2.0)), 0.5
REVENUE_SD = 0.3  # revenue = bid * lognormal with mean 1

# Session end, checked after each slot.
END_ORGANIC = 0.03
END_AD = 0.15
END_AFTER_HIDE = 0.30  # added when the user hid the item in that slot

NOVELTY_NOISE = 0.3  # randomness in picking a far-away topic for a new interest
POPULARITY_CHUNK = 256  # users per block when averaging click rates for popularity


@dataclass(frozen=True)
class Shift:
    """A distribution change at a known time, so a drift detector can be scored against it.

    What ``magnitude`` means depends on the kind:

    - ``covariate``: how far every interest vector moves towards a random topic centre;
    - ``label_rate``: P(click | examined) is scaled by 1 + magnitude;
    - ``new_interest``: the weight of a new interest every user gains, far from the old ones;
    - ``device_mix``: the share of desktop requests; mobile and tablet split the rest as in
      DEVICE_MIX. Only the context moves, but desktop users click less (DEVICE_EFFECT), so the
      overall click rate moves a little too;
    - ``surface_mix``: the share of search requests; feed and related split the rest as in
      SURFACE_MIX. A search retrieves its near candidates around one interest, not all, so the
      candidate sets, and what the features say about them, move with it;
    - ``calibration``: a logit offset added to every organic click, reached ``duration_s``
      after ``at_s`` on a linear ramp (0: a step). It is the same for every item, so the true
      order of any request's candidates never changes: a model trained before stays a good
      ranker while its probabilities go stale;
    - ``traffic``: every user's request rate is multiplied by magnitude (a surge above 1). How
      users engage does not change, only how many requests a world second holds
      (:meth:`World.request_times`), so decayed counters inflate while the truth stays put.
    """

    at_s: float  # seconds since the world's start (elapsed_s)
    kind: ShiftKind
    magnitude: float = 1.0
    duration_s: float = 0.0  # calibration only: length of the ramp

    def __post_init__(self) -> None:
        if self.kind not in get_args(ShiftKind):
            raise ValueError(f"unknown shift kind {self.kind!r}")
        if self.kind == "label_rate" and self.magnitude <= -1.0:
            raise ValueError("label_rate scales click rates by 1 + magnitude, which must be > 0")
        if self.kind == "new_interest" and self.magnitude < 0.0:
            raise ValueError("new_interest magnitude is the new interest's weight, so >= 0")
        if self.kind in ("device_mix", "surface_mix") and not 0.0 <= self.magnitude <= 1.0:
            share = "desktop" if self.kind == "device_mix" else "search"
            raise ValueError(f"{self.kind} magnitude is the {share} share, so in [0, 1]")
        if self.kind == "traffic" and self.magnitude <= 0.0:
            raise ValueError("traffic magnitude multiplies the request rate, so must be > 0")
        if self.duration_s < 0.0 or (self.duration_s and self.kind != "calibration"):
            raise ValueError("duration_s is a calibration ramp's length, so >= 0, and the "
                             "other kinds are steps")

    def ramp(self, elapsed_s: float) -> float:
        """How much of the change has happened by elapsed_s: 0 before at_s, 1 once complete."""
        if elapsed_s < self.at_s:
            return 0.0
        if self.duration_s == 0.0:
            return 1.0
        return min(1.0, (elapsed_s - self.at_s) / self.duration_s)


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and shifts of a world; the seed alone fixes everything that is not a request."""

    seed: int = 7
    n_users: int = 1000
    n_items: int = 3000
    n_ads: int = 100
    dim: int = 32
    interests_per_user: tuple[int, int] = (2, 4)  # min, max latent interest vectors per user
    candidates_per_request: int = 100
    ads_per_request: int = 5
    ad_slots: tuple[int, ...] = (2, 7)
    shown: int = 10  # items a user sees per request (n)
    shifts: tuple[Shift, ...] = ()  # distribution changes at known times

    def __post_init__(self) -> None:
        low, high = self.interests_per_user
        if not 1 <= low <= high <= N_TOPICS:
            raise ValueError(f"interests_per_user must satisfy 1 <= min <= max <= {N_TOPICS}")
        if not 1 <= self.shown <= self.candidates_per_request <= self.n_items:
            raise ValueError("need 1 <= shown <= candidates_per_request <= n_items")
        if not 0 <= self.ads_per_request <= self.n_ads:
            raise ValueError("need 0 <= ads_per_request <= n_ads")


@dataclass(frozen=True)
class RequestDraw:
    """One ranking request as the world poses it: who, which candidates, which ads, what context."""

    user: int  # index into World.user_ids
    candidates: np.ndarray  # int64 indices into World.item_ids (no duplicates)
    ads: np.ndarray  # int64 indices into World.ad_ids
    ad_slots: tuple[int, ...]
    device: str  # "mobile" | "desktop" | "tablet"
    surface: str  # "feed" | "search" | "related"


@dataclass(frozen=True)
class Engagement:
    """One thing the user did, in the vocabulary of the events topic."""

    item_id: str  # an item id or an ad id
    position: int  # 0-based slot in the shown feed
    type: str  # impression|click|like|share|hide|dwell|ad_impression|ad_click|conversion
    dwell_s: float | None = None
    revenue: float | None = None


@dataclass(frozen=True)
class AdFeedValue:
    """The exact expectations of one feed with ads, as :meth:`World.play` samples it."""

    revenue: float  # expected conversion revenue
    engagement: float  # expected organic click + like + share events


@dataclass(frozen=True)
class _State:
    """Everything shifts change, at one moment: every user's interests, the device mix and the
    click model's scale and offset. Shifts replace it rather than mutate it."""

    vectors: np.ndarray  # float32 [total, dim], unit rows, user u owns offsets[u]:offsets[u + 1]
    offsets: np.ndarray  # int64 [n_users + 1]
    weights: np.ndarray  # float64 [total], sum to 1 per user: how often each interest retrieves
    click_scale: float = 1.0  # label_rate multiplier on P(click | examined)
    click_offset: float = 0.0  # calibration offset on the organic click logit
    device_mix: tuple[float, ...] = DEVICE_MIX  # P(device), in the order of DEVICES
    surface_mix: tuple[float, ...] = SURFACE_MIX  # P(surface), in the order of SURFACES


@dataclass(frozen=True)
class _Rates:
    """Conditional engagement rates per item, the pieces both probabilities and play need."""

    affinity: np.ndarray
    exam: np.ndarray  # P(examined | the slot was reached), the position bias
    click: np.ndarray  # P(click | examined)
    like: np.ndarray  # P(like | click)
    share: np.ndarray  # P(share | click)
    hide: np.ndarray  # P(hide | examined, no click)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _around(rng: np.random.Generator, centres: np.ndarray, noise: float) -> np.ndarray:
    """Unit vectors scattered around centres, the offset having expected norm ~ noise."""
    offsets = rng.normal(0.0, noise / np.sqrt(centres.shape[1]), centres.shape)
    return _normalise(centres + offsets).astype(np.float32)


def _with_share(mix: tuple[float, ...], index: int, share: float) -> tuple[float, ...]:
    """``mix`` with ``share`` at ``index``, the others in their old proportions."""
    rest = np.delete(np.asarray(mix), index)
    return tuple(float(p) for p in np.insert(rest / rest.sum() * (1.0 - share), index, share))


def position_bias(positions: np.ndarray) -> np.ndarray:
    """P(a user examines a reached slot): 1 / log2(position + 2), the DCG discount."""
    return 1.0 / np.log2(np.asarray(positions, dtype=np.float64) + 2.0)


def _feed_values(organic: np.ndarray, is_ad: np.ndarray, item_at: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """For feeds [K, L] (``is_ad``; ``item_at``: the ranked item at each position, -1 at an ad
    or past the feed's end) of items with rates ``organic`` (World._organic_rates): each
    feed's expected organic engagement, and reach x position bias at every position."""
    bias = position_bias(np.arange(is_ad.shape[1]))
    is_item = item_at >= 0
    engaged, hide = organic[:, np.maximum(item_at, 0)] * np.where(is_item, bias, 0.0)
    end = np.where(is_ad, END_AD, np.where(is_item, END_ORGANIC + END_AFTER_HIDE * hide, 0.0))
    reach = np.concatenate((np.ones((len(end), 1)), np.cumprod(1.0 - end, axis=1)[:, :-1]),
                           axis=1)
    return np.sum(reach * engaged, axis=1), reach * bias


@lru_cache(maxsize=64)
def _placements(slots: tuple[int, ...], items: int, max_ads: int, min_spacing: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Every feasible set of ad positions among ``slots`` (sorted) for ``items`` organic items,
    as feeds padded to ``items + max_ads``: ``is_ad`` and the item at each position (-1 at an
    ad or past the end). The empty set is row 0."""
    feasible = [
        chosen for k in range(max_ads + 1) for chosen in itertools.combinations(slots, k)
        if all(b - a >= min_spacing for a, b in itertools.pairwise(chosen))
        and all(slot <= items + above for above, slot in enumerate(chosen))
    ]
    length = items + max_ads
    is_ad = np.zeros((len(feasible), length), dtype=bool)
    item_at = np.full((len(feasible), length), -1, dtype=np.int64)
    for row, chosen in enumerate(feasible):
        is_ad[row, list(chosen)] = True
        feed = np.flatnonzero(~is_ad[row])[:items]
        item_at[row, feed] = np.arange(items)
    is_ad.flags.writeable = item_at.flags.writeable = False
    return is_ad, item_at


class World:
    """Users, items and ads with a known engagement model, deterministic given config.seed."""

    def __init__(self, config: WorldConfig = WorldConfig()) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self._centres = _normalise(rng.standard_normal((N_TOPICS, config.dim)))
        item_topics = rng.integers(N_TOPICS, size=config.n_items)
        ad_topics = rng.integers(N_TOPICS, size=config.n_ads)
        self.item_embeddings = _around(rng, self._centres[item_topics], ITEM_NOISE)
        self.ad_embeddings = _around(rng, self._centres[ad_topics], ITEM_NOISE)
        self.ad_bids = rng.lognormal(BID_LOG_MEAN, BID_SD, config.n_ads)
        self.item_quality = rng.normal(0.0, QUALITY_SD, config.n_items)
        self._activity = rng.lognormal(0.0, ACTIVITY_SD, config.n_users)
        self._activity /= self._activity.sum()
        self._user_cdf = np.cumsum(self._activity)
        self._states: dict[tuple[int, ...], _State] = {(): self._draw_interests(rng)}
        self.item_popularity = self._popularity()
        self.user_ids = [f"u{i}" for i in range(config.n_users)]
        self.item_ids = [f"i{i}" for i in range(config.n_items)]
        self.ad_ids = [f"a{i}" for i in range(config.n_ads)]

    def interests(self, user: int, elapsed_s: float) -> np.ndarray:
        """The user's true unit interest vectors [k, dim] at elapsed_s: ground truth for tests."""
        state = self._state(elapsed_s)
        return state.vectors[state.offsets[user] : state.offsets[user + 1]].copy()

    def interest_weights(self, user: int, elapsed_s: float) -> np.ndarray:
        """How often each of the user's true interests (in :meth:`interests`' order) is the
        one a request follows, summing to 1: ground truth for the interests bench."""
        state = self._state(elapsed_s)
        return state.weights[state.offsets[user] : state.offsets[user + 1]].copy()

    def draw_request(self, rng: np.random.Generator, elapsed_s: float,
                     user: int | None = None) -> RequestDraw:
        """Pose a request: an active user (or the one given, to follow a user's history), a
        context, and candidates mixing near and random."""
        cfg = self.config
        state = self._state(elapsed_s)
        if user is None:
            user = int(np.searchsorted(self._user_cdf, rng.random(), side="right"))
            user = min(user, cfg.n_users - 1)  # in case the cumulative sum rounds below 1
        elif not 0 <= user < cfg.n_users:
            raise ValueError(f"user {user} is not in a world of {cfg.n_users} users")
        device = DEVICES[rng.choice(len(DEVICES), p=state.device_mix)]
        surface = SURFACES[rng.choice(len(SURFACES), p=state.surface_mix)]
        candidates = self._candidates(rng, state, user, surface)
        ads = rng.choice(cfg.n_ads, size=cfg.ads_per_request, replace=False).astype(np.int64)
        return RequestDraw(user, candidates, ads, cfg.ad_slots, device, surface)

    def probabilities(
        self, user: int, items: np.ndarray, positions: np.ndarray, device: str, elapsed_s: float
    ) -> dict[str, np.ndarray]:
        """True per-item probabilities of click, like, share, hide (unconditional, each in [0,1])
        at the given positions, once the user has reached that slot (i.e. per impression)."""
        rates = self._rates(self._state(elapsed_s), user, items, positions, device)
        click = rates.exam * rates.click
        return {
            "click": click,
            "like": click * rates.like,
            "share": click * rates.share,
            "hide": rates.exam * (1.0 - rates.click) * rates.hide,
        }

    def play(
        self,
        rng: np.random.Generator,
        draw: RequestDraw,
        ranked: np.ndarray,
        ads_by_slot: dict[int, int],
        elapsed_s: float,
    ) -> list[Engagement]:
        """Sample what the user does with a shown feed: ranked = item indices in shown order
        (len <= shown); ads_by_slot maps a feed position to an ad index placed there (organic
        items shift down). The walk stops when the session ends, so late slots may go unseen."""
        ranked = np.asarray(ranked, dtype=np.int64)
        n_feed = len(ranked) + len(ads_by_slot)
        if len(ranked) > self.config.shown:
            raise ValueError(f"{len(ranked)} items ranked but only {self.config.shown} are shown")
        if any(not 0 <= slot < n_feed for slot in ads_by_slot):
            raise ValueError(f"ad slots {sorted(ads_by_slot)} fall outside a feed of {n_feed}")
        state = self._state(elapsed_s)
        is_ad = np.zeros(n_feed, dtype=bool)
        is_ad[list(ads_by_slot)] = True
        items = self._rates(state, draw.user, ranked, np.flatnonzero(~is_ad), draw.device)
        ad_positions = np.flatnonzero(is_ad)
        ads = np.array([ads_by_slot[int(p)] for p in ad_positions], dtype=np.int64)
        ad_click, conversion = self._ad_rates(state, draw.user, ads, ad_positions)
        u = rng.random((n_feed, 4))  # per slot: action, like or conversion, share, session end
        z = rng.standard_normal(n_feed)
        events: list[Engagement] = []
        k_item = k_ad = 0
        for pos in range(n_feed):
            if is_ad[pos]:
                ad = int(ads[k_ad])
                end = self._play_ad(
                    events, ad, pos, ad_click[k_ad], conversion[k_ad], u[pos], z[pos]
                )
                k_ad += 1
            else:
                end = self._play_item(events, items, k_item, ranked, pos, u[pos], z[pos])
                k_item += 1
            if u[pos, 3] < end:
                break
        return events

    def expected_clicks(self, draw: RequestDraw, ranked: np.ndarray, elapsed_s: float) -> float:
        """Expected organic clicks of showing `ranked` (item indices in order) to draw.user: the
        oracle used to compare rankings (served vs random vs popularity). Exact for play() with no
        ads, including sessions that end early after hides. Only the draw's user and device
        count, so `ranked` may hold any items, such as those a worker retrieved itself."""
        return float(np.sum(self.feed_probabilities(draw, ranked, elapsed_s)["click"]))

    def feed_probabilities(self, draw: RequestDraw, ranked: np.ndarray, elapsed_s: float
                           ) -> dict[str, np.ndarray]:
        """True probability of each engagement in each slot of a feed with no ads: the chance
        that the session reaches the slot times :meth:`probabilities` there. It is what a label
        logged for a shown item estimates, since a slot the user never reached logs nothing."""
        ranked = np.asarray(ranked, dtype=np.int64)
        p = self.probabilities(draw.user, ranked, np.arange(len(ranked)), draw.device, elapsed_s)
        end = END_ORGANIC + END_AFTER_HIDE * p["hide"]
        reach = np.concatenate(([1.0], np.cumprod(1.0 - end)[:-1]))
        return {task: reach * p[task] for task in ENGAGEMENT_TASKS}

    def ad_feed_expectations(self, draw: RequestDraw, ranked: np.ndarray,
                             ads_by_slot: dict[int, int], elapsed_s: float) -> AdFeedValue:
        """Expected revenue and organic engagement of the feed :meth:`play` would sample: the
        truth an ad policy is scored against, with no sampling noise. A position is reached
        with the product of (1 - end chance) of those above it: END_AD after an ad, END_ORGANIC
        plus END_AFTER_HIDE times P(hide) after an item; items below an ad shift down, so their
        position bias is taken at their feed position, as in play()."""
        ranked = np.asarray(ranked, dtype=np.int64)
        n_feed = len(ranked) + len(ads_by_slot)
        if any(not 0 <= slot < n_feed for slot in ads_by_slot):
            raise ValueError(f"ad slots {sorted(ads_by_slot)} fall outside a feed of {n_feed}")
        is_ad = np.zeros((1, n_feed), dtype=bool)
        is_ad[0, list(ads_by_slot)] = True
        item_at = np.where(is_ad, -1, np.cumsum(~is_ad, axis=1) - 1)
        engagement, weights = _feed_values(self._organic_rates(draw, ranked, elapsed_s),
                                           is_ad, item_at)
        slots = sorted(ads_by_slot)
        ads = np.array([ads_by_slot[slot] for slot in slots], dtype=np.int64)
        revenue = weights[0, slots] @ self._ad_values(draw.user, ads, elapsed_s)
        return AdFeedValue(float(revenue), float(engagement[0]))

    def best_ads(self, draw: RequestDraw, ranked: np.ndarray, slots: tuple[int, ...],
                 dial: float, max_ads: int, min_spacing: int, elapsed_s: float
                 ) -> dict[int, int]:
        """The placement of the draw's ads (each at most once) that maximises expected revenue
        plus ``dial`` times expected organic engagement: the oracle an ad policy's regret is
        measured against. Feasible as in :func:`models.bandit.decide`: slots in
        ``[0, config.shown)``, at most ``max_ads``, ``min_spacing`` apart, and a slot only
        while the feed reaches it (slot <= organic items + ads above).

        Given the set of ad positions, reach and organic engagement are fixed, and an ad's
        revenue is reach x position bias of its slot times its own value, so the best
        assignment puts the best ad in the slot with the largest reach x bias (rearrangement);
        only the slot sets are enumerated, all at once."""
        ranked = np.asarray(ranked, dtype=np.int64)
        ads = np.asarray(draw.ads, dtype=np.int64)
        allowed = tuple(sorted({int(s) for s in slots if 0 <= s < self.config.shown}))
        is_ad, item_at = _placements(allowed, len(ranked), min(max_ads, len(ads)),
                                     min_spacing)
        engagement, weights = _feed_values(self._organic_rates(draw, ranked, elapsed_s),
                                           is_ad, item_at)
        values = self._ad_values(draw.user, ads, elapsed_s)
        order = np.argsort(-values, kind="stable")
        # Each slot set's ad positions by reach x bias, best first; -inf pads the shorter sets.
        at_ads = np.where(is_ad, weights, -np.inf)
        positions = np.argsort(-at_ads, axis=1, kind="stable")[:, :min(len(ads), max_ads)]
        best_weights = np.take_along_axis(at_ads, positions, axis=1)
        placed = np.isfinite(best_weights)
        top_values = values[order][:positions.shape[1]]
        revenue = np.where(placed, best_weights, 0.0) @ top_values
        best = int(np.argmax(revenue + dial * engagement))
        return {int(slot): int(ads[ad])
                for slot, ad in zip(positions[best][placed[best]], order, strict=False)}

    def _organic_rates(self, draw: RequestDraw, ranked: np.ndarray, elapsed_s: float
                       ) -> np.ndarray:
        """Per ranked item once examined, as rows [2, len(ranked)]: the expected click + like
        + share events, and P(hide)."""
        rates = self._rates(self._state(elapsed_s), draw.user, ranked, np.zeros(len(ranked)),
                            draw.device)
        return np.stack([rates.click * (1.0 + rates.like + rates.share),
                         (1.0 - rates.click) * rates.hide])

    def _ad_values(self, user: int, ads: np.ndarray, elapsed_s: float) -> np.ndarray:
        """Expected revenue of each ad once examined: P(ad_click) x P(conversion) x bid."""
        click, conversion = self._ad_rates(self._state(elapsed_s), user, ads,
                                           np.zeros(len(ads)))
        return np.asarray(click * conversion * self.ad_bids[ads])

    def traffic_scale(self, elapsed_s: float) -> float:
        """How many times its starting rate each user sends requests at elapsed_s."""
        return float(np.prod([s.magnitude for s in self.config.shifts
                              if s.kind == "traffic" and elapsed_s >= s.at_s]))

    def request_times(self, rate: float, start_s: float) -> Iterator[float]:
        """World times of the requests from start_s on, ``rate`` per second times the traffic
        scale: endless. Within a stretch of one scale the k-th is start + k / (rate * scale),
        not a running sum, so a time lands exactly where arithmetic says it does."""
        if rate <= 0.0:
            raise ValueError("rate must be > 0 requests per second")
        origin, scale, k = start_s, self.traffic_scale(start_s), 0
        while True:
            elapsed = origin + k * (1.0 / (rate * scale))
            if self.traffic_scale(elapsed) != scale:
                origin, scale, k = elapsed, self.traffic_scale(elapsed), 0
            yield elapsed
            k += 1

    def popularity_ranking(self, draw: RequestDraw) -> np.ndarray:
        """Candidates by global popularity, best first: the best ranking that ignores the user."""
        order = np.argsort(-self.item_popularity[draw.candidates], kind="stable")
        return draw.candidates[order]

    def _play_item(
        self,
        events: list[Engagement],
        rates: _Rates,
        k: int,
        ranked: np.ndarray,
        pos: int,
        u: np.ndarray,
        z: float,
    ) -> float:
        """Sample one organic slot into events; return the chance that it ends the session."""
        item_id = self.item_ids[ranked[k]]
        events.append(Engagement(item_id, pos, "impression"))
        click = rates.exam[k] * rates.click[k]
        hide = rates.exam[k] * (1.0 - rates.click[k]) * rates.hide[k]
        if u[0] < click:
            dwell = np.exp(DWELL_LOG_MEAN + DWELL_AFFINITY * rates.affinity[k] + DWELL_SD * z)
            events.append(Engagement(item_id, pos, "click"))
            events.append(Engagement(item_id, pos, "dwell", dwell_s=float(dwell)))
            if u[1] < rates.like[k]:
                events.append(Engagement(item_id, pos, "like"))
            if u[2] < rates.share[k]:
                events.append(Engagement(item_id, pos, "share"))
            return END_ORGANIC
        if u[0] < click + hide:
            events.append(Engagement(item_id, pos, "hide"))
            return END_ORGANIC + END_AFTER_HIDE
        return END_ORGANIC

    def _play_ad(
        self,
        events: list[Engagement],
        ad: int,
        pos: int,
        click: float,
        conversion: float,
        u: np.ndarray,
        z: float,
    ) -> float:
        """Sample one ad slot into events; return the chance that it ends the session."""
        ad_id = self.ad_ids[ad]
        events.append(Engagement(ad_id, pos, "ad_impression"))
        if u[0] < click:
            events.append(Engagement(ad_id, pos, "ad_click"))
            if u[1] < conversion:
                revenue = self.ad_bids[ad] * np.exp(REVENUE_SD * z - REVENUE_SD**2 / 2)
                events.append(Engagement(ad_id, pos, "conversion", revenue=float(revenue)))
        return END_AD

    def _state(self, elapsed_s: float) -> _State:
        """The state with every shift due by elapsed_s applied. Steps are built once per set of
        shifts; calibration ramps move continuously, so their offset is added per call."""
        shifts = self.config.shifts
        active = tuple(sorted(
            (s.at_s, i) for i, s in enumerate(shifts)
            if elapsed_s >= s.at_s and s.kind != "calibration"))
        key = tuple(i for _, i in active)
        if key not in self._states:
            state = self._states[()]
            for _, i in active:
                state = self._apply(state, i)
            self._states[key] = state
        offset = sum(s.magnitude * s.ramp(elapsed_s) for s in shifts if s.kind == "calibration")
        if offset:
            return replace(self._states[key], click_offset=offset)
        return self._states[key]

    def _apply(self, state: _State, index: int) -> _State:
        """One shift; its own seeded stream keeps it independent of the traffic before it."""
        shift = self.config.shifts[index]
        rng = np.random.default_rng([self.config.seed, index])
        if shift.kind == "traffic":
            return state  # more requests, the same users: see World.request_times
        if shift.kind == "label_rate":
            return replace(state, click_scale=state.click_scale * (1.0 + shift.magnitude))
        if shift.kind == "device_mix":
            return replace(state, device_mix=_with_share(
                DEVICE_MIX, DEVICES.index("desktop"), shift.magnitude))
        if shift.kind == "surface_mix":
            return replace(state, surface_mix=_with_share(
                SURFACE_MIX, SURFACES.index("search"), shift.magnitude))
        if shift.kind == "covariate":
            targets = self._centres[rng.integers(N_TOPICS, size=len(state.vectors))]
            moved = _normalise(state.vectors + shift.magnitude * targets).astype(np.float32)
            return replace(state, vectors=moved)
        # new_interest: a topic far from all the user's current interests.
        closeness = np.maximum.reduceat(self._centres @ state.vectors.T, state.offsets[:-1], axis=1)
        topics = np.argmin(closeness + NOVELTY_NOISE * rng.random(closeness.shape), axis=0)
        extra = _around(rng, self._centres[topics], INTEREST_NOISE)
        counts = np.diff(state.offsets)
        ends = state.offsets[1:]
        weights = np.insert(state.weights, ends, shift.magnitude / counts)
        weights /= np.repeat(1.0 + shift.magnitude / counts, counts + 1)
        return replace(
            state,
            vectors=np.insert(state.vectors, ends, extra, axis=0),
            offsets=state.offsets + np.arange(len(state.offsets)),
            weights=weights,
        )

    def _draw_interests(self, rng: np.random.Generator) -> _State:
        """Each user gets a few distinct topics, mainstream ones more often, and weights on them."""
        low, high = self.config.interests_per_user
        topic_p = 1.0 / np.arange(1, N_TOPICS + 1) ** TOPIC_ZIPF
        topic_p /= topic_p.sum()
        counts = rng.integers(low, high + 1, size=self.config.n_users)
        topics = np.concatenate([rng.choice(N_TOPICS, k, replace=False, p=topic_p) for k in counts])
        prior = INTEREST_CONCENTRATION
        weights = np.concatenate([rng.dirichlet(np.full(k, prior)) for k in counts])
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        vectors = _around(rng, self._centres[topics], INTEREST_NOISE)
        return _State(vectors, offsets, weights)

    def _popularity(self) -> np.ndarray:
        """Activity-weighted mean top-slot click rate at the start: a perfect global CTR."""
        state = self._states[()]
        total = np.zeros(self.config.n_items)
        for lo in range(0, self.config.n_users, POPULARITY_CHUNK):
            hi = min(lo + POPULARITY_CHUNK, self.config.n_users)
            rows = state.vectors[state.offsets[lo] : state.offsets[hi]]
            starts = state.offsets[lo:hi] - state.offsets[lo]
            affinity = np.maximum.reduceat(rows @ self.item_embeddings.T, starts, axis=0)
            ctr = _sigmoid(CLICK_AFFINITY * affinity + self.item_quality + CLICK_BIAS)
            total += self._activity[lo:hi] @ ctr
        return total

    def _candidates(
        self, rng: np.random.Generator, state: _State, user: int, surface: str
    ) -> np.ndarray:
        """Near items per interest (just one for search: a query has one intent), then random."""
        n = self.config.candidates_per_request
        lo, hi = state.offsets[user], state.offsets[user + 1]
        weights = state.weights[lo:hi]
        n_near = round(NEAR_FRACTION[surface] * n)
        if surface == "search":
            per_interest = np.zeros(hi - lo, dtype=np.int64)
            per_interest[rng.choice(hi - lo, p=weights)] = n_near
        else:
            per_interest = rng.multinomial(n_near, weights)
        taken = np.zeros(self.config.n_items, dtype=bool)
        pool_size = min(NEAR_POOL, self.config.n_items)
        for row, k in zip(range(lo, hi), per_interest, strict=True):
            if k == 0:
                continue
            sims = self.item_embeddings @ state.vectors[row]
            pool = np.argpartition(-sims, pool_size - 1)[:pool_size]
            pool = pool[~taken[pool]]
            taken[rng.choice(pool, size=min(int(k), len(pool)), replace=False)] = True
        rest = rng.choice(np.flatnonzero(~taken), size=n - int(taken.sum()), replace=False)
        taken[rest] = True
        candidates = np.flatnonzero(taken).astype(np.int64)
        rng.shuffle(candidates)
        return candidates

    def _affinity(self, state: _State, user: int, embeddings: np.ndarray) -> np.ndarray:
        """Max cosine over the user's interests: a user likes an item if any interest does."""
        vectors = state.vectors[state.offsets[user] : state.offsets[user + 1]]
        return (embeddings @ vectors.T).max(axis=1).astype(np.float64)

    def _rates(
        self, state: _State, user: int, items: np.ndarray, positions: np.ndarray, device: str
    ) -> _Rates:
        items = np.asarray(items, dtype=np.int64)
        affinity = self._affinity(state, user, self.item_embeddings[items])
        quality = self.item_quality[items]
        logit = (CLICK_AFFINITY * affinity + quality + DEVICE_EFFECT[device] + CLICK_BIAS
                 + state.click_offset)
        return _Rates(
            affinity=affinity,
            exam=position_bias(positions),
            click=np.minimum(1.0, _sigmoid(logit) * state.click_scale),
            like=LIKE_MAX * _sigmoid(LIKE_AFFINITY * affinity + quality + LIKE_BIAS),
            share=SHARE_MAX * _sigmoid(SHARE_AFFINITY * affinity + quality + SHARE_BIAS),
            hide=HIDE_MAX * _sigmoid(HIDE_BIAS - HIDE_AFFINITY * affinity - quality),
        )

    def _ad_rates(
        self, state: _State, user: int, ads: np.ndarray, positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """P(ad_click) at each slot and P(conversion | ad_click), both rising with affinity."""
        affinity = self._affinity(state, user, self.ad_embeddings[ads])
        click = position_bias(positions) * _sigmoid(AD_CLICK_AFFINITY * affinity + AD_CLICK_BIAS)
        conversion = CONVERSION_MAX * _sigmoid(CONVERSION_AFFINITY * affinity + CONVERSION_BIAS)
        return click, conversion
