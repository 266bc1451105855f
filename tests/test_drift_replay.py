"""``streamrank drift replay`` on series with a known step, and on files it cannot read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.test_cli import streamrank

STEP = 2000


def write_series(path: Path) -> None:
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.normal(0.1, 0.05, STEP), rng.normal(0.2, 0.05, 1000)])
    rows = [{"ts": 1_790_000_000.0 + i, "signal": "score_mean.click", "value": float(v)}
            for i, v in enumerate(values)]
    rows += [{"ts": 1_790_000_000.0 + i, "signal": "feature.sim_max", "value": 0.5}
             for i in range(500)]
    if path.suffix == ".csv":
        path.write_text("ts,signal,value\n" + "".join(
            f"{r['ts']},{r['signal']},{r['value']}\n" for r in rows))
    else:
        path.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_replay_finds_the_known_step(tmp_path: Path, suffix: str) -> None:
    series, out = tmp_path / f"series{suffix}", tmp_path / "out.json"
    write_series(series)
    result = streamrank("drift", "replay", str(series), "--param", "delta=0.002",
                        "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = orjson.loads(out.read_bytes())
    assert report["values"] == {"score_mean.click": 3000, "feature.sim_max": 500}
    found = report["detections"]
    assert len(found) >= 1 and {d["signal"] for d in found} == {"score_mean.click"}
    first = found[0]
    assert STEP < first["update"] < STEP + 200
    assert first["direction"] == "up"
    assert first["before"]["mean"] == pytest.approx(0.1, abs=0.01)
    assert first["after"]["mean"] == pytest.approx(0.2, abs=0.03)


def test_page_hinkley_can_be_chosen_with_its_parameters(tmp_path: Path) -> None:
    series = tmp_path / "series.csv"
    write_series(series)
    result = streamrank("drift", "replay", str(series), "--detector", "page_hinkley",
                        "--param", "threshold=5", "--param", "delta=0.005")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["detector"] == "page_hinkley"
    assert any(STEP < d["update"] < STEP + 300 for d in report["detections"])


@pytest.mark.parametrize(("content", "args", "message"), [
    ('{"ts": 1, "signal": "a.b"}\n', (), "series.jsonl:1: missing field 'value'"),
    ('{"ts": 1, "signal": "a.b", "value": 1}\nnot json\n', (), "series.jsonl:2:"),
    ('{"ts": 1, "signal": "a.b", "value": "NaN"}\n', (), "must be finite"),
    ('{"ts": 1, "signal": "a.b", "value": 1}\n', ("--detector", "cusum"),
     "--detector must be one of adwin, page_hinkley, kswin"),
    ('{"ts": 1, "signal": "a.b", "value": 1}\n', ("--param", "delta"), "expected name=number"),
    ('{"ts": 1, "signal": "a.b", "value": 1}\n', ("--param", "colour=2"),
     "adwin does not take these parameters"),
])
def test_a_bad_series_or_option_is_a_clear_error(tmp_path: Path, content: str,
                                                  args: tuple[str, ...], message: str) -> None:
    series = tmp_path / "series.jsonl"
    series.write_text(content)
    result = streamrank("drift", "replay", str(series), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
