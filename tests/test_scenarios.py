"""Scenarios are how drift detectors get a change with a known time: built-ins and plug-ins load
the same way, and a wrong spec says what is wrong."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from models.scenarios import SCENARIOS, Scenario, load_scenario, shifts_at
from models.world import Shift, World, WorldConfig


class Surge:
    """A plug-in as a user writes one: a plain class, no base class."""

    name = "surge"
    signals = ("label_rate.click",)
    incidental = ("score.*",)

    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        return (Shift(change_at_s, "label_rate", 1.0), Shift(change_at_s + 5, "label_rate", -0.5))


class NoSignals(Surge):
    signals = ()


class LateStart(Surge):
    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        return (Shift(change_at_s + 1, "label_rate", 1.0),)


class Nameless:
    signals = ("x.y",)

    def shifts(self, change_at_s: float) -> tuple[Shift, ...]:
        return ()


class NeedsArguments(Surge):
    def __init__(self, factor: float) -> None:
        self.factor = factor


not_a_class = Surge()
DOC = Path(__file__).parent.parent / "docs" / "scenarios.md"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_builtins_load_by_name_and_start_at_the_change_point(name: str) -> None:
    scenario = load_scenario(name)
    assert isinstance(scenario, Scenario) and scenario.name == name
    shifts = shifts_at(scenario, 120.0)
    assert min(s.at_s for s in shifts) == 120.0
    assert scenario.signals and all("." in glob for glob in scenario.signals)
    World(WorldConfig(n_users=20, n_items=200, n_ads=5, candidates_per_request=20,
                      shifts=shifts))  # the world accepts them


def test_builtins_say_what_they_change() -> None:
    assert shifts_at(load_scenario("label_rate"), 5.0) == (Shift(5.0, "label_rate", -0.5),)
    assert shifts_at(load_scenario("covariate"), 5.0) == (Shift(5.0, "device_mix", 0.6),)
    assert shifts_at(load_scenario("stale_calibration"), 5.0) == (
        Shift(5.0, "calibration", 0.7, duration_s=10.0),)
    assert shifts_at(load_scenario("new_interest"), 5.0) == (Shift(5.0, "new_interest", 1.0),)
    assert shifts_at(load_scenario("traffic_surge"), 5.0) == (Shift(5.0, "traffic", 10.0),)
    assert shifts_at(load_scenario("surface_mix"), 5.0) == (Shift(5.0, "surface_mix", 0.9),)


def test_a_new_interest_brings_candidates_far_from_the_history() -> None:
    """What ``new_interest`` names as its signals: candidates retrieved for the new interest are
    far from everything the user engaged with before (here: the old interests themselves)."""
    world = World(WorldConfig(n_users=100, n_items=1000, n_ads=5,
                              shifts=shifts_at(load_scenario("new_interest"), 50.0)))
    rng = np.random.default_rng(0)

    def similarity_to_old_interests(elapsed_s: float) -> float:
        means = []
        for _ in range(400):
            draw = world.draw_request(rng, elapsed_s)
            old = world.interests(draw.user, 0.0)
            means.append((world.item_embeddings[draw.candidates] @ old.T).max(axis=1).mean())
        return float(np.mean(means))

    assert len(world.interests(0, 50.0)) == len(world.interests(0, 49.0)) + 1
    assert similarity_to_old_interests(50.0) < similarity_to_old_interests(49.0) - 0.02


def test_a_class_elsewhere_loads_by_its_import_path() -> None:
    scenario = load_scenario("test_scenarios:Surge")
    assert type(scenario).__name__ == "Surge" and scenario.name == "surge"
    assert [s.at_s for s in shifts_at(scenario, 10.0)] == [10.0, 15.0]


def test_the_documented_example_loads_from_a_package_outside_the_repository(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert example, "docs/scenarios.md has no example"
    package = tmp_path / "my_scenarios"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "weekend.py").write_text(example.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    scenario = load_scenario("my_scenarios.weekend:Weekend")
    assert scenario.name == "weekend"
    assert shifts_at(scenario, 3.0) == (Shift(3.0, "label_rate", -0.2),
                                        Shift(3.0, "device_mix", 0.5))
    monkeypatch.delitem(sys.modules, "my_scenarios.weekend")
    monkeypatch.delitem(sys.modules, "my_scenarios")


@pytest.mark.parametrize(("spec", "message"), [
    ("surge", "unknown scenario 'surge': give one of label_rate, covariate, stale_calibration"),
    (":Surge", "is not of the form package.module:Class"),
    ("test_scenarios:", "is not of the form package.module:Class"),
    ("no_such_package.mod:Surge", "no module named 'no_such_package'"),
    ("test_scenarios:Missing", "test_scenarios has no class 'Missing'"),
    ("test_scenarios:not_a_class", "test_scenarios has not a class but 'not_a_class'"),
    ("test_scenarios:NeedsArguments", "NeedsArguments() failed: TypeError"),
    ("test_scenarios:Nameless", "does not satisfy the Scenario interface: it has no name, "
                                "incidental"),
    ("test_scenarios:NoSignals", "signals is empty"),
])
def test_a_bad_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        load_scenario(spec)
    assert message in str(raised.value)


def test_shifts_must_start_at_the_change_point() -> None:
    with pytest.raises(ValueError, match="first shift starts at 11 s, not at the change point"):
        shifts_at(LateStart(), 10.0)
