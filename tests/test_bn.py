"""AdaBN statistics (models/bn.py): the closed form, layer by layer, the guards, and the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.bn import (  # noqa: E402
    BN_LAYERS,
    Adapted,
    BnStats,
    Guards,
    OnnxTaps,
    Refused,
    StatsError,
    adapt,
    judge,
)
from models.ranker import MultiTaskRanker, export_onnx  # noqa: E402
from models.scorer import CPU, Manifest, OnnxScorer  # noqa: E402

N_FEATURES = 6
GUARDS = Guards(momentum=0.2, min_rows=500, max_step_sd=5.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[MultiTaskRanker, Manifest]:
    torch.manual_seed(3)
    model = MultiTaskRanker(N_FEATURES, 2, hidden1=12, hidden2=8)
    model.train()
    with torch.no_grad():
        for _ in range(20):  # running statistics away from their initial 0 and 1
            model(torch.randn(256, N_FEATURES) * 2 + 1)
    model.eval()
    path = export_onnx(model, [f"f{i}" for i in range(N_FEATURES)], ["click", "like"],
                       tmp_path_factory.mktemp("bn") / "m1", "m1", {})
    return model, Manifest.load(path)


def taps_of(manifest: Manifest) -> OnnxTaps:
    assert manifest.taps is not None
    return OnnxTaps(manifest.model_path.parent / manifest.taps["file"], manifest.taps["sha256"])


def shifted_rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, N_FEATURES)) * 2.5 + 2.0).astype(np.float32)


def blend(old: torch.Tensor, batch: torch.Tensor, momentum: float) -> np.ndarray:
    return ((1 - momentum) * old + momentum * batch).numpy()


def test_adapted_statistics_are_adabn_closed_form_layer_by_layer(exported) -> None:
    model, manifest = exported
    trained = manifest.trained_stats()
    rows = shifted_rows(2000)
    result = adapt(trained, trained, rows, GUARDS, taps_of(manifest))
    assert isinstance(result, Adapted)
    m = GUARDS.momentum
    with torch.no_grad():
        x = torch.from_numpy(rows).double()
        expected = {}
        layer_input = x
        for name, linear in (("bn_input", model.hidden1), ("bn_hidden1", model.hidden2),
                             ("bn_hidden2", None)):
            bn = getattr(model, name)
            mean = blend(bn.running_mean.double(), layer_input.mean(0), m)
            # The mixture's variance: PyTorch's blend plus the spread between the two means.
            var = blend(bn.running_var.double(), layer_input.var(0, unbiased=True), m) + (
                m * (1 - m) * (layer_input.mean(0) - bn.running_mean.double()) ** 2).numpy()
            expected[name] = (mean, var)
            if linear is None:
                break
            # The next layer's input under the statistics just adapted, not the trained ones.
            normed = torch.nn.functional.batch_norm(
                layer_input, torch.from_numpy(mean), torch.from_numpy(var),
                bn.weight.double(), bn.bias.double(), training=False, eps=bn.eps)
            if name != "bn_input":
                normed = torch.relu(normed)
            layer_input = normed @ linear.weight.double().T
    for name in BN_LAYERS:
        np.testing.assert_allclose(result.layers[name][0], expected[name][0], rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_allclose(result.layers[name][1], expected[name][1], rtol=1e-4)
    # Not the trained statistics' inputs: the hidden layers saw the adapted ones.
    frozen_hidden = adapt(trained, trained, rows, GUARDS, lambda r, s: taps_of(manifest)(
        r, {n: trained.layers[n] for n in s}))
    assert isinstance(frozen_hidden, Adapted)
    assert not np.allclose(frozen_hidden.layers["bn_hidden1"][0], result.layers["bn_hidden1"][0])


def test_onnx_with_adapted_statistics_equals_torch(exported) -> None:
    model, manifest = exported
    trained = manifest.trained_stats()
    result = adapt(trained, trained, shifted_rows(2000), GUARDS, taps_of(manifest))
    assert isinstance(result, Adapted)
    adapted = trained.successor(1, layers=result.layers)
    scorer = OnnxScorer(manifest, CPU, 1, adapted)
    assert scorer.stats_version == "bn-1"
    x = shifted_rows(64, seed=1)
    with torch.no_grad():
        clone = MultiTaskRanker(N_FEATURES, 2, hidden1=12, hidden2=8)
        clone.load_state_dict(model.state_dict())
        for name, (mean, var) in adapted.layers.items():
            getattr(clone, name).running_mean.copy_(torch.from_numpy(mean))
            getattr(clone, name).running_var.copy_(torch.from_numpy(var))
        want = clone.eval()(torch.from_numpy(x)).numpy()
        trained_out = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(scorer.score(x), want, atol=1e-5)
    assert np.abs(want - trained_out).max() > 1e-3  # the statistics did change the scores
    np.testing.assert_allclose(OnnxScorer(manifest, CPU, 1).score(x), trained_out, atol=1e-5)


def test_nan_and_inf_rows_are_rejected_and_counted(exported) -> None:
    _, manifest = exported
    trained = manifest.trained_stats()
    rows = shifted_rows(1000)
    poisoned = np.concatenate([rows, np.full((7, N_FEATURES), np.nan, np.float32),
                               np.full((3, N_FEATURES), np.inf, np.float32)])
    poisoned[3, 2] = np.nan
    clean = np.delete(rows, 3, axis=0)
    got = adapt(trained, trained, poisoned, GUARDS, taps_of(manifest))
    want = adapt(trained, trained, clean, GUARDS, taps_of(manifest))
    assert isinstance(got, Adapted) and isinstance(want, Adapted)
    assert got.rows_rejected == 11 and got.rows_used == 999
    for name in BN_LAYERS:
        np.testing.assert_array_equal(got.layers[name][0], want.layers[name][0])


def test_a_tiny_batch_is_refused(exported) -> None:
    _, manifest = exported
    trained = manifest.trained_stats()
    got = adapt(trained, trained, shifted_rows(GUARDS.min_rows - 1), GUARDS, taps_of(manifest))
    assert isinstance(got, Refused) and got.reason == "min_rows"


def test_a_thousandfold_jump_is_refused_by_the_step_cap(exported) -> None:
    _, manifest = exported
    trained = manifest.trained_stats()
    rows = shifted_rows(2000)
    rows[:, 1] *= 1000.0  # a client that changed a unit
    got = adapt(trained, trained, rows, Guards(), taps_of(manifest))
    assert isinstance(got, Refused) and got.reason == "step_cap"
    assert "bn_input[1]" in got.detail


def test_a_channel_constant_in_training_passes_the_step_cap(exported) -> None:
    # A flag always on in training has a float-rounding variance (1e-13); the same flag in live
    # rows is no step, and the blended variance is floored, not refused.
    _, manifest = exported
    trained = manifest.trained_stats()
    mean, var = trained.layers["bn_input"]
    constant = trained.successor(1, layers={**trained.layers, "bn_input": (
        mean.copy(), var.copy())})
    constant.layers["bn_input"][0][3] = np.float32(0.99999976)
    constant.layers["bn_input"][1][3] = np.float32(3.5e-13)
    rows = shifted_rows(2000)
    rows[:, 3] = 1.0
    got = adapt(constant, constant, rows, Guards(), taps_of(manifest))
    assert isinstance(got, Adapted), got
    assert got.layers["bn_input"][1][3] == pytest.approx(Guards().var_floor)


def test_a_channel_still_within_the_batch_keeps_its_moments(exported) -> None:
    # A rare flag absent from the batch, or an input stuck at one value: no spread to learn.
    _, manifest = exported
    trained = manifest.trained_stats()
    rows = shifted_rows(2000)
    rows[:, 4] = float(trained.layers["bn_input"][0][4]) + 0.5
    got = adapt(trained, trained, rows, Guards(), taps_of(manifest))
    assert isinstance(got, Adapted) and got.channels_held == 1
    mean, var = trained.layers["bn_input"]
    assert got.layers["bn_input"][0][4] == mean[4] and got.layers["bn_input"][1][4] == var[4]
    moved = np.delete(np.arange(N_FEATURES), 4)
    assert (got.layers["bn_input"][0][moved] != mean[moved]).all()


def test_a_variance_sliding_towards_zero_is_refused(exported) -> None:
    _, manifest = exported
    trained = manifest.trained_stats()
    mean, var = trained.layers["bn_input"]
    slid = trained.successor(9, layers={**trained.layers,
                                        "bn_input": (mean, var * np.float32(0.0105))})
    rows = shifted_rows(2000)
    # Channel 4 barely varies, about its running mean, yet not so little as to be held.
    noise = np.random.default_rng(1).standard_normal(2000)
    rows[:, 4] = mean[4] + noise / noise.std() * np.sqrt(var[4] * 0.0005)
    got = adapt(slid, trained, rows, Guards(max_step_sd=100.0), taps_of(manifest))
    assert isinstance(got, Refused) and got.reason == "collapse"
    assert "bn_input[4]" in got.detail and got.after < 0.01 * var[4] < got.before


def test_statistics_file_round_trip_and_refusals(exported) -> None:
    _, manifest = exported
    trained = manifest.trained_stats()
    stats = trained.successor(4, rows=6000, offsets={0: 17, 3: 9}, note="adapted",
                              created_ts=1.5)
    again = BnStats.from_bytes(stats.to_bytes())
    assert (again.version, again.parent, again.offsets, again.rows) == ("bn-4", "trained",
                                                                        {0: 17, 3: 9}, 6000)
    for name in BN_LAYERS:
        np.testing.assert_array_equal(again.layers[name][1], stats.layers[name][1])
    key = b"k" * 32
    assert BnStats.from_bytes(stats.to_bytes(key), key).version == "bn-4"
    with pytest.raises(StatsError, match="not signed"):
        BnStats.from_bytes(stats.to_bytes(), key)
    mean, var = trained.layers["bn_input"]
    broken = trained.successor(5, layers={**trained.layers, "bn_input": (mean, var * 0)})
    with pytest.raises(StatsError, match="positive"):
        BnStats.from_bytes(broken.to_bytes())
    with pytest.raises(StatsError):
        BnStats.from_bytes(b"[1, 2]")


def test_judge_compares_the_same_rows() -> None:
    labels = np.array([1, 0, 0, 1, 0], dtype=np.float32)
    good = np.array([0.8, 0.2, 0.1, 0.7, 0.2])
    bad = np.array([0.3, 0.6, 0.5, 0.4, 0.7])
    assert judge("bn-2", "bn-1", labels, bad, good, margin=0.01).worse
    assert not judge("bn-2", "bn-1", labels, good, bad, margin=0.01).worse
    assert not judge("bn-2", "bn-1", labels, good, good, margin=0.01).worse


def test_guards_refuse_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        Guards(momentum=0.0)
    with pytest.raises(ValueError):
        Guards(collapse_ratio=1.5)


def test_models_exported_before_online_bn_say_so(tmp_path: Path, exported) -> None:
    _, manifest = exported
    from dataclasses import replace

    from models.scorer import ModelError
    with pytest.raises(ModelError, match="retrain"):
        replace(manifest, bn_stats=None).trained_stats()

