"""The recovery as a picture: each arm's click log loss over the requests after the change, one
panel per scenario. matplotlib is optional (``pip install -e '.[bench]'``); without it the
report says the PNG was skipped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ARMS = (("frozen", "tab:red"), ("adaptive", "tab:blue"), ("retrained", "tab:green"))


def recovery_png(path: Path, curves: Mapping[str, Sequence[Mapping[str, float]]]
                 ) -> dict[str, Any]:
    """Write the PNG; what the report says about it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"png": None, "png_skipped": "matplotlib is not installed"}
    figure, panels = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), dpi=110,
                                  squeeze=False)
    for axes, (name, points) in zip(panels[0], curves.items(), strict=True):
        ends = [p["end_request"] for p in points]
        for arm, colour in ARMS:
            axes.plot(ends, [p[arm] for p in points], color=colour, label=arm)
        axes.set_title(name)
        axes.set_xlabel("requests after the change (end of a 2000-request window)")
        axes.set_ylabel("click log loss against the true probability")
        axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return {"png": str(path)}
