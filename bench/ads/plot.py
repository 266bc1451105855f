"""The revenue / engagement frontier as a picture: the learnt policy with its dial turned, the fixed
ad loads as reference points, and the policy's cumulative regret. matplotlib is optional."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def frontier_png(path: Path, frontier: Sequence[Mapping[str, float]],
                 fixed: Mapping[str, Mapping[str, float]], regret: Sequence[float]
                 ) -> dict[str, Any]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"png": None, "png_skipped": "matplotlib is not installed"}
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    left.plot([p["engagement"] for p in frontier], [p["revenue"] for p in frontier],
              marker="o", color="tab:blue", label="the learnt policy, its dial turned")
    for point in frontier:
        left.annotate(f"dial {point['dial']:g}", (point["engagement"], point["revenue"]),
                      textcoords="offset points", xytext=(4, 4), fontsize=8)
    left.scatter([p["engagement"] for p in fixed.values()],
                 [p["revenue"] for p in fixed.values()], marker="s", color="tab:red",
                 label="fixed ad loads")
    for name, point in fixed.items():
        left.annotate(name, (point["engagement"], point["revenue"]),
                      textcoords="offset points", xytext=(4, -10), fontsize=7, color="tab:red")
    left.set(xlabel="organic engagement per request", ylabel="ad revenue per request",
             title="Revenue against engagement")
    left.legend(fontsize=8)
    right.plot(range(1, len(regret) + 1), regret, marker="o", color="tab:purple")
    right.set(xlabel="checkpoint (tenths of the run)", ylabel="cumulative regret vs oracle",
              title="Policy regret")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return {"png": str(path)}
