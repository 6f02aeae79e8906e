"""Timing an exported model with ONNX Runtime on a device.

prefill: the prompt in one forward with an empty KV cache. decode: one new token with the
cache filled to the prompt length; the same step is repeated, so every repeat sees the
same context length. CPU: fixed intra-op threads, one inter-op thread, no spinning.
CUDA/TensorRT: IO binding with device-resident inputs and outputs, synchronised inside
the timed region.

Paired timing. A shared machine drifts (the same model runs 30-50% slower half an hour
later) and has bursts of load, so a sample is timed in `bursts` short bursts interleaved
with a reference model (S R R S S R ...), and more bursts while the ratio is uncertain.
Each burst pair gives a ratio sample/reference; the median ratio cancels drift that is
slow compared with a burst. The caller turns it
into milliseconds at a fixed scale (ratio x the reference's latency when the profile was
calibrated); the raw statistics are kept beside it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latprune.errors import LatpruneError
from latprune.workload import Workload

from .devices import Device

Step = Callable[[], object]


@dataclass(frozen=True)
class Timing:
    """Raw statistics of one metric, plus the paired ratio to the reference when there is one."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    repeats: int
    ratio: float = 1.0  # median over bursts of median(sample) / median(reference)
    ratio_spread: float = 0.0  # (max - min) / median of the per-burst ratios
    reference_ms: float = float("nan")  # the reference's median during these bursts
    ratio_ci: float = float("nan")  # relative half-width of the ~95% interval of the ratio
    bursts: int = 0

    @classmethod
    def of(cls, seconds: list[float], **paired: float | int) -> Timing:
        ms = np.asarray(seconds) * 1e3
        q10, q25, q50, q75, q90 = np.percentile(ms, [10, 25, 50, 75, 90])
        return cls(float(q50), float(q10), float(q90), float(q75 - q25), len(ms), **paired)


