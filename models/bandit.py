"""Ad slots: a contextual bandit that places ads in a feed and logs exact propensities.

An ad earns revenue but costs organic engagement, above all by ending the session (in the
synthetic world a session ends five times as often after an ad as after an item). So each allowed
slot of a request chooses between "no ad" and every ad still allowed there by its net reward
``revenue - dial * engagement_loss``, where "no ad" nets 0 and the dial is the business knob.
The engagement loss is therefore what an ad costs *against no ad in that slot*.

Three Bayesian linear regressions over one small context vector (:data:`CONTEXT_NAMES`)
make the two reward models. Revenue is learnt where an ad was shown. The engagement loss is
learnt as a difference, because a slot shows only one of its two worlds: the organic engagement
from the slot down is learnt where no ad was shown (``organic``, on the context with its ad
columns empty), and the organic engagement below an ad where one was (``ad_engagement``). Both
are linear in the context, so the loss ``organic - ad_engagement`` and the net reward are too,
and a decision stays one dot product per ad. The weights are shared by all ads, not kept per ad:
ads come and go daily, and a new ad is judged by its features from its first request instead
of from a cold start.

Exploration is an epsilon floor around the greedy action, which maximises the optimistic net
reward (LinUCB: Li et al., WWW 2010) or, with ``alpha = 0``, its posterior mean::

    P(a) = (1 - epsilon) * 1[a = greedy] + epsilon / |feasible|

Every feasible action keeps at least ``epsilon / |feasible|`` and the propensity of what was
shown is exact, as IPS and DR need (Open Bandit Pipeline). Thompson sampling explores too, but
the probability that a sampled argmax lands on an action has no closed form, so its logged
propensities would be estimates.

Slots are decided top-down, each given the decisions above it (no ad twice, at most
``max_ads``, ``min_spacing`` between ads), so a slot's propensity is conditional on those; the
whole slate's probability is the product over its slots.

>>> ads = AdRequest(user=np.array([0.05, 0.02, 3.0]), interests=np.array([[1.0, 0.0]]),
...                 ad_ids=("a1", "a2"), bids=np.array([2.0, 0.5]),
...                 click_rates=np.array([0.1, 0.02]), conversion_rates=np.array([0.3, 0.1]),
...                 embeddings=np.array([[1.0, 0.0], [0.0, 1.0]]),
...                 organic_values=np.full(10, 0.2), slots=(2, 7, 7, 99), n=10)
>>> params = BanditParams.prior(epsilon=0.1)
>>> [(d.slot, d.ad_id, round(d.propensity, 4))
...  for d in decide(params, ads, np.random.default_rng(0))]
[(2, None, 0.9333), (7, None, 0.9333)]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

# Why the update is written here rather than taken from a library: mabwiser's linear policies
# (LinUCB, LinTS) fit one model per arm, which cannot score an ad it has never shown, and know
# nothing of slots. Vowpal Wabbit's multi-slot mode (ccb_explore_adf) has no cap on ads per
# feed, no spacing and no per-slot "no ad" action, so the propensities it logs are not those of
# the constrained policy that serves; and its Python use has crashed the interpreter
# (VowpalWabbit/vowpal_wabbit#4154: a one-line learn call on a CCB workspace; #4669: a segfault
# with --cb_type dr). A Bayesian linear update is a few lines of numpy, costs microseconds, and
# leaves every propensity in our hands.

FORMAT = 1
USER_NAMES: tuple[str, ...] = (
    "user_click_rate",     # the user's smoothed organic click rate
    "user_ad_click_rate",  # the user's smoothed ad click rate
    "user_log_activity",   # log1p of the user's recent impressions
)
CONTEXT_NAMES: tuple[str, ...] = (
    "bias",
    *USER_NAMES,
    "ad_log_bid",           # log1p(bid)
    "ad_click_rate",        # the ad's smoothed P(ad_click | impression)
    "ad_conversion_rate",   # the ad's smoothed P(conversion | ad_click)
    "ad_affinity",          # the ad's largest cosine to the user's interests (PinnerSage)
    # From here on the columns depend on the slot (and on the ads placed above it).
    "slot_discount",        # 1 / log2(slot + 2): how often a slot is examined (the DCG discount)
    "slot_depth",           # slot / n: how far down the feed
    # bid * click rate * conversion rate * slot_discount, per thousand impressions (eCPM):
    # per impression it is ~0.005, a column the ridge prior would hold at zero.
    "ad_expected_revenue",
    # The same times exp(2 * affinity) and exp(4 * affinity): a user's own click and
    # conversion rates for an ad rise with affinity multiplicatively (through a logit), which
    # no sum of the columns above can express; two exponentials span how steeply they rise.
    "ad_revenue_affinity_2",
    "ad_revenue_affinity_4",
    "displaced_value",      # the ranker's value of the item the ad pushes out, times discount
    # The ranker's values of the organic items from the slot to the feed's end, each times the
    # discount of the position it takes: what a session ended by the ad would lose.
    "value_below",
)
DIM = len(CONTEXT_NAMES)
_SLOT_COLUMNS = CONTEXT_NAMES.index("slot_discount")
_USER = slice(1, 1 + len(USER_NAMES))
_AD = slice(_USER.stop, _SLOT_COLUMNS)
_DISCOUNT, _DEPTH, _REVENUE, _REVENUE_AFFINITY, _REVENUE_AFFINITY2, _DISPLACED, _BELOW = range(
    _SLOT_COLUMNS, DIM)
_AFFINITY = CONTEXT_NAMES.index("ad_affinity")
# The columns that describe the ad: zero in the context of "no ad" at a slot.
AD_COLUMNS: tuple[int, ...] = (*range(_AD.start, _AD.stop), _REVENUE, _REVENUE_AFFINITY,
                               _REVENUE_AFFINITY2)
_WITHOUT_AD = np.ones(DIM)
_WITHOUT_AD[list(AD_COLUMNS)] = 0.0
# What revenue is learnt on: the ad's expected revenue and its affinity terms, nothing else. An
# ad earns only through its expected revenue, so revenue is a multiple of it; fitted on every
# column, the intercept and slot columns soaked up the revenue of the slots where ads were
# shown most, which halved its correlation with the truth in the bench.
# The engagement models learn on the other columns: what an ad costs depends on where it
# stands (the slot, the organic value it pushes down and cuts off), not on which ad it is.
_REVENUE_ONLY = np.zeros(DIM)
_REVENUE_ONLY[[_REVENUE, _REVENUE_AFFINITY, _REVENUE_AFFINITY2]] = 1.0
_VERSION = re.compile(r"bandit-(0|[1-9][0-9]{0,17})")
_PARTITION = re.compile(r"0|[1-9][0-9]{0,9}", re.ASCII)


def _frozen(values: Any, what: str, shape: tuple[int, ...]) -> np.ndarray:
    array = np.array(values, dtype=np.float64)
    if array.shape != shape:
        raise ValueError(f"{what} has shape {array.shape}, expected {shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite")
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class Posterior:
    """Bayesian linear regression in information form: ``A = ridge * I + sum x x^T`` and
    ``b = sum r x``. With a N(0, sigma^2 / ridge) prior on the weights and noise sigma^2, the
    posterior is N(A^-1 b, sigma^2 A^-1); sigma^2 is left to ``alpha``. The mean and A^-1 are
    computed once here, so a decision never inverts anything."""

    precision: np.ndarray  # A, [DIM, DIM]
    b: np.ndarray          # [DIM]
    mean: np.ndarray = field(init=False, repr=False)        # theta = A^-1 b
    covariance: np.ndarray = field(init=False, repr=False)  # A^-1

    def __post_init__(self) -> None:
        precision = _frozen(self.precision, "precision", (DIM, DIM))
        b = _frozen(self.b, "b", (DIM,))
        if not np.allclose(precision, precision.T, rtol=1e-9, atol=0.0):
            raise ValueError("precision must be symmetric")
        try:
            lower = np.linalg.cholesky(precision)
        except np.linalg.LinAlgError as exc:
            raise ValueError("precision must be positive definite") from exc
        inv_lower = np.linalg.inv(lower)
        covariance = inv_lower.T @ inv_lower
        mean = inv_lower.T @ (inv_lower @ b)
        for name, value in (("precision", precision), ("b", b), ("covariance", covariance),
                            ("mean", mean)):
            value.flags.writeable = False
            object.__setattr__(self, name, value)


@dataclass(frozen=True, eq=False)
class BanditParams:
    """One version of the policy: the three posteriors and the knobs that turn them into
    decisions.

    Versions are ``bandit-<n>``: the prior is ``bandit-0`` and each update or retuning is the
    next number, so a logged ``policy_version`` names exactly the distribution a decision came
    from. ``offsets`` holds, per outcomes partition, the last offset learnt from, so a learner
    restarted after publishing a version never learns those outcomes twice.
    """

    version: str
    revenue: Posterior        # revenue of an ad shown in the slot
    ad_engagement: Posterior  # organic engagement below an ad in the slot
    organic: Posterior        # organic engagement from the slot down, with no ad there
    dial: float = 1.0     # revenue given up per unit of engagement kept
    epsilon: float = 0.05  # exploration floor, shared out over the feasible actions
    alpha: float = 0.0    # LinUCB width in posterior standard deviations; 0: the mean
    samples: int = 0      # slot outcomes learnt from
    parent: str | None = None
    offsets: Mapping[int, int] = field(default_factory=dict)  # read-only once made
    net_mean: np.ndarray = field(init=False, repr=False)
    net_covariance: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not _VERSION.fullmatch(self.version):
            raise ValueError(f"version {self.version!r} is not bandit-<n>")
        if not (isinstance(self.parent, str) or self.parent is None):
            raise ValueError("parent must be a version or None")
        knobs = {"dial": self.dial, "epsilon": self.epsilon, "alpha": self.alpha}
        for name, value in knobs.items():
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.dial < 0.0 or self.alpha < 0.0:
            raise ValueError("dial and alpha must be >= 0")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) \
                or self.samples < 0:
            raise ValueError(f"samples must be a count, got {self.samples!r}")
        if not isinstance(self.offsets, Mapping) or not all(
                type(k) is int and type(v) is int and k >= 0 and v >= -1
                for k, v in self.offsets.items()):
            raise ValueError("offsets must map partitions to offsets")
        # A copy behind a read-only view: a version's offsets cannot change after it is made.
        object.__setattr__(self, "offsets", MappingProxyType(dict(self.offsets)))
        # net = revenue - dial * (organic without the ad - engagement below it): linear in the
        # context, and the three posteriors are independent.
        revenue_mean, revenue_covariance = _masked(self.revenue, _REVENUE_ONLY)
        organic_mean, organic_covariance = _masked(self.organic, _WITHOUT_AD)
        below_mean, below_covariance = _masked(self.ad_engagement, _WITHOUT_AD)
        net_mean = revenue_mean - self.dial * (organic_mean - below_mean)
        net_covariance = revenue_covariance + self.dial**2 * (
            below_covariance + organic_covariance)
        if not (np.isfinite(net_mean).all() and np.isfinite(net_covariance).all()):
            raise ValueError("the net reward model overflows")
        net_mean.flags.writeable = net_covariance.flags.writeable = False
        object.__setattr__(self, "net_mean", net_mean)
        object.__setattr__(self, "net_covariance", net_covariance)

    @classmethod
    def prior(cls, ridge: float = 1.0, dial: float = 1.0, epsilon: float = 0.05,
              alpha: float = 0.0) -> BanditParams:
        """Version 0: every weight vector N(0, 1 / ridge), so every ad nets 0 and ties "no ad",
        which wins ties: only the epsilon floor shows ads until outcomes teach otherwise."""
        if not ridge > 0.0:
            raise ValueError("ridge must be > 0")
        empty = Posterior(ridge * np.eye(DIM), np.zeros(DIM))
        return cls("bandit-0", empty, empty, empty, dial=dial, epsilon=epsilon, alpha=alpha)

    @property
    def number(self) -> int:
        return int(self.version.removeprefix("bandit-"))

    def engagement_loss(self, contexts: np.ndarray) -> np.ndarray:
        """Expected organic engagement an ad costs at each context row, against no ad."""
        return np.asarray(contexts @ (_masked(self.organic, _WITHOUT_AD)[0]
                                      - _masked(self.ad_engagement, _WITHOUT_AD)[0]))

    def expected_revenue(self, contexts: np.ndarray) -> np.ndarray:
        """Expected revenue of an ad at each context row."""
        return np.asarray(contexts @ _masked(self.revenue, _REVENUE_ONLY)[0])

    def retuned(self, number: int | None = None, *, dial: float | None = None,
                epsilon: float | None = None, alpha: float | None = None) -> BanditParams:
        """The same posteriors under other knobs, as version ``number`` (default: the next):
        a logged policy must name the dial it ran with, or its propensities cannot be trusted
        offline."""
        return BanditParams(
            f"bandit-{self.number + 1 if number is None else number}", self.revenue,
            self.ad_engagement, self.organic,
            dial=self.dial if dial is None else dial,
            epsilon=self.epsilon if epsilon is None else epsilon,
            alpha=self.alpha if alpha is None else alpha,
            samples=self.samples, parent=self.version, offsets=self.offsets)

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "format": FORMAT, "version": self.version, "parent": self.parent,
            "samples": self.samples, "dial": self.dial, "epsilon": self.epsilon,
            "alpha": self.alpha, "context_names": list(CONTEXT_NAMES),
            "offsets": {str(k): v for k, v in sorted(self.offsets.items())},
            **{name: {"precision": posterior.precision.tolist(), "b": posterior.b.tolist()}
               for name, posterior in self._posteriors().items()}})

    def _posteriors(self) -> dict[str, Posterior]:
        return {"revenue": self.revenue, "ad_engagement": self.ad_engagement,
                "organic": self.organic}

    @classmethod
    def from_bytes(cls, data: bytes) -> BanditParams:
        """Parse and check a parameter file; anything unusable raises ValueError."""
        try:
            raw = orjson.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise ValueError(f"not a format-{FORMAT} bandit parameter file")
            if raw["context_names"] != list(CONTEXT_NAMES):
                raise ValueError("the parameters were learnt on other context features")
            offsets = raw["offsets"]
            if not isinstance(offsets, dict) or not all(_PARTITION.fullmatch(k)
                                                        for k in offsets):
                raise ValueError("offsets must map partitions (written as to_bytes does) "
                                 "to offsets")
            return cls(
                version=raw["version"], parent=raw["parent"], samples=raw["samples"],
                dial=raw["dial"], epsilon=raw["epsilon"], alpha=raw["alpha"],
                offsets={int(k): v for k, v in offsets.items()},
                revenue=_posterior(raw["revenue"], "revenue"),
                ad_engagement=_posterior(raw["ad_engagement"], "ad_engagement"),
                organic=_posterior(raw["organic"], "organic"))
        except KeyError as exc:
            raise ValueError(f"bandit parameters lack {exc}") from exc
        except (TypeError, ValueError, AttributeError) as exc:  # JSONDecodeError: ValueError
            raise ValueError(f"unreadable bandit parameters: {exc}") from exc


def without_ad(contexts: np.ndarray) -> np.ndarray:
    """Context rows with their ad columns zeroed: the row of "no ad" at the same slot."""
    return np.asarray(contexts * _WITHOUT_AD)


def action_values(params: BanditParams, contexts: np.ndarray) -> np.ndarray:
    """The expected value of each action of a slot, ``revenue + dial * organic engagement from
    the slot down``, what off-policy evaluation estimates. ``contexts`` is ``[..., actions,
    DIM]`` with "no ad" (any row of the slot, :func:`without_ad`) first. The value of an ad
    less that of "no ad" is its net reward."""
    revenue = _masked(params.revenue, _REVENUE_ONLY)[0]
    organic = _masked(params.organic, _WITHOUT_AD)[0]
    below = _masked(params.ad_engagement, _WITHOUT_AD)[0]
    values = np.asarray(contexts @ revenue + params.dial * (contexts @ below))
    values[..., 0] = params.dial * (contexts[..., 0, :] @ organic)
    return values


def _masked(posterior: Posterior, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and covariance of a posterior learnt on the columns of ``mask`` only: the
    others never moved from the prior, and must not add its noise to a decision."""
    return posterior.mean * mask, posterior.covariance * np.outer(mask, mask)


