"""Predictors on synthetic profiles whose latency law is known."""

import pandas as pd
import pytest

from latprune import LatpruneError
from latprune.architecture import Architecture
from latprune.predictors.accuracy import ABOVE_LABEL
from latprune.predictors.features import arch_columns, features
from latprune.predictors.predictor import Predictor
from latprune.profiling.sampling import profile_plan
from latprune.workload import Workload

from conftest import smol_like_space, synthetic_profile


@pytest.fixture(scope="module")
def fitted():
    return Predictor.fit(synthetic_profile(120), "xgboost")


def test_fit_reports_honest_accuracy(fitted):
    acc = fitted.meta["accuracy"]
    for metric in ("prefill_ms", "decode_ms"):
        assert set(acc[metric]) == {"5-fold CV", "held-out"}
        assert acc[metric]["held-out"]["n"] == 24
        assert acc[metric]["held-out"]["within_10pct"] >= 0.9 and acc[metric]["held-out"]["spearman"] > 0.95
    assert "within ±10%" in fitted.accuracy_table()


def test_save_load_round_trip_and_upper_bound(fitted, tmp_path):
    fitted.save(tmp_path / "p")
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "p" / "prefill_ms-0.ubj").is_file()
    loaded = Predictor.load(tmp_path / "p", device="cpu", model_hash=fitted.meta["model"]["config_hash"])
    archs = profile_plan(smol_like_space(), 30, seed=9)
    a, b = fitted.predict(archs), loaded.predict(archs)
    pd.testing.assert_frame_equal(a, b)
    assert (a.decode_ms_upper >= a.decode_ms).all() and (a.e2e_ms == a.prefill_ms + 32 * a.decode_ms).all()


def test_other_device_or_model_is_refused_in_one_line(fitted, tmp_path):
    fitted.save(tmp_path / "p")
    with pytest.raises(LatpruneError, match="fitted on device 'cpu', not 'jetson'"):
        Predictor.load(tmp_path / "p", device="jetson")
    with pytest.raises(LatpruneError, match="fitted for model smol"):
        Predictor.load(tmp_path / "p", model_hash="other")
    with pytest.warns(UserWarning):
        Predictor.load(tmp_path / "p", device="jetson", allow_mismatch=True)
    with pytest.raises(LatpruneError, match="prompt 128..128, asked for 512"):
        fitted.check_workload(Workload(prompt=512))


def test_too_few_usable_rows_is_an_error_that_counts_exclusions():
    frame = synthetic_profile(14)
    frame.loc[0, "status"] = "error"
    frame.loc[1, "drift_flag"] = True
    frame.loc[2, "drift_flag"] = True
    with pytest.raises(LatpruneError, match=r"only 11 usable rows .*'failed': 1, 'drift_flagged': 2.*at least 12"):
        Predictor.fit(frame)


@pytest.mark.parametrize("kind", ["roofline", "mlp"])
def test_baselines_behind_the_same_interface(kind, tmp_path):
    baseline = Predictor.fit(synthetic_profile(60), kind)
    archs = profile_plan(smol_like_space(), 5, seed=1)
    pred = baseline.predict(archs)
    assert (pred.decode_ms > 0).all() and baseline.meta["kind"] == kind
    assert baseline.meta["accuracy"]["decode_ms"]["held-out"]["spearman"] > 0.8
    baseline.save(tmp_path / kind)
    pd.testing.assert_frame_equal(Predictor.load(tmp_path / kind).predict(archs), pred)


def test_feature_params_equal_exact_counts():
    space = smol_like_space()
    archs = profile_plan(space, 10, seed=2)
    f = features(space, arch_columns(archs).assign(batch=1, prompt=128))
    assert list(f.params.astype(int)) == [space.num_params(a) for a in archs]


