"""`profile`: measure sampled sub-architectures of a model on a device, resumably."""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import shutil
import statistics
import tempfile
import time
import traceback
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.models import cache_dir, load_config, model_identity
from latprune.space import SearchSpace
from latprune.workload import METRICS, Workload

from .dataset import HETERO_ROLE, STEPS, ProfileWriter, baseline, baseline_host, default_profile, stat_column
from .devices import Device, check_available, get_device
from .export import EXPORTER, export_onnx, random_model
from .fingerprint import hardware_difference, host_fingerprint, library_versions
from .sampling import aimed_plan, check_samples, per_layer_plan, profile_plan, spread_plan
from .timing import TimedModel, Timing, time_steps

if TYPE_CHECKING:
    import pandas as pd

DRIFT_THRESHOLD = 0.25
HOST_WINDOW = 15  # the reference timings of this many recent measurements define the host's normal state


def check_same_host(frame: pd.DataFrame, where: str, **match: Any) -> None:
    """Refuse, in one line, to add this host's timings to rows (those of `frame` matching
    `match`) whose scale was fixed on another machine: a paired ratio taken here times
    another machine's baseline is a latency of neither."""
    recorded = baseline_host(frame, **match)
    if recorded and (diff := hardware_difference(recorded)):
        raise LatpruneError(f"{where} was calibrated {diff}; timings of two machines cannot share one scale: move "
                            "it away or profile into another file on this host (and fit a predictor from that)")


