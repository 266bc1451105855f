"""Scenarios: named changes of the synthetic world at a known time, for scoring drift detectors.

A drift detector can only be judged against a change whose time and kind are known. A scenario
says what changes (the world's :class:`~models.world.Shift` list, given the change point) and
which drift signals a correct detector should then alert on. ``streamrank demo --scenario``
plays one by name, or any class by its import path, so a scenario written outside this
repository is played the same way (docs/scenarios.md)::

    >>> scenario = load_scenario("label_rate")
    >>> shifts_at(scenario, 100.0)
    (Shift(at_s=100.0, kind='label_rate', magnitude=-0.5, duration_s=0.0),)
    >>> scenario.signals
    ('label_rate.click', 'calibration.click')

Signals are globs over drift-alert signal names (``<family>.<name>``, as in
:class:`schemas.DriftAlert`). A benchmark counts an alert that matches ``signals`` as a
detection, ignores one that matches only ``incidental`` (those signals truly move too, but as a
side effect, slowly or a little), and counts any other as a false alarm.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from models.world import Shift

# Smoothed click rates count clicks as they happen, so any change in clicking moves them (and,
# through them, the model's scores) a while after the change.
CLICK_FOLLOWERS = ("feature.*click_rate*", "score_mean.*", "logloss.*")


@runtime_checkable
class Scenario(Protocol):
    """The interface of a scenario plug-in: a class whose no-argument instance has these."""

    @property
    def name(self) -> str:
        """Short, for reports and logs."""
        ...

    @property
    def signals(self) -> tuple[str, ...]:
        """Globs of the signals a correct detector alerts on after the change."""
        ...

    @property
    def incidental(self) -> tuple[str, ...]:
        """Globs of signals that move too, as a side effect: an alert there is no error."""
        ...

    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        """The world's shifts for a change at ``change_at_s`` (world seconds); the first starts
        there."""
        ...


@dataclass(frozen=True)
class LabelRate:
    """Users click less, from one moment on: P(click | examined) times ``click_scale``.

    Every item loses the same share of its clicks, so rankings keep their order, but a model
    trained before now over-predicts clicks: calibration drifts with the label rate. Likes and
    shares, which follow clicks, fall with them.
    """

    click_scale: float = 0.5

    name = "label_rate"
    signals = ("label_rate.click", "calibration.click")
    incidental = ("label_rate.*", "calibration.*", *CLICK_FOLLOWERS)

    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        return (Shift(change_at_s, "label_rate", self.click_scale - 1.0),)


@dataclass(frozen=True)
class Covariate:
    """A covariate shift in one feature: the desktop share of requests goes from 0.3 to
    ``desktop_share`` (mobile and tablet keep their 6:1 ratio).

    How users behave on each device stays as it was, so a model that reads the device stays
    calibrated. Desktop users click less (DEVICE_EFFECT), so the overall click rate falls a
    little (about 8% with the default), and the model's scores move with the device columns.
    """

    desktop_share: float = 0.6

    name = "covariate"
    signals = ("feature.device_desktop", "feature.device_mobile")
    incidental = ("feature.device_tablet", "label_rate.*", *CLICK_FOLLOWERS)

    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        return (Shift(change_at_s, "device_mix", self.desktop_share),)


@dataclass(frozen=True)
class StaleCalibration:
    """A stale model: its calibration drifts while its ranking stays fine.

    Every organic click logit rises by the same amount, on a ramp from the change point to
    ``logit_offset`` after ``ramp_s`` world seconds. The true order of every request's
    candidates is unchanged, so the served ranking's quality against the oracle holds, while a
    model trained before the change under-predicts more and more. Retrains learn the new
    rates: play it with ``--retrain-every 0`` to keep the model stale.
    """

    logit_offset: float = 0.7  # about twice the clicks on items with a low click rate
    ramp_s: float = 10.0

    name = "stale_calibration"
    signals = ("calibration.click", "label_rate.click")
    incidental = ("label_rate.*", "calibration.*", *CLICK_FOLLOWERS)

    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        return (Shift(change_at_s, "calibration", self.logit_offset, duration_s=self.ramp_s),)


@dataclass(frozen=True)
class NewInterest:
    """Every user takes up a new interest, on a topic far from their old ones.

    The new interest retrieves candidates with ``weight`` / k of the old interests' total
    weight (1.0: as often as an average old one), and the user clicks near it as readily as
    near the others. No history is there yet, so the candidates it brings are far from all
    the user engaged with: the candidates' similarity to the history (``sim_max``,
    ``sim_mean``) falls, on the world's default config from 0.42 to 0.34 in mean cosine to the
    old interests per feed request. It is the interests role's test: a medoid should appear
    near the new interest (PinnerSage's online update opens one at the first far action).
    Users click more, as they like more of what they are shown, and a model trained before
    under-predicts those clicks: label rates, calibration and scores move a little too.
    """

    weight: float = 1.0

    name = "new_interest"
    signals = ("feature.sim_max", "feature.sim_mean")
    incidental = ("feature.cand_centroid_sim", "label_rate.*", "calibration.*",
                  *CLICK_FOLLOWERS)

    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        return (Shift(change_at_s, "new_interest", self.weight),)


@dataclass(frozen=True)
class TrafficSurge:
    """Every user sends ``factor`` times as many requests, from one moment on.

    How users engage does not change, so the truth behind every shown item stays as it was;
    only each world second holds more requests. The decayed counters inflate: the 1 h ones
    reach ``factor`` times their level within a few hours, the longer ones follow slowly, and
    the time since a user's or item's last event shrinks. A model trained before reads the
    inflated counts as other users and items than they are: it is BatchNorm adaptation's case,
    a covariate shift of scale.
    """

    factor: float = 10.0  # a flash sale; at 3x the decayed counters move about one sd

    name = "traffic_surge"
    signals = ("feature.user_log_impression_1h", "feature.item_log_impression_1h")
    incidental = ("feature.*_log_*", "feature.*log_since_last*", "label_rate.*",
                  "calibration.*", *CLICK_FOLLOWERS)

    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        return (Shift(change_at_s, "traffic", self.factor),)


@dataclass(frozen=True)
class SurfaceMix:
    """Most requests come from search instead of the feed, from one moment on.

    A search retrieves its candidates near one of the user's interests, not across all of them,
    so the candidates of a request are closer to each other and to the user's history: the
    similarity features move as a whole. How users engage with a shown item does not change.
    A model trained on a mostly-feed world normalizes those features with the feed's moments.
    """

    search_share: float = 0.9  # from 0.2 (SURFACE_MIX); feed and related keep their 7:1 ratio

    name = "surface_mix"
    signals = ("feature.surface_search", "feature.surface_feed")
    incidental = ("feature.surface_related", "feature.sim_*", "feature.cand_*",
                  "label_rate.*", "calibration.*", *CLICK_FOLLOWERS)

    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        return (Shift(change_at_s, "surface_mix", self.search_share),)


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls for cls in (LabelRate, Covariate, StaleCalibration, NewInterest, TrafficSurge,
                              SurfaceMix)}


def load_scenario(spec: str) -> Scenario:
    """A built-in scenario by name, or ``package.module:Class`` instantiated with no arguments.

    Every way a spec can be wrong is a ValueError that says which, so the CLI can show it as
    one line.
    """
    if spec in SCENARIOS:
        return SCENARIOS[spec]()
    module_name, colon, class_name = spec.partition(":")
    if not colon:
        raise ValueError(f"unknown scenario {spec!r}: give one of {', '.join(SCENARIOS)}, or "
                         "package.module:Class")
    if not module_name or not class_name.isidentifier():
        raise ValueError(f"scenario {spec!r} is not of the form package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and f"{module_name}.".startswith(f"{exc.name}."):
            raise ValueError(f"scenario {spec!r}: no module named {exc.name!r}") from exc
        raise ValueError(f"scenario {spec!r}: importing {module_name} failed: {exc}") from exc
    except Exception as exc:  # the plug-in's own code; any failure is the spec's
        raise ValueError(f"scenario {spec!r}: importing {module_name} failed: {exc!r}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        what = "no class" if cls is None else "not a class but"
        raise ValueError(f"scenario {spec!r}: {module_name} has {what} {class_name!r}")
    try:
        scenario = cls()
    except Exception as exc:  # the plug-in's own code
        raise ValueError(f"scenario {spec!r}: {class_name}() failed: {exc!r}") from exc
    _check(spec, scenario)
    return scenario


def shifts_at(scenario: Scenario, change_at_s: float) -> tuple[Shift, ...]:
    """The scenario's shifts for a change at ``change_at_s``, checked: a benchmark measures
    every delay from the change point, so the first shift must start exactly there."""
    try:
        shifts = tuple(scenario.shifts(change_at_s))
    except Exception as exc:  # the plug-in's own code, a Shift it built wrong included
        raise ValueError(f"scenario {scenario.name!r}: shifts() failed: {exc}") from exc
    if not shifts or not all(isinstance(s, Shift) for s in shifts):
        raise ValueError(f"scenario {scenario.name!r}: shifts() must return Shift objects, "
                         f"at least one, not {shifts!r}")
    first = min(s.at_s for s in shifts)
    if first != change_at_s:
        raise ValueError(f"scenario {scenario.name!r}: its first shift starts at {first:g} s, "
                         f"not at the change point {change_at_s:g} s")
    return shifts


def _check(spec: str, scenario: object) -> None:
    """isinstance() on a protocol only sees that the members exist; their types matter too."""
    if not isinstance(scenario, Scenario):
        missing = [m for m in ("name", "signals", "incidental", "shifts")
                   if not hasattr(scenario, m)]
        raise ValueError(f"scenario {spec!r} does not satisfy the Scenario interface: it has "
                         f"no {', '.join(missing)}")
    if not isinstance(scenario.name, str) or not scenario.name:
        raise ValueError(f"scenario {spec!r}: name must be a non-empty str")
    for member in ("signals", "incidental"):
        globs = getattr(scenario, member)
        if not isinstance(globs, tuple) or not all(isinstance(g, str) and g for g in globs):
            raise ValueError(f"scenario {spec!r}: {member} must be a tuple of signal globs")
    if not scenario.signals:
        raise ValueError(f"scenario {spec!r}: signals is empty, so nothing could be detected")
    if not callable(scenario.shifts):
        raise ValueError(f"scenario {spec!r}: shifts must be a method")
