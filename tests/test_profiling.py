"""Profiling: devices, sampling, ONNX fidelity, the resumable dataset."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from latprune import LatpruneError, SearchSpace
from latprune.profiling.dataset import read_profile
from latprune.profiling.devices import get_device, load_devices
from latprune.profiling.export import export_onnx, random_model
from latprune.profiling.run import profile
from latprune.profiling.sampling import profile_plan
from latprune.profiling.timing import _Runner, make_session
from latprune.workload import Workload

from conftest import make_tiny, smol_like_space, tiny_configs


@pytest.fixture
def tiny_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path / "cache"))
    make_tiny("llama").save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_gpu_device_without_cuda_is_refused_with_the_package_to_install():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA EP")
    with pytest.raises(LatpruneError, match="device 'a100' is not usable here: .*no CUDAExecutionProvider: install "
                                            "onnxruntime-gpu"):
        profile(device="a100")


def test_unknown_device_and_bad_devices_files(tmp_path):
    with pytest.raises(LatpruneError, match="unknown device 'tpu'; known: a100, cpu, jetson"):
        get_device("tpu")
    bad = tmp_path / "d.toml"
    bad.write_text("[devices.x\n")
    with pytest.raises(LatpruneError, match="not valid TOML"):
        load_devices(bad)
    bad.write_text('[devices.x]\nproviders = ["CPUExecutionProvider"]\nthreds = 2\n')
    with pytest.raises(LatpruneError, match=r"unknown keys \['threds'\]"):
        load_devices(bad)
    bad.write_text('[devices.x]\nproviders = ["CPUExecutionProvider"]\nbursts = 0\n')
    with pytest.raises(LatpruneError, match="device 'x' bursts must be an integer >= 1"):
        load_devices(bad)
    with pytest.raises(LatpruneError, match="does not exist"):
        load_devices(tmp_path / "missing.toml")


def test_user_device_from_toml(tmp_path):
    f = tmp_path / "d.toml"
    f.write_text('[devices.box]\nproviders = ["CPUExecutionProvider"]\nthreads = 1\nmin_repeats = 3\n')
    dev = get_device("box", f)
    assert dev.providers == ("CPUExecutionProvider",) and dev.intra_threads == 1 and dev.min_repeats == 3


def test_plan_is_seeded_distinct_and_spans_sizes():

    space = smol_like_space()
    plan = profile_plan(space, 20, seed=3)
    assert plan == profile_plan(space, 20, seed=3) and len({a.id for a in plan}) == 20
    assert space.largest() in plan and space.smallest() in plan
    params = np.sort([space.num_params(a) for a in plan])
    span = params[-1] - params[0]
    assert np.diff(params).max() < 3 * span / 19  # no big hole in the parameter range
    assert [space.num_params(a) for a in plan] != sorted(space.num_params(a) for a in plan)  # shuffled


def test_aimed_plan_lands_in_the_band_the_measured_law_says():
    from latprune.profiling.sampling import AIM_WIDTH, aimed_plan

    space = smol_like_space()
    spread = profile_plan(space, 12, seed=0)
    parent = space.num_params(space.largest())

    def law(a):  # a fixed cost plus one per parameter and one per layer, as decode latency is
        return 0.1 + 0.7 * space.num_params(a) / parent + 0.2 * a.num_layers / 30

    measured = {a: law(a) for a in spread}
    plan = aimed_plan(space, 10, measured, 0.6, seed=0, exclude={a.id for a in spread})
    assert plan == aimed_plan(space, 10, measured, 0.6, seed=0, exclude={a.id for a in spread})
    assert len({a.id for a in plan}) == 10 and not {a.id for a in plan} & {a.id for a in spread}
    lat = np.array([law(a) for a in plan])
    assert (np.abs(lat / 0.6 - 1) <= AIM_WIDTH + 0.02).all() and lat.max() - lat.min() > AIM_WIDTH * 0.6
    with pytest.raises(LatpruneError, match="at least 3 measured"):
        aimed_plan(space, 4, dict(list(measured.items())[:2]), 0.6)


@pytest.mark.parametrize("kwargs, message", [({"aim": 1.5}, "--aim must be a fraction"),
                                             ({"aim": 0.5, "aim_ms": 3.0}, "not both"),
                                             ({"aim_ms": -1.0}, "positive number of ms"),
                                             ({"aim": 0.5, "aim_metric": "tokens"}, "--metric must be one of")])
def test_bad_aim_is_one_line_before_any_work(tmp_path, kwargs, message):
    from latprune.profiling.run import profile

    with pytest.raises(LatpruneError, match=message):
        profile("/nonexistent/model", "cpu", 4, out=tmp_path / "p.parquet", **kwargs)
    assert not (tmp_path / "p.parquet").exists()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_exported_onnx_gives_the_torch_logits(tmp_path, family):
    config = tiny_configs()[family]
    space = SearchSpace.from_config(config)
    arch = space.sample(np.random.default_rng(1))
    model = random_model(config, arch)
    path = export_onnx(model, tmp_path / "onnx")
    runner = _Runner(make_session(path, get_device("cpu")), get_device("cpu"))
    rng = np.random.default_rng(0)
    prefill = runner.feeds(2, 12, 0, rng)
    out = runner.run(prefill)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(prefill["input_ids"]), use_cache=True)
    assert np.abs(out["logits"] - ref.logits.numpy()).max() < 1e-4
    step = runner.feeds(2, 1, 12, rng, out)
    with torch.no_grad():
        ref_step = model(input_ids=torch.from_numpy(step["input_ids"]), past_key_values=ref.past_key_values)
    assert np.abs(runner.run(step)["logits"] - ref_step.logits.numpy()).max() < 1e-4


def test_failed_sample_is_recorded_and_the_run_goes_on(tiny_dir, tmp_path, monkeypatch):
    import latprune.profiling.run as run

    real = run.export_onnx
    calls = {"n": 0}

    def flaky(model, folder, device="cpu", **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("exporter exploded")
        return real(model, folder, device, **kwargs)

    monkeypatch.setattr(run, "export_onnx", flaky)
    out = profile(str(tiny_dir), "cpu", 3, Workload(prompt=16, generate=4), out=tmp_path / "p.parquet",
                  progress=False)
    rows = read_profile(out)
    samples = rows[rows.role == "sample"]
    assert len(samples) == 3 and (samples.status == "error").sum() == 1
    assert "exporter exploded" in samples[samples.status == "error"].error.iloc[0]
    ok = samples[samples.status == "ok"]
    for column in ("prefill_ms", "prefill_p10_ms", "prefill_p90_ms", "decode_ms", "decode_iqr_ms", "e2e_ms",
                   "decode_repeats", "host_json", "versions_json", "cpu_model", "arch_json", "params", "exporter",
                   "device_json", "timestamp", "drift", "prefill_raw_ms", "decode_ratio", "decode_reference_ms",
                   "prefill_baseline_ms", "decode_ratio_spread"):
        assert column in rows and ok[column].notna().all()
    for name in ("prefill", "decode"):  # the recorded latency is the paired ratio at the baseline's scale
        assert (ok[f"{name}_ms"] - ok[f"{name}_ratio"] * ok[f"{name}_baseline_ms"]).abs().max() < 1e-9
        reference = rows[rows.role == "reference"].iloc[0]
        assert (ok[f"{name}_baseline_ms"] == reference[f"{name}_raw_ms"]).all()
    assert (ok.e2e_ms - (ok.prefill_ms + 4 * ok.decode_ms)).abs().max() < 1e-9
    assert (rows.role == "reference").sum() == 1


def test_kill_and_rerun_ends_with_exactly_the_requested_samples(tiny_dir, tmp_path):
    out = tmp_path / "p.parquet"
    cmd = [sys.executable, "-m", "latprune.cli", "profile", "--model", str(tiny_dir), "--samples", "5",
           "--workload", "prompt=16,generate=4", "--out", str(out)]
    env = {**os.environ, "LATPRUNE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if out.exists() and (read_profile(out).role == "sample").sum() >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_profile(out)
    finished = before[before.role == "sample"]
    assert 2 <= len(finished) < 5, "the kill should land mid-run"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    after = read_profile(out)
    samples = after[after.role == "sample"]
    assert len(samples) == 5 and samples.arch_id.is_unique
    kept = samples.set_index("arch_id").loc[finished.arch_id]
    assert list(kept.timestamp) == list(finished.timestamp)  # finished rows untouched


def test_verification_reports_on_the_predictors_scale_whatever_the_record(tiny_dir, tmp_path):
    from latprune.models import load_config
    from latprune.profiling.verify import DeviceSession, measure_finalists

    device = dataclasses.replace(get_device("cpu"), warmup=0, min_repeats=2, min_time_s=0.0, bursts=3, max_bursts=3)
    config = load_config(str(tiny_dir))
    arch = SearchSpace.from_config(config).smallest()
    record = tmp_path / "verify.parquet"  # a fresh file: its own first reference row, its own baseline
    predictor_scale = {"prefill_ms": 100.0, "decode_ms": 10.0}
    with DeviceSession(config, device, Workload(prompt=16, generate=4), record, baseline=predictor_scale) as session:
        verified = measure_finalists(session, [arch], rounds=1)
        assert session.on_scale(verified.measured[arch.id], "decode_ms") == verified.measured[arch.id]["decode_ms"]
    measured, parent = verified.measured, verified.parent
    row = measured[arch.id]
    assert parent["measured"]["decode_ms"] == 10.0 and row["decode_ms"] == row["decode_ratio"] * 10.0
    assert row["e2e_ms"] == row["prefill_ms"] + 4 * row["decode_ms"]
    assert parent["drift"]["decode_ms"] == parent["raw"]["decode_ms"] / 10.0
    written = read_profile(record).query("role == 'verify'").iloc[0]  # the record keeps its own scale
    assert written.decode_ms == written.decode_ratio * written.decode_baseline_ms != row["decode_ms"]


@pytest.mark.parametrize("retries", [2, 0])
def test_a_sample_timed_while_the_host_is_busy_is_timed_again(tiny_dir, tmp_path, monkeypatch, retries):
    import latprune.profiling.run as run
    from latprune.models import load_config
    from latprune.profiling.dataset import ProfileWriter
    from latprune.profiling.timing import Timing

    # (reference's median during the timing, sample/reference ratio) of successive timings:
    # the reference row alone, then a sample timed while the host was busy (reference 30% slow), then calm
    script = [(10.0, 1.0), (13.0, 0.9), (10.2, 0.5), (10.0, 0.7)]

    def time_steps(model, device, reference=None):
        ref_ms, ratio = script.pop(0)
        return {m: Timing(ref_ms * ratio, 0, 0, 0, 1, ratio=ratio, reference_ms=ref_ms) for m in ("prefill_ms",
                                                                                                    "decode_ms")}

    monkeypatch.setattr(run, "time_steps", time_steps)
    device = dataclasses.replace(get_device("cpu"), busy_tolerance=0.05, busy_retries=retries)
    prof = run.Profiler(load_config(str(tiny_dir)), device, Workload(prompt=16, generate=4),
                        ProfileWriter(tmp_path / "p.parquet"))
    row = prof.measure(prof.space.smallest(), "sample")
    if retries:  # timed again; the calm attempt is recorded
        assert row["attempts"] == 2 and row["decode_ratio"] == 0.5 and row["host_shift"] == pytest.approx(0.02)
    else:
        assert row["attempts"] == 1 and row["decode_ratio"] == 0.9 and row["host_shift"] == pytest.approx(0.3)
    assert row["decode_ms"] == row["decode_ratio"] * 10.0  # on the baseline's scale either way


def test_profile_read_while_the_profiler_replaces_it_is_never_torn(tmp_path):
    import threading

    import pandas as pd

    from latprune.profiling.dataset import write_profile

    out = tmp_path / "p.parquet"
    write_profile(out, pd.DataFrame({"role": ["reference"], "x": [0.0]}))
    stop = threading.Event()

    def writer():
        n = 1
        while not stop.is_set():  # growing files, so consecutive versions differ in size
            write_profile(out, pd.DataFrame({"role": ["sample"] * n, "x": np.arange(n, dtype=float)}))
            n = n % 400 + 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            assert len(read_profile(out)) >= 1
    finally:
        stop.set()
        thread.join()


class _Sleeper:
    """A stand-in for a timed model whose steps take `ms` x the machine's current slowness:
    1x for the first 22 steps of the pair (all of prefill's), then 2x."""

    def __init__(self, ms: float, clock: dict):
        self.steps = {"prefill_ms": self.step, "decode_ms": self.step}
        self.ms, self.clock = ms, clock

    def step(self) -> None:
        self.clock["calls"] += 1
        time.sleep(self.ms * (1 if self.clock["calls"] <= 22 else 2) / 1e3)  # the machine halves its speed


def test_paired_timing_cancels_drift_that_raw_timing_suffers():
    from latprune.profiling.timing import time_steps

    device = dataclasses.replace(get_device("cpu"), warmup=1, min_repeats=10, min_time_s=0.0, bursts=5,
                                 ratio_tolerance=1.0)
    clock = {"calls": 0}
    timings = time_steps(_Sleeper(2.0, clock), device, _Sleeper(4.0, clock))
    for t in timings.values():
        assert t.ratio == pytest.approx(0.5, rel=0.08)
        assert t.repeats == 10 and t.bursts == 5 and t.reference_ms > 4.0
    # the raw medians moved with the drift: decode (timed second) ran twice as slow as prefill
    assert timings["decode_ms"].median_ms > 1.6 * timings["prefill_ms"].median_ms


def test_paired_timing_adds_bursts_while_the_ratio_is_uncertain():
    from latprune.profiling.timing import time_steps

    class Jittery(_Sleeper):
        rng = np.random.default_rng(0)

        def step(self) -> None:
            time.sleep(self.ms * self.rng.uniform(1, 2) / 1e3)  # each step 1-2x slower, at random

    device = dataclasses.replace(get_device("cpu"), warmup=0, min_repeats=2, min_time_s=0.0, bursts=3,
                                 max_bursts=11, ratio_tolerance=0.001)
    timings = time_steps(Jittery(1.0, {"calls": 0}), device, _Sleeper(1.0, {"calls": 0}))
    assert all(t.bursts == 11 for t in timings.values())  # never certain enough: stops at the cap
    steady = dataclasses.replace(device, ratio_tolerance=10.0)
    assert all(t.bursts == 3 for t in time_steps(_Sleeper(1.0, {"calls": 0}), steady,
                                                 _Sleeper(1.0, {"calls": 0})).values())


def test_per_layer_plan_profiles_heterogeneous_models_held_out_of_training(tiny_dir, tmp_path):
    from latprune.architecture import Architecture
    from latprune.profiling.dataset import HETERO_ROLE, usable_rows
    from latprune.profiling.sampling import per_layer_plan

    space = SearchSpace.from_config(tiny_configs()["llama"])
    plan = per_layer_plan(space, 6, seed=2)
    assert len({a.id for a in plan}) == 6 and not any(a.is_uniform for a in plan)
    assert all(a.num_layers >= 2 for a in plan)
    params = sorted(space.num_params(a) for a in plan)
    assert params[-1] > 2 * params[0]  # spread over sizes
    out = tmp_path / "p.parquet"
    profile(str(tiny_dir), "cpu", 2, Workload(prompt=16, generate=4), out=out, per_layer=True, progress=False)
    rows = read_profile(out)
    hetero = rows[rows.role == HETERO_ROLE]
    assert len(hetero) == 2 and (hetero.status == "ok").all() and (hetero.decode_ms > 0).all()
    assert not any(Architecture.from_json(j).is_uniform for j in hetero.arch_json)
    assert usable_rows(rows)[1]["used"] == 0  # never trained on
