"""The features section's recovery as a picture: events produced and committed over time, with
a mark at every kill -9. matplotlib is optional (``pip install -e '.[bench]'``); without it the
report says the PNG was skipped."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.faults.event_stream import Sample


def recovery_png(path: Path, timeline: Sequence[Sample],
                 kills: Sequence[dict[str, Any]], title: str) -> dict[str, Any]:
    """Write the PNG; what the report says about it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"png": None, "png_skipped": "matplotlib is not installed"}
    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=110)
    times = [sample[0] for sample in timeline]
    axes.plot(times, [sample[2] for sample in timeline], color="0.6", label="produced")
    axes.plot(times, [sample[1] for sample in timeline], color="tab:blue",
              label="committed by the features group")
    for k, kill in enumerate(kills):
        axes.axvline(kill["at_s"], color="tab:red", alpha=0.5, linewidth=0.8,
                     label="kill -9" if k == 0 else None)
    axes.set_xlabel("seconds since the first worker start")
    axes.set_ylabel("events")
    axes.set_title(title)
    axes.legend(loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return {"png": str(path)}