def _release_memory() -> None:
    """Give freed model and session memory back to the OS (glibc keeps it otherwise, and RSS
    grows by GBs over a long profile of differently sized models)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Profiler:
    """Exports, times and records architectures of one model on one device and workload.

    Every architecture is timed paired with the reference (the parent shape, kept loaded),
    and its latency is recorded at the profile's fixed scale: the paired ratio times the
    reference's latency in the profile's first reference row (its *baseline*). `drift` is
    the reference's latency now over the baseline; beyond DRIFT_THRESHOLD the machine has
    changed state (throttling, another job) enough that even ratios are suspect, and the
    row is flagged (fit leaves it out). A profile calibrated on another machine (CPU model,
    cores, GPU) is refused (`check_same_host`) unless `check_host` is off (fleet nodes, which
    record each node's host, and `--allow-mismatch`).

    Busy-host retries. A short burst of load on a shared host slows models unequally (small,
    cache-resident models more than the memory-bound parent), so the paired ratio of a sample
    timed during one is off by up to 15-30%, while the reference's own timing shows the load.
    When the reference ran more than `device.busy_tolerance` off the median of its recent
    timings in this session, the sample is timed again (fresh session), up to
    `device.busy_retries` times, and the calmest attempt is recorded (`attempts`,
    `host_shift`). The window holds the recorded timings, so it follows a lasting change
    of state within a few samples; slow drift is for pairing to cancel.
    """

    def __init__(self, config, device: Device, workload: Workload, writer: ProfileWriter, *, keep_onnx: bool = False,
                 discard_graphs: bool = True, check_host: bool = True):
        self.config = config
        self.space = SearchSpace.from_config(self.config)
        self.identity = model_identity(self.config)
        self.device, self.workload, self.writer, self.keep_onnx = device, workload, writer, keep_onnx
        self.discard_graphs = discard_graphs and not keep_onnx
        # Graphs live in a folder private to this profiler (another process never deletes them),
        # or, with keep_onnx, in the shared cache, where they are only ever added.
        graphs = cache_dir() / "onnx"
        graphs.mkdir(parents=True, exist_ok=True)
        self.onnx_root = graphs / self.identity["config_hash"] if keep_onnx else \
            Path(tempfile.mkdtemp(prefix=f"{self.identity['config_hash']}-{os.getpid()}-", dir=graphs))
        self.key = {"device": device.name, "workload": workload.key, "model_hash": self.identity["config_hash"]}
        self._reference: TimedModel | None = None
        self.session_referenced = False  # a reference row was recorded by this profiler
        self._recent: dict[str, deque[float]] = {m: deque(maxlen=HOST_WINDOW) for m in STEPS}
        if check_host:
            check_same_host(self.writer.frame, f"profile '{writer.path}'", **self.key)
        self.baseline = baseline(self.writer.frame, **self.key)

    def folder(self, arch: Architecture) -> Path:
        return self.onnx_root / f"{arch.id}-{self.device.dtype}"

    def onnx_for(self, arch: Architecture) -> tuple[Path, float]:
        """The exported graph of `arch` (cached by architecture id and dtype) and export seconds."""
        folder = self.folder(arch)
        if (folder / "model.onnx").is_file():
            return folder / "model.onnx", 0.0
        t0 = time.perf_counter()
        model = random_model(self.config, arch, self.device.dtype, self.device.torch_device)
        path = export_onnx(model, folder, self.device.torch_device)
        return path, time.perf_counter() - t0

    def _reference_model(self) -> TimedModel:
        if self._reference is None:
            path, _ = self.onnx_for(self.space.largest())
            self._reference = TimedModel(path, self.device, self.workload, seed=1)
        return self._reference

    def measure(self, arch: Architecture, role: str) -> dict[str, Any]:
        """One row: measured statistics (paired with the reference, except for the reference
        row itself), or status 'error' with the error text."""
        if self.baseline is None and role != "reference":
            self.reference()
        row = self._base_row(arch, role)
        try:
            path, row["export_s"] = self.onnx_for(arch)
            t0 = time.perf_counter()
            timings, row["attempts"], row["host_shift"] = self._time_calm(path, role)
            row["timing_s"] = time.perf_counter() - t0
            if self.baseline is None:
                self.baseline = {m: t.median_ms for m, t in timings.items()}
            drifts = []
            for metric, t in timings.items():
                drifts.append(t.reference_ms / self.baseline[metric])
                row[metric] = t.ratio * self.baseline[metric]
                stats = {"raw_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms, "iqr_ms": t.iqr_ms,
                         "repeats": t.repeats, "ratio": t.ratio, "ratio_spread": t.ratio_spread,
                         "ratio_ci": t.ratio_ci, "bursts": t.bursts, "reference_ms": t.reference_ms,
                         "baseline_ms": self.baseline[metric]}
                row.update({stat_column(metric, stat): value for stat, value in stats.items()})
            drift = max(drifts, key=lambda r: abs(r - 1))
            row.update(e2e_ms=self.workload.e2e_ms(row["prefill_ms"], row["decode_ms"]), drift=drift,
                       drift_flag=abs(drift - 1) > DRIFT_THRESHOLD)
        except (KeyboardInterrupt, LatpruneError):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing sample is recorded and the run goes on
            row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000],
                       traceback=traceback.format_exc()[-4000:])
        finally:
            if self.discard_graphs and arch != self.space.largest():  # the reference graph is reused
                shutil.rmtree(self.folder(arch), ignore_errors=True)
            _release_memory()
        return row

    def host_shift(self, timings: dict[str, Timing]) -> float:
        """How far the reference ran off its recent median during `timings` (the largest
        relative deviation over the metrics; 0 before anything was timed)."""
        shifts = [t.reference_ms / statistics.median(self._recent[m]) - 1
                  for m, t in timings.items() if self._recent[m]]
        return max(shifts, key=abs, default=0.0)

    def _time_calm(self, path: Path, role: str) -> tuple[dict[str, Timing], int, float]:
        """Timings of the graph at `path`, retried while the host is busy; with the number of
        attempts and the recorded attempt's host shift."""
        reference = None if role == "reference" else self._reference_model()
        tries = 1 if reference is None else 1 + self.device.busy_retries
        best: tuple[dict[str, Timing], float] | None = None
        attempts = 0
        while attempts < tries:
            attempts += 1
            timings = time_steps(TimedModel(path, self.device, self.workload), self.device, reference)
            shift = self.host_shift(timings)
            if best is None or abs(shift) < abs(best[1]):
                best = (timings, shift)
            if abs(shift) <= self.device.busy_tolerance:
                break
        for m, t in best[0].items():  # the window holds recorded timings only: a busy one does not move it
            self._recent[m].append(t.reference_ms)
        return best[0], attempts, best[1]

    def _base_row(self, arch: Architecture, role: str) -> dict[str, Any]:
        host = host_fingerprint()
        return {
            "role": role, **self.key, "arch_id": arch.id, "arch_json": arch.to_json(),
            "layers": arch.num_layers, "heads": arch.heads[0], "kv_groups": arch.kv_groups[0], "mlp": arch.mlp[0],
            "hidden": arch.hidden, "head_dim": self.space.parent["head_dim"], "params": self.space.num_params(arch),
            "batch": self.workload.batch, "prompt": self.workload.prompt, "generate": self.workload.generate,
            "model_name": self.identity["name"], "model_type": self.space.model_type,
            "parent_config_json": self.config.to_json_string(use_diff=False),
            "device_json": json.dumps(self.device.to_dict()), "dtype": self.device.dtype,
            "threads": self.device.intra_threads, "host_json": json.dumps(host),
            "cpu_model": host["cpu_model"], "gpu_name": host.get("gpu_name", ""),
            "versions_json": json.dumps(library_versions()), "exporter": EXPORTER,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": "ok", "error": "", "traceback": "", "export_s": 0.0, "timing_s": 0.0,
            "drift": float("nan"), "drift_flag": False, "attempts": 0, "host_shift": float("nan"),
        }

    def reference(self) -> dict[str, Any]:
        """Time the reference architecture alone and record it. The first reference row of a
        profile fixes its baseline; later ones (one per resumed session) record the drift."""
        row = self.measure(self.space.largest(), "reference")
        if row["status"] != "ok":
            raise LatpruneError(f"the reference architecture failed to time: {row['error']}")
        self.writer.append(row)
        self.session_referenced = True
        return row

    def close(self) -> None:
        """Release the reference session and, unless kept, the exported graphs."""
        self._reference = None
        if not self.keep_onnx:
            shutil.rmtree(self.onnx_root, ignore_errors=True)
        _release_memory()


def profile(model: str | Path = "default", device: str = "cpu", samples: int = 40,
            workload: Workload | None = None, *, out: str | Path | None = None, seed: int = 0,
            devices_file: str | Path | None = None, keep_onnx: bool = False, aim: float | None = None,
            aim_ms: float | None = None, aim_metric: str = "decode_ms", transfer_from: list[str | Path] = (),
            per_layer: bool = False, progress: bool = True) -> Path:
    """Profile `samples` architectures of `model` on `device`; rerunning resumes. With `aim`
    (a fraction of the parent's `aim_metric`) or `aim_ms` (a latency), half of the samples
    are space-filling and half are aimed at that latency (`aimed_plan`). With `transfer_from`
    (predictors or profiles of other devices), the samples are spread over the latency range
    those predict, every other one where budgets lie (`spread_plan`), for `latprune fit
    --transfer-from`. With `per_layer`, heterogeneous architectures (`per_layer_plan`),
    recorded with role HETERO_ROLE (never trained on: they check the composed predictions of
    per-layer latency)."""
    check_samples(samples)
    _check_aim(aim, aim_ms, aim_metric)
    if (transfer_from or per_layer) and (aim or aim_ms):
        raise LatpruneError("only the default plan can be aimed at a latency; drop --aim")
    if transfer_from and per_layer:
        raise LatpruneError("choose one plan: transfer or per-layer")
    dev = get_device(device, devices_file)
    check_available(dev)
    workload = workload or Workload()
    out = Path(out) if out else default_profile(dev.name)
    config = load_config(model)
    estimate = _transfer_estimate(transfer_from, workload, out) if transfer_from else None
    with ProfileWriter(out) as writer:
        prof = Profiler(config, dev, workload, writer, keep_onnx=keep_onnx)
        bar = tqdm(total=samples, desc=f"profile {dev.name}", unit="sample", disable=not progress)
        try:
            if per_layer:
                _time_plan(writer, prof, per_layer_plan(prof.space, samples, seed), bar, role=HETERO_ROLE)
                return out
            spread = spread_plan(prof.space, samples, estimate, seed=seed) if estimate else \
                profile_plan(prof.space, samples - (samples // 2 if aim or aim_ms else 0), seed)
            _time_plan(writer, prof, spread, bar)
            if (aim or aim_ms) and samples // 2:
                fraction = aim or aim_ms / _parent_ms(prof, aim_metric)
                aimed = _aimed(writer, prof, spread, samples // 2, fraction, metric=aim_metric, seed=seed)
                _time_plan(writer, prof, aimed, bar)
        finally:
            bar.close()
            prof.close()
    return out


def _transfer_estimate(sources: list[str | Path], workload: Workload, out: Path):
    """The source devices' predicted latencies, for a transfer plan (checked before any timing)."""
    from latprune.predictors.transfer import load_sources, source_estimate

    return source_estimate(load_sources(sources, exclude=out), workload)


def _check_aim(aim: float | None, aim_ms: float | None, metric: str) -> None:
    if aim is not None and aim_ms is not None:
        raise LatpruneError("give the profile's aim as a fraction of the parent (--aim) or in ms, not both")
    if aim is not None and not (math.isfinite(aim) and 0 < aim < 1):
        raise LatpruneError(f"--aim must be a fraction of the parent's latency between 0 and 1; got {aim}")
    if aim_ms is not None and not (math.isfinite(aim_ms) and aim_ms > 0):
        raise LatpruneError(f"the aimed latency must be a positive number of ms; got {aim_ms}")
    if metric not in METRICS:
        raise LatpruneError(f"--metric must be one of {', '.join(METRICS)}; got '{metric}'")


def _parent_ms(prof: Profiler, metric: str) -> float:
    scale = prof.baseline
    if metric == "e2e_ms":
        return prof.workload.e2e_ms(scale["prefill_ms"], scale["decode_ms"])
    return scale[metric]


def _aimed(writer: ProfileWriter, prof: Profiler, spread: list[Architecture], n: int, aim: float, *, metric: str,
           seed: int) -> list[Architecture]:
    """The aimed half of the plan, from the spread half's measured rows (so a rerun plans it again the same)."""
    rows = writer.rows(role="sample", status="ok", **prof.key)
    rows = rows[rows.arch_id.isin({a.id for a in spread})].drop_duplicates("arch_id")
    by_id = {a.id: a for a in spread}
    parent = _parent_ms(prof, metric)
    measured = {by_id[r.arch_id]: r[metric] / parent for _, r in rows.iterrows()}  # rows hold e2e_ms too
    measured[prof.space.largest()] = 1.0
    return aimed_plan(prof.space, n, measured, aim, seed=seed, exclude=set(by_id))


def _time_plan(writer: ProfileWriter, prof: Profiler, plan: list[Architecture], bar: tqdm, role: str = "sample",
               ) -> None:
    """Time the planned architectures `writer` does not hold yet, one row each (of `role`),
    recorded as it ends."""
    done = set(writer.rows(role=role, **prof.key)["arch_id"]) if not writer.frame.empty else set()
    todo = [a for a in plan if a.id not in done]
    bar.update(len(plan) - len(todo))
    if todo and not prof.session_referenced:
        ref = prof.reference()  # fixes the baseline, or records this session's drift from it
        if ref["drift_flag"]:
            bar.write(f"latprune: warning: the reference runs {ref['drift'] - 1:+.0%} off the profile's baseline; "
                      "samples timed in this state are flagged (machine busy or throttling?)")
    for arch in todo:
        row = prof.measure(arch, role)
        writer.append(row)
        bar.update(1)
        if row["status"] != "ok":
            bar.write(f"latprune: sample {arch.id} failed: {row['error'].splitlines()[0]}")
            continue
        bar.set_postfix_str(f"{arch.describe()}: prefill {row['prefill_ms']:.1f} ms, "
                            f"decode {row['decode_ms']:.2f} ms, drift {row['drift'] - 1:+.0%}"
                            + (f", host busy: {row['attempts']} attempts" if row["attempts"] > 1 else ""))
        if row["drift_flag"]:
            bar.write(f"latprune: warning: the reference drifted {row['drift'] - 1:+.0%} from the baseline "
                      f"while timing {arch.id}; the sample is flagged (machine busy or throttling?)")
