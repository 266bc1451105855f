"""``streamrank bench faults``: nothing lost, nothing twice, with the real worker killed by
SIGKILL and the feature store's Redis killed under it.

Each section runs in a fresh environment of its own (broker, private Redis, topic prefix) and
returns a dict; a new role adds its own module and one entry in :data:`SECTIONS`:

- ``features`` (:mod:`.features`): a features worker killed and restarted many times while a
  known stream is produced and caught up; every entity's counters against the closed form;
- ``redis_outage`` (:mod:`.outage`): Redis killed with SIGKILL mid-stream and restarted from its
  append-only file after the outage; the same comparison, and the worker's ``/health`` meanwhile;
- ``scoring`` (:mod:`.scoring`): a scoring worker killed and restarted under a steady request
  rate; every request must get a result or an ``expired`` dead letter;
- ``outcomes`` (:mod:`.outcomes`): an outcomes worker killed and restarted while rankings and
  events flow; every shown item and ad slot must have exactly one outcome.

The bar is every ``*_lost``, ``*_double_counted``, ``requests_unanswered``, ``missing``,
``duplicated`` and ``labels_wrong`` at 0; the report
says whether it was met and by what, and the command still exits 0: it measures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from bench.faults.config import FaultsConfig
from bench.faults.features import features_section
from bench.faults.outage import redis_outage_section
from bench.faults.outcomes import outcomes_section
from bench.faults.scoring import scoring_section
from stream.settings import Settings

Section = Callable[[Settings, FaultsConfig], dict[str, Any]]
SECTIONS: dict[str, Section] = {
    "features": features_section,
    "redis_outage": redis_outage_section,
    "scoring": scoring_section,
    "outcomes": outcomes_section,
}
BAR_KEYS = ("events_lost", "events_double_counted", "requests_unanswered", "missing",
            "duplicated", "labels_wrong")


def parse_sections(text: str) -> tuple[str, ...]:
    """``"features,scoring"`` -> names in the given order; ValueError naming the known ones."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in SECTIONS]
    if not names or unknown:
        raise ValueError(f"--sections must be a comma-separated subset of "
                         f"{','.join(SECTIONS)}, not {text!r}")
    return names


def run_faults_bench(settings: Settings, sections: Sequence[str], config: FaultsConfig
                     ) -> dict[str, Any]:
    load_before = os.getloadavg()
    report: dict[str, Any] = {}
    for name in sections:
        report[name] = SECTIONS[name](settings, config)
    failures = [f"{name}.{key} = {figures[key]}" for name, figures in report.items()
                for key in BAR_KEYS if figures.get(key)]
    return {
        **report,
        "bar_met": not failures,
        "bar_failures": failures,
        "sections": list(sections),
        "config": {"events": config.events, "kills": config.kills,
                   "scoring_kills": config.scoring_kills,
                   "outcome_kills": config.outcome_kills, "outage_s": config.outage_s,
                   "uptime_s": list(config.uptime_s), "seed": config.seed,
                   "session_timeout_ms": config.session_timeout_ms,
                   "rebalance_timeout_ms": config.rebalance_timeout_ms},
        "broker": "configured" if settings.broker_url else "embedded tansu, fresh per section",
        "store": "private redis-server per section",
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
    }