def _posterior(raw: Any, what: str) -> Posterior:
    arrays = []
    for key in ("precision", "b"):
        array = np.array(raw[key])
        if array.dtype.kind not in "iuf":
            raise ValueError(f"{what}.{key} must be numbers")
        arrays.append(array)
    return Posterior(*arrays)


@dataclass(frozen=True, eq=False)
class Feedback:
    """Outcomes of logged slot decisions: the context of what was chosen (an ad's row, or the
    slot's row with empty ad columns for "no ad"), whether an ad was shown, what it earned, and
    the organic engagement from the slot down (below the ad, when there was one)."""

    contexts: np.ndarray     # [k, DIM]
    placed: np.ndarray       # bool [k]
    revenues: np.ndarray     # [k], 0 where no ad was shown
    engagements: np.ndarray  # [k]

    def __post_init__(self) -> None:
        k = len(np.atleast_1d(self.placed))
        for name, shape in (("contexts", (k, DIM)), ("revenues", (k,)),
                            ("engagements", (k,))):
            object.__setattr__(self, name, _frozen(getattr(self, name), name, shape))
        placed = np.array(self.placed)  # a copy, like the others: the feedback is a snapshot
        if placed.shape != (k,) or placed.dtype != bool:
            raise ValueError("placed must be a bool vector")
        placed.flags.writeable = False
        object.__setattr__(self, "placed", placed)