def make_session(onnx_path: str | Path, device: Device):
    """An ORT session on the device's providers; refuses a silent fallback."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = device.intra_threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    providers = [(p, device.provider_options.get(p, {})) for p in device.providers]
    session = ort.InferenceSession(str(onnx_path), so, providers=providers)
    got = session.get_providers()
    if not got or got[0] != device.providers[0]:
        raise LatpruneError(f"device '{device.name}': ONNX Runtime ended up on {got} instead of "
                            f"{device.providers[0]}; refusing to time on the wrong hardware")
    return session


class _Runner:
    """Feeds a session the inputs of one step, with or without IO binding."""

    def __init__(self, session, device: Device):
        self.session = session
        self.device = device
        self.output_names = [o.name for o in session.get_outputs()]
        self.float_type = np.float16 if "float16" in session.get_inputs()[-1].type else np.float32

    def feeds(self, batch: int, new: int, past: int, rng: np.random.Generator, cache: dict | None = None) -> dict:
        inputs = {i.name: i for i in self.session.get_inputs()}
        feeds = {
            "input_ids": rng.integers(0, 100, size=(batch, new), dtype=np.int64),
            "attention_mask": np.ones((batch, past + new), dtype=np.int64),
            "position_ids": np.tile(np.arange(past, past + new, dtype=np.int64), (batch, 1)),
        }
        for name, meta in inputs.items():
            if name.startswith("past_key_values"):
                if cache is not None:
                    feeds[name] = cache[name.replace("past_key_values", "present")]
                else:
                    heads, head_dim = meta.shape[1], meta.shape[3]
                    feeds[name] = np.zeros((batch, heads, past, head_dim), dtype=self.float_type)
        return {k: v for k, v in feeds.items() if k in inputs}

    def timer(self, feeds: dict) -> Step:
        """A zero-argument callable that runs one step and returns only when it is done."""
        if not self.device.io_binding:
            return lambda: self.session.run(None, feeds)
        import onnxruntime as ort

        binding = self.session.io_binding()
        kind = "cuda" if self.device.torch_device == "cuda" else "cpu"
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, kind, 0))
        for name in self.output_names:
            binding.bind_output(name, kind)

        def step():
            binding.synchronize_inputs()
            self.session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return step

    def run(self, feeds: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(None, feeds)))


class TimedModel:
    """An exported model with a session and ready-to-run prefill and decode steps."""

    def __init__(self, onnx_path: str | Path, device: Device, workload: Workload, seed: int = 0):
        self.session = make_session(onnx_path, device)
        runner = _Runner(self.session, device)
        rng = np.random.default_rng(seed)
        prefill = runner.feeds(workload.batch, workload.prompt, 0, rng)
        cache = runner.run(prefill)
        decode = runner.feeds(workload.batch, 1, workload.prompt, rng, cache)
        self.steps: dict[str, Step] = {"prefill_ms": runner.timer(prefill), "decode_ms": runner.timer(decode)}


def _burst(step: Step, device: Device) -> list[float]:
    """Seconds of one burst: at least its share of `min_repeats` and of `min_time_s`."""
    repeats = max(1, math.ceil(device.min_repeats / device.bursts))
    cap = max(repeats, device.max_repeats // device.bursts)
    min_time = device.min_time_s / device.bursts
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < cap and (len(times) < repeats or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _ratio_ci(ratios: list[float]) -> float:
    """Relative half-width of an approximate 95% confidence interval of the median ratio
    (normal approximation with a MAD-based scale; infinite below 3 bursts)."""
    if len(ratios) < 3:
        return math.inf
    med = statistics.median(ratios)
    mad = statistics.median(abs(r - med) for r in ratios) * 1.4826
    return 1.96 * 1.2533 * mad / math.sqrt(len(ratios)) / med


def _wants_more(ratios: list[float], device: Device) -> bool:
    """The first `bursts` always; then whole pairs while the ratio is uncertain, up to the cap."""
    b = len(ratios)
    if b < device.bursts:
        return True
    if b >= device.max_bursts:
        return False
    return (b - device.bursts) % 2 == 1 or _ratio_ci(ratios) > device.ratio_tolerance


def _time_paired(step: Step, ref: Step, device: Device) -> Timing:
    own: list[float] = []
    ratios: list[float] = []
    ref_medians: list[float] = []
    while _wants_more(ratios, device):
        sample_first = len(ratios) % 2 == 0  # S R, R S, ...: no order bias
        a = _burst(step if sample_first else ref, device)
        c = _burst(ref if sample_first else step, device)
        mine, theirs = (a, c) if sample_first else (c, a)
        own += mine
        ratios.append(statistics.median(mine) / statistics.median(theirs))
        ref_medians.append(statistics.median(theirs) * 1e3)
    ratio = statistics.median(ratios)
    return Timing.of(own, ratio=ratio, ratio_spread=(max(ratios) - min(ratios)) / ratio,
                     reference_ms=statistics.median(ref_medians), ratio_ci=_ratio_ci(ratios), bursts=len(ratios))


def time_steps(model: TimedModel, device: Device, reference: TimedModel | None = None) -> dict[str, Timing]:
    """Per metric: raw statistics of `model`, and with a `reference`, the paired ratio.
    Paired timing runs `device.bursts` bursts, then adds pairs of bursts while the
    confidence interval of the median ratio is wider than `device.ratio_tolerance`, up to
    `device.max_bursts` (noisy small models get more; steady ones stop early)."""
    out = {}
    for metric, step in model.steps.items():
        ref = reference.steps[metric] if reference is not None else None
        for _ in range(device.warmup):
            step()
            ref and ref()
        if ref is None:  # timed alone, the model is its own reference: ratio 1
            own = [t for _ in range(device.bursts) for t in _burst(step, device)]
            out[metric] = Timing.of(own, bursts=device.bursts, reference_ms=statistics.median(own) * 1e3)
        else:
            out[metric] = _time_paired(step, ref, device)
    return out