def test_parent_reference_timings_anchor_the_largest_architecture():
    frame = synthetic_profile(40)
    largest = smol_like_space().largest()
    ref = frame[(frame.layers == 30) & (frame.mlp == 1536) & (frame.hidden == 576) & (frame.heads == 9)].iloc[[0]]
    true_decode = float(ref.decode_ms.iloc[0]) * 1.3  # the parent re-timed slower than its one sample row
    spread = [true_decode * f for f in (0.98, 1, 1, 1.01, 1.02)]
    # as the profiler records them: every reference row on the baseline's scale, raw timings spread around it
    reference = pd.concat([ref] * 5, ignore_index=True).assign(role="reference", workload="w", e2e_ms=0.0,
                                                                decode_ms=true_decode, decode_raw_ms=spread)
    without = Predictor.fit(frame).predict([largest]).decode_ms.iloc[0]
    with_refs = Predictor.fit(pd.concat([frame, reference], ignore_index=True))
    assert with_refs.meta["rows"]["reference_median_rows"] == 1
    assert with_refs.meta["baseline_ms"]["w"]["decode_ms"] == pytest.approx(true_decode)  # the scale verification uses
    assert abs(with_refs.predict([largest]).decode_ms.iloc[0] - true_decode) < abs(without - true_decode)
    # with the parent's timing, CV accuracy is also reported by band of latency relative to it
    bands = with_refs.meta["accuracy_by_band"]["decode_ms"]
    above = bands.pop(ABOVE_LABEL)  # the union of the bands from 30% up, reported beside them
    assert sum(b["n"] for b in bands.values()) == with_refs.meta["accuracy"]["decode_ms"]["5-fold CV"]["n"]
    assert above["n"] == sum(bands[b]["n"] for b in ("30%-60%", "60%-100%") if b in bands)
    assert set(bands) <= {"0%-10%", "10%-30%", "30%-60%", "60%-100%"} and "| decode_ms | 60%-100% |" in \
        with_refs.accuracy_table()


def test_refinement_rows_are_training_rows_and_verification_rows_are_not_rows_of_their_own():
    from latprune.profiling.dataset import usable_rows

    frame = synthetic_profile(20)
    frame.loc[15:17, "role"] = "refine"
    frame.loc[18:, "role"] = "verify"
    rows, counts = usable_rows(frame)
    assert counts == {"sample_rows": 15, "refine_rows": 3, "failed": 0, "drift_flagged": 0, "used": 18}
    assert set(rows.role) == {"sample", "refine"}


def test_fit_labels_each_architecture_with_the_median_of_its_repeated_timings():
    from latprune.predictors.predictor import _repeat_medians

    frame = synthetic_profile(60)
    ref = frame.iloc[frame.decode_ms.argmax()]
    reference = frame.iloc[[frame.decode_ms.argmax()]].assign(role="reference", decode_raw_ms=ref.decode_ms,
                                                               prefill_raw_ms=ref.prefill_ms)
    mid = frame.index[(frame.decode_ms / ref.decode_ms).between(0.4, 0.9)][0]
    truth = float(frame.decode_ms[mid])
    frame.loc[mid, "decode_ms"] = truth * 1.3  # one sample timing is an outlier...
    retimed = frame.loc[[mid] * 3].assign(role="verify", decode_ms=[truth * 0.99, truth, truth * 1.01])  # ...re-timed
    single = Predictor.fit(pd.concat([frame, reference], ignore_index=True))
    repeated = Predictor.fit(pd.concat([frame, reference, retimed], ignore_index=True))
    rows = pd.concat([frame, reference], ignore_index=True)
    medians = _repeat_medians(pd.concat([rows, retimed], ignore_index=True), rows, "decode_ms")
    assert medians[mid] == pytest.approx(truth * 1.005) and (medians[:mid] == rows.decode_ms[:mid]).all()
    assert medians[-1] == ref.decode_ms  # the reference row keeps its own timing
    # the verification rows are not rows of their own (the same n) but they set the outlier's label
    assert repeated.meta["rows"] == single.meta["rows"]
    n = single.meta["accuracy_by_band"]["decode_ms"][ABOVE_LABEL]["n"]
    assert repeated.meta["accuracy_by_band"]["decode_ms"][ABOVE_LABEL]["n"] == n
    arch = Architecture.uniform(list(range(int(frame.layers[mid]))), int(frame.heads[mid]), int(frame.kv_groups[mid]),
                                int(frame.mlp[mid]), int(frame.hidden[mid]))
    error = lambda p: abs(float(p.predict([arch]).decode_ms.iloc[0]) / truth - 1)  # noqa: E731
    assert error(repeated) < 0.5 * error(single)