def _updated(posterior: Posterior, x: np.ndarray, y: np.ndarray) -> Posterior:
    # The k rank-one updates A += x x^T at once; averaging with the transpose makes it exactly
    # symmetric, whatever order the BLAS summed in. An overflow is refused by Posterior.
    with np.errstate(over="ignore", invalid="ignore"):
        gram = x.T @ x
        return Posterior(posterior.precision + (gram + gram.T) / 2.0, posterior.b + x.T @ y)


def learn(params: BanditParams, feedback: Feedback,
          offsets: Mapping[int, int] | None = None) -> BanditParams:
    """The next version, having learnt from ``feedback``, with ``offsets`` (per outcomes
    partition, the last offset it came from) merged into the parameters'. Bad input raises
    ValueError; ``params`` is never changed (it is immutable)."""
    placed, x = feedback.placed, feedback.contexts
    ads = x[placed]
    return BanditParams(
        f"bandit-{params.number + 1}",
        _updated(params.revenue, ads * _REVENUE_ONLY, feedback.revenues[placed]),
        _updated(params.ad_engagement, ads * _WITHOUT_AD, feedback.engagements[placed]),
        _updated(params.organic, x[~placed] * _WITHOUT_AD, feedback.engagements[~placed]),
        dial=params.dial, epsilon=params.epsilon, alpha=params.alpha,
        samples=params.samples + len(x), parent=params.version,
        offsets={**params.offsets, **(offsets or {})})


