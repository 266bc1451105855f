"""The latency-throughput curve as a picture: p99 against offered load, one line per path, one
panel per candidates size. matplotlib is optional (``pip install -e '.[bench]'``); without it the
report says the PNG was skipped."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

PATHS = (("p99_ms", "end to end (broker)", "tab:blue"),
         ("echo_p99_ms", "echo (broker floor)", "tab:gray"),
         ("inworker_p99_ms", "in-worker", "tab:green"),
         ("http1_p99_ms", "HTTP, 1 client", "tab:orange"),
         ("http8_p99_ms", "HTTP, 8 clients", "tab:red"))


def curve_png(path: Path, by_candidates: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Write the PNG; what the report says about it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"png": None, "png_skipped": "matplotlib is not installed"}
    figure, panels = plt.subplots(1, len(by_candidates), figsize=(5 * len(by_candidates), 4.4),
                                  dpi=110, squeeze=False, sharey=True)
    for axes, (candidates, entry) in zip(panels[0], by_candidates.items(), strict=True):
        pcts = [point["offered_pct"] for point in entry["curve"]]
        for key, label, colour in PATHS:
            axes.plot(pcts, [point[key] for point in entry["curve"]], marker="o",
                      color=colour, label=label)
        axes.axhline(entry["http_serial_p99_ms"], color="tab:orange", linestyle=":",
                     label="HTTP, 1 client back to back")
        axes.axhline(entry["http_serial_floor_p99_ms"], color="tab:gray", linestyle=":",
                     label="floor: bare aiohttp + Redis + onnxruntime, back to back")
        axes.set_yscale("log")
        axes.set_title(f"{candidates} candidates (max {entry['max_requests_per_s']:g} req/s)")
        axes.set_xlabel("offered load, % of the maximum")
        axes.grid(True, which="both", alpha=0.3)
    panels[0][0].set_ylabel("p99 latency, ms")
    panels[0][0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return {"png": str(path)}