def test_repeatability_is_each_timing_against_the_median_of_its_repeats():
    from latprune.predictors.accuracy import format_band_table, repeatability_by_band

    timings = pd.DataFrame({"arch_id": ["a", "a", "a", "b"], "decode_ms": [10.0, 10.4, 12.5, 3.0]})
    ceiling = repeatability_by_band(timings, "decode_ms", parent_ms=20.0)
    assert list(ceiling) == ["30%-60%", ABOVE_LABEL] and ceiling["30%-60%"]["n"] == 3  # b was timed once
    assert ceiling["30%-60%"]["within_10pct"] == pytest.approx(1 / 3)  # only 10.4 is within 10% of the others
    table = format_band_table({"decode_ms": {"30%-60%": {"n": 5, "within_10pct": 0.8, "mape": 0.05},
                                             "0%-10%": {"n": 2, "within_10pct": 0.5, "mape": 0.2}}},
                              ceiling={"decode_ms": ceiling})
    assert "| decode_ms | 30%-60% | 5 | 80.0% | 5.00% | 33.3% (3) |" in table and "no repeats" in table


def test_timings_of_per_layer_architectures_rescale_later_per_layer_predictions_by_the_nearest_in_depth(fitted):
    import numpy as np

    from latprune.profiling.dataset import HETERO_ROLE

    space, rng = smol_like_space(), np.random.default_rng(5)

    def mix(n: int) -> Architecture:
        return Architecture.per_layer(range(n), [9] * (n - 1) + [3], [3] * (n - 1) + [1],
                                      rng.choice(space.mlp_choices, n).tolist(), 576)

    frame = synthetic_profile(60, seed=1)
    plain = Predictor.fit(frame)
    shallow, deep = [mix(n) for n in (12, 13, 14)], [mix(n) for n in (24, 25, 26)]
    composed = plain.predict(shallow + deep)
    ratio = np.array([0.8] * 3 + [0.95] * 3)  # the device runs shallow mixes 20% under composition, deep ones 5%
    hetero = synthetic_profile(0, seed=1, archs=shallow + deep).assign(
        role=HETERO_ROLE, arch_json=[a.to_json() for a in shallow + deep],
        decode_ms=ratio * composed.decode_ms.to_numpy(), prefill_ms=composed.prefill_ms.to_numpy())
    timed = Predictor.fit(pd.concat([frame, hetero], ignore_index=True))
    assert plain.meta["per_layer_timings"] == {} and len(timed.meta["per_layer_timings"]["decode_ms"]) == 6
    later = [mix(13), mix(25)]  # never timed: each takes the ratio of the timed mixes nearest in depth
    for col, expected in (("decode_ms", [0.8, 0.95]), ("decode_ms_upper", [0.8, 0.95]), ("prefill_ms", [1, 1])):
        np.testing.assert_allclose(timed.predict(later)[col] / plain.predict(later)[col], expected, rtol=1e-9)
    uniform = profile_plan(space, 6, seed=2)
    pd.testing.assert_frame_equal(timed.predict(uniform), plain.predict(uniform))  # uniform ones: untouched


def test_per_layer_latency_is_composed_from_uniform_blocks(fitted):
    """The synthetic device's decode law is additive over layers, so composing uniform
    predictions recovers per-layer latencies about as well as the uniform ones are predicted."""
    import numpy as np

    from latprune.architecture import Architecture

    space = smol_like_space()
    rng = np.random.default_rng(3)
    archs = []
    for _ in range(40):
        n = int(rng.integers(4, 31))
        kv = rng.choice([1, 2, 3], n)
        heads = [int(k * rng.integers(1, 4)) for k in kv]
        mlp = rng.choice(space.choices()["mlp"], n)
        archs.append(Architecture.per_layer(sorted(rng.choice(30, n, replace=False).tolist()), heads, kv.tolist(),
                                            mlp.tolist(), int(rng.choice(space.choices()["hidden"]))))
    assert not any(a.is_uniform for a in archs)
    body = np.array([space.num_params(a) - space.embedding_params(a.hidden) for a in archs], dtype=float)
    truth = ((body + 49152 * np.array([a.hidden for a in archs])) * 4 / 25e9
             + np.array([a.num_layers for a in archs]) * 8e-5 + 2e-4) * 1e3  # the law of synthetic_profile
    pred = fitted.predict(archs)
    assert np.mean(np.abs(pred.decode_ms.to_numpy() / truth - 1) <= 0.05) >= 0.9
    assert (pred.decode_ms_upper >= pred.decode_ms).all()
    uniform = profile_plan(space, 8, seed=4)  # a uniform architecture is its own single block shape
    pd.testing.assert_frame_equal(fitted.predict(uniform),
                                  fitted.predict_columns(arch_columns(uniform), Workload()))