@dataclass(frozen=True, eq=False)
class AdRequest:
    """What the serving path knows when it places the ads of one ranking. Row ``i`` of the
    ad arrays describes ``ad_ids[i]``; ``organic_values`` are the ranker's values of the items
    it will show, best first; ``slots`` and ``n`` are the request's, unchecked."""

    user: np.ndarray             # [len(USER_NAMES)]
    interests: np.ndarray        # [k, dim]: the user's interests (k = 0: unknown, affinity 0)
    ad_ids: Sequence[str]
    bids: np.ndarray             # [k], >= 0
    click_rates: np.ndarray      # [k]
    conversion_rates: np.ndarray  # [k]
    embeddings: np.ndarray       # [k, dim]
    organic_values: np.ndarray   # [m]
    slots: Sequence[int]
    n: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ad_ids", tuple(self.ad_ids))
        k = len(self.ad_ids)
        k_interests, dim = np.shape(self.interests) if np.ndim(self.interests) == 2 else (-1, -1)
        for name, shape in (("user", (len(USER_NAMES),)), ("interests", (k_interests, dim)),
                            ("bids", (k,)), ("click_rates", (k,)),
                            ("conversion_rates", (k,)), ("embeddings", (k, dim)),
                            ("organic_values", (np.size(self.organic_values),))):
            object.__setattr__(self, name, _frozen(getattr(self, name), name, shape))
        if (self.bids < 0.0).any():
            raise ValueError("bids must be >= 0")


