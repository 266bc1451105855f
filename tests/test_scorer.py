"""The serving-side scorer: provider choice, model checks, value model, and no torch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.ranking_features import RANKER_FEATURE_NAMES, TASK_NAMES
from models.scorer import (
    CPU,
    CPU_ROWS_PER_RUN,
    CUDA,
    ModelError,
    PopularityScorer,
    choose_provider,
    cuda_usable,
    load_scorer,
)
from models.value import ValueModel
from schemas import FeatureLog, RankingRequest, RankingResult, decode, encode

requires_cuda = pytest.mark.skipif(not cuda_usable(), reason="no usable CUDA device")


def _auto_choice_in_a_fresh_process(manifest: Path) -> tuple[str, str]:
    """What a new process gets from ``STREAMRANK_SCORER_DEVICE=auto``: its providers and
    output shape, and everything it printed (where onnxruntime's load errors would show)."""
    script = (
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from models.scorer import load_scorer\n"
        "from models.ranking_features import RANKER_FEATURE_NAMES\n"
        f"s = load_scorer(Path({str(manifest)!r}), RANKER_FEATURE_NAMES, 'auto')\n"
        "p = s.score(np.zeros((3, len(RANKER_FEATURE_NAMES)), np.float32))\n"
        "print(s.session.get_providers(), p.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1], result.stdout + result.stderr


@pytest.mark.skipif(cuda_usable(), reason="this machine has a usable CUDA device")
def test_cpu_machine_gets_the_cpu_provider_and_prints_no_cuda_noise(
        serving_models: tuple[Path, Path]) -> None:
    choice, output = _auto_choice_in_a_fresh_process(serving_models[0])
    assert choice == "['CPUExecutionProvider'] (3, 4)"
    assert "cuda" not in output.lower()


@requires_cuda
def test_a_gpu_machine_gets_cuda_with_no_load_errors(serving_models: tuple[Path, Path]) -> None:
    choice, output = _auto_choice_in_a_fresh_process(serving_models[0])
    assert choice == f"['{CUDA}', '{CPU}'] (3, 4)"
    assert "fail" not in output.lower()


@requires_cuda
def test_cuda_scores_equal_cpu_scores(serving_models: tuple[Path, Path]) -> None:
    gpu = load_scorer(serving_models[0], RANKER_FEATURE_NAMES, "cuda")
    cpu = load_scorer(serving_models[0], RANKER_FEATURE_NAMES, "cpu")
    assert gpu.session.get_providers()[0] == CUDA
    rng = np.random.default_rng(3)
    for rows in (1, 100, 2 * CPU_ROWS_PER_RUN + 7, 20_000):
        features = rng.standard_normal((rows, len(RANKER_FEATURE_NAMES))).astype(np.float32)
        on_gpu = gpu.score(features)
        assert on_gpu.shape == (rows, len(TASK_NAMES))
        np.testing.assert_allclose(on_gpu, cpu.score(features), rtol=1e-4, atol=1e-5)


def test_a_large_batch_scored_in_slices_equals_row_by_row(
        serving_models: tuple[Path, Path]) -> None:
    scorer = load_scorer(serving_models[0], RANKER_FEATURE_NAMES, "cpu")
    rows = 2 * CPU_ROWS_PER_RUN + 7
    features = np.random.default_rng(0).standard_normal(
        (rows, len(RANKER_FEATURE_NAMES))).astype(np.float32)
    whole = scorer.score(features)
    assert whole.shape == (rows, len(TASK_NAMES))
    one_by_one = np.concatenate([scorer.score(features[k:k + 1]) for k in range(rows)])
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-5, atol=1e-6)


def test_cuda_on_a_cpu_machine_is_a_clear_error() -> None:
    if choose_provider("auto") != CPU:
        pytest.skip("this machine has a usable CUDA device")
    with pytest.raises(ModelError, match="no usable CUDA device"):
        choose_provider("cuda")


def test_model_for_other_features_is_refused(serving_models: tuple[Path, Path]) -> None:
    with pytest.raises(ModelError, match="other features"):
        load_scorer(serving_models[0], RANKER_FEATURE_NAMES[:-1], "cpu")


def test_tampered_or_unannounced_model_is_refused(serving_models: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="published sha256"):
        load_scorer(serving_models[0], RANKER_FEATURE_NAMES, "cpu", expected_sha256="0" * 64)
    copy = tmp_path / "m"
    copy.mkdir()
    (copy / "manifest.json").write_bytes(serving_models[0].read_bytes())
    model = (serving_models[0].parent / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(model[:-1] + bytes([model[-1] ^ 1]))
    with pytest.raises(ModelError, match="does not match"):
        load_scorer(copy / "manifest.json", RANKER_FEATURE_NAMES, "cpu")


def test_scores_are_probabilities_per_task(serving_models: tuple[Path, Path]) -> None:
    scorer = load_scorer(serving_models[0], RANKER_FEATURE_NAMES, "cpu", intra_op_threads=1)
    rng = np.random.default_rng(0)
    probs = scorer.score(rng.normal(size=(50, len(RANKER_FEATURE_NAMES))).astype(np.float32))
    assert probs.shape == (50, len(TASK_NAMES))
    assert ((probs > 0) & (probs < 1)).all()
    manifest = orjson.loads(serving_models[0].read_bytes())
    assert scorer.version == manifest["version"] == "test-v1"


def test_value_weights_decide_the_order() -> None:
    # Item 0: clicky but often hidden. Item 1: fewer clicks, never hidden.
    probs = np.array([[0.30, 0.0, 0.0, 0.20], [0.20, 0.0, 0.0, 0.01]], dtype=np.float32)
    ignore_hides = ValueModel({"click": 1.0}).values(probs, TASK_NAMES)
    punish_hides = ValueModel({"click": 1.0, "hide": -2.0}).values(probs, TASK_NAMES)
    assert np.argmax(ignore_hides) == 0
    assert np.argmax(punish_hides) == 1
    assert punish_hides[0] == pytest.approx(0.30 - 0.40)
    with pytest.raises(ValueError, match="lacks"):
        ValueModel({"purchase": 1.0}).values(probs, TASK_NAMES)


def test_popularity_fallback_reads_the_item_rates() -> None:
    scorer = PopularityScorer(RANKER_FEATURE_NAMES, TASK_NAMES)
    matrix = np.zeros((2, len(RANKER_FEATURE_NAMES)), dtype=np.float32)
    matrix[1, RANKER_FEATURE_NAMES.index("item_click_rate_1d")] = 0.4
    assert scorer.score(matrix)[:, 0].tolist() == pytest.approx([0.0, 0.4])


def test_serving_path_never_imports_torch() -> None:
    script = (
        "import sys\n"
        "import stream.cli, stream.app, stream.scoring.role, stream.scoring.ranker\n"
        "import stream.runtime.versioned_state, stream.runtime.state_audit\n"
        "import stream.scoring.model_kind, stream.features.role, models.scorer\n"
        "from stream.settings import Settings\n"
        "from stream.app import create_app\n"
        "create_app(Settings(), '127.0.0.1:9')\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_direct_result_encoding_is_the_schema_codecs_encoding() -> None:
    from stream.scoring.ranker import Ranked

    ranked = Ranked(
        request_id="r1", user_id="u1",
        items=[{"schema_version": 1, "item_id": f"i{k}", "value": 0.5 - k / 10,
                "probs": dict(zip(TASK_NAMES, (0.1 * k, 0.2, 0.3, 0.01), strict=True))}
               for k in range(3)],
        model_version="v7", stats_version="v7/trained", latency_ms=1.25, ts=time.time(),
        rows=np.zeros((3, len(RANKER_FEATURE_NAMES)), dtype=np.float32))

    result = decode(ranked.encode(), RankingResult)  # strict: every field known and valid

    assert [item.item_id for item in result.items] == ["i0", "i1", "i2"]
    assert result.items[1].probs["click"] == pytest.approx(0.1)
    assert (result.model_version, result.latency_ms) == ("v7", 1.25)
    assert encode(result) == ranked.encode()  # byte for byte, field order included


def test_the_feature_log_holds_the_rows_scored_exactly() -> None:
    from stream.scoring.feature_log import feature_log, logged
    from stream.scoring.ranker import Ranked

    rows = np.random.default_rng(0).normal(size=(2, len(RANKER_FEATURE_NAMES))).astype(
        np.float32)
    ranked = Ranked("r1", "u1", [{"item_id": "i3"}, {"item_id": "i1"}], "v7", "s", 1.0,
                    time.time(), rows)

    assert feature_log(ranked, rate=0.0) is None  # not sampled, and no ad decisions
    log = decode(feature_log(ranked, rate=1.0) or b"", FeatureLog)

    assert (log.item_ids, log.model_version) == (["i3", "i1"], "v7")
    assert tuple(log.feature_names) == RANKER_FEATURE_NAMES
    assert np.array_equal(np.asarray(log.rows, dtype=np.float32), rows)  # bit for bit
    chosen = sum(logged(f"r{k}", 0.1) for k in range(10_000))
    assert 900 < chosen < 1100 and logged("r1", 1.0) and not logged("r1", 0.0)


async def test_non_finite_scores_never_go_out() -> None:
    """A NaN score must fail its request (the runtime dead-letters it), not go out as null."""
    from models.ann import ItemIndex
    from models.value import ValueModel
    from stream.ads.serving import AdPlacer, BanditSlot
    from stream.features.reader import FeatureReader
    from stream.features.store import MemoryStore
    from stream.interests.retrieval import Retriever
    from stream.runtime.metrics import WorkerMetrics
    from stream.scoring.ranker import ModelSlot, NonFiniteScores, Ranker, Received
    from stream.settings import Settings

    class NaNScorer(PopularityScorer):
        def score(self, features: np.ndarray) -> np.ndarray:
            scores = super().score(features)
            if len(scores) == 6:  # three requests of two: the third one's last row
                scores[5, 0] = np.nan
            return scores

    slot = ModelSlot(Settings())
    slot.current = NaNScorer(RANKER_FEATURE_NAMES, TASK_NAMES)
    store = MemoryStore(60, 5)
    index = ItemIndex(32)
    retriever = Retriever(store, lambda: index, default_k=10, metrics=WorkerMetrics())
    ranker = Ranker(FeatureReader(store, 32), slot, ValueModel({"click": 1.0}), retriever,
                    AdPlacer(BanditSlot(Settings()), Settings()))
    requests = [Received(RankingRequest(request_id=f"r{n}", user_id="u", ts=time.time(),
                                        candidates=["i1", "i2"]), 0.0) for n in range(3)]
    with pytest.raises(NonFiniteScores, match="r2"):
        await ranker.rank(requests)
    assert len(await ranker.rank(requests[:2])) == 2  # scored alone, the others go out


async def test_concurrent_http_callers_share_one_model_run() -> None:
    from stream.scoring.ranker import MicroBatcher, Received

    calls: list[int] = []

    class CountingRanker:
        async def rank(self, received: list[Received]) -> list[str]:
            calls.append(len(received))
            await asyncio.sleep(0.01)
            return [r.request.request_id for r in received]

    batcher = MicroBatcher(CountingRanker(), max_requests=4,  # type: ignore[arg-type]
                           queue_max=16)
    requests = [Received(RankingRequest(request_id=f"r{n}", user_id="u", ts=time.time(),
                                        candidates=["i1"]), 0.0) for n in range(9)]
    results = await asyncio.gather(*(batcher.rank_one(r) for r in requests))
    assert results == [f"r{n}" for n in range(9)]  # each caller gets its own answer
    # All nine are waiting before the first run starts: runs of at most four, none alone.
    assert calls == [4, 4, 1]