@dataclass(frozen=True, eq=False)
class SlotDecision:
    """What one slot got, and the whole distribution it was drawn from (OBP's action_dist)."""

    slot: int
    ad_id: str | None              # None: no ad
    propensity: float              # P(this choice | the decisions above it)
    context: np.ndarray            # [DIM] of the choice, for the feature log and learning
    actions: tuple[str | None, ...]  # the feasible actions, "no ad" (None) first
    probabilities: np.ndarray      # P of each of ``actions``
    ad_contexts: np.ndarray        # [len(actions) - 1, DIM]: each feasible ad's context (OPE)


def valid_slots(slots: Iterable[int], n: int) -> list[int]:
    """The slots that can hold an ad, top-down: each once, within a feed of ``n``. The rest are
    dropped, not refused: a sloppy or hostile request still gets its feed."""
    return sorted({int(slot) for slot in slots if 0 <= slot < n})


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return np.asarray(rows / np.maximum(norms, 1e-12))


def _affinity(embeddings: np.ndarray, interests: np.ndarray) -> np.ndarray:
    """Each ad's largest cosine to any of the user's interests: a user with two interests
    likes an ad that either likes, where their mean would smear the two into neither."""
    if len(interests) == 0:
        return np.zeros(len(embeddings))
    return np.asarray((_unit(embeddings) @ _unit(interests).T).max(axis=1))


def _ad_columns(request: AdRequest) -> tuple[np.ndarray, np.ndarray]:
    """Context rows with the slot columns still zero, and each ad's revenue columns before the
    slot's discount: its eCPM times 1, exp(2 * affinity) and exp(4 * affinity)."""
    x = np.zeros((len(request.ad_ids), DIM))
    x[:, 0] = 1.0
    x[:, _USER] = request.user
    affinity = _affinity(request.embeddings, request.interests)
    x[:, _AD] = np.column_stack((np.log1p(request.bids), request.click_rates,
                                 request.conversion_rates, affinity))
    ecpm = request.bids * request.click_rates * request.conversion_rates * 1000.0
    return x, ecpm[:, None] * np.exp(np.outer(affinity, (0.0, 2.0, 4.0)))


# The DCG discount of every feed position a request may have (n and its slots are <= 10,000).
_DISCOUNTS = 1.0 / np.log2(np.arange(20_002) + 2.0)


def _fill_slot(x: np.ndarray, revenue_terms: np.ndarray, slot: int, n: int,
               organic_values: np.ndarray, ads_above: int) -> np.ndarray:
    """Set the slot columns of ``x`` in place."""
    rank = slot - ads_above  # the organic item the ad pushes down, were it there
    below = organic_values[rank:]
    discount = _DISCOUNTS[slot]
    x[:, _DISCOUNT] = discount
    x[:, _DEPTH] = slot / n
    x[:, _REVENUE:_REVENUE_AFFINITY2 + 1] = revenue_terms * discount
    x[:, _DISPLACED] = below[0] * discount if len(below) else 0.0
    x[:, _BELOW] = below @ _DISCOUNTS[slot:slot + len(below)]
    return x


def slot_contexts(request: AdRequest, slot: int, ads_above: int = 0) -> np.ndarray:
    """Context rows ``[len(ad_ids), DIM]`` of each ad at ``slot``, below ``ads_above`` ads."""
    x, revenue_terms = _ad_columns(request)
    return _fill_slot(x, revenue_terms, slot, request.n, request.organic_values, ads_above)


def net_scores(params: BanditParams, contexts: np.ndarray) -> np.ndarray:
    """Optimistic net reward of each context row: the posterior mean of revenue minus dial
    times loss, plus ``alpha`` posterior standard deviations of it."""
    mean = contexts @ params.net_mean
    if params.alpha == 0.0:
        return np.asarray(mean)
    variance = np.einsum("ij,ij->i", contexts @ params.net_covariance, contexts)
    return np.asarray(mean + params.alpha * np.sqrt(np.maximum(variance, 0.0)))


def action_probabilities(params: BanditParams, contexts: np.ndarray) -> np.ndarray:
    """The policy at one slot: P(no ad), then P(ad i) for each context row ``i``. The greedy
    action gets ``1 - epsilon`` on top of the floor; "no ad" (score 0) wins ties."""
    scores = np.zeros(len(contexts) + 1)
    scores[1:] = net_scores(params, contexts)
    probabilities = np.full(len(scores), params.epsilon / len(scores))
    probabilities[int(np.argmax(scores))] += 1.0 - params.epsilon
    return probabilities


def _draw(probabilities: np.ndarray, rng: np.random.Generator) -> int:
    cdf = np.cumsum(probabilities)
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(index, len(probabilities) - 1)


def decide(params: BanditParams, request: AdRequest, rng: np.random.Generator,
           max_ads: int = 3, min_spacing: int = 3) -> list[SlotDecision]:
    """One decision per valid slot, top-down. An ad is feasible at a slot while fewer than
    ``max_ads`` are placed, the slot is at least ``min_spacing`` positions below the last ad,
    the ad is not in the feed yet (a repeated id counts once), and the feed reaches the slot:
    a short feed of ``m`` organic items ends after position ``m + ads above``, and a slot past
    it is not returned. A slot where only "no ad" is feasible gets it with propensity 1, which is
    exact. ``rng`` should be seeded per request, so that every path serving the same request
    logs the same decisions."""
    base, revenue_terms = _ad_columns(request)
    without_ad = np.zeros((1, DIM))  # the context of "no ad": the user and the slot only
    without_ad[0, 0], without_ad[0, _USER] = 1.0, request.user
    organic = request.organic_values
    ids = np.asarray(request.ad_ids, dtype=object)
    first_of_id = {ad_id: row for row, ad_id in reversed(list(enumerate(request.ad_ids)))}
    available = np.zeros(len(ids), dtype=bool)
    available[list(first_of_id.values())] = True
    decisions: list[SlotDecision] = []
    placed, last = 0, -min_spacing
    for slot in valid_slots(request.slots, request.n):
        if slot > len(request.organic_values) + placed:
            break
        room = placed < max_ads and slot - last >= min_spacing
        rows = np.flatnonzero(available) if room else np.empty(0, dtype=np.int64)
        x = _fill_slot(base[rows], revenue_terms[rows], slot, request.n, organic, placed)
        probabilities = action_probabilities(params, x)
        choice = _draw(probabilities, rng)
        actions: tuple[str | None, ...] = (None, *ids[rows].tolist())
        if choice == 0:
            context = _fill_slot(without_ad, np.zeros((1, 3)), slot, request.n, organic,
                                 placed)[0].copy()
        else:
            available[rows[choice - 1]] = False
            placed, last, context = placed + 1, slot, x[choice - 1]
        probabilities.flags.writeable = context.flags.writeable = x.flags.writeable = False
        decisions.append(SlotDecision(slot, actions[choice], float(probabilities[choice]),
                                      context, actions, probabilities, x))
    return decisions
