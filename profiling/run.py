"""`profile`: measure sampled sub-architectures of a model on a device, resumably."""

from __future__ import annotations

import ctypes
import gc
import json
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.models import cache_dir, load_config, model_identity
from latprune.space import SearchSpace
from latprune.workload import Workload

from .dataset import ProfileWriter
from .devices import Device, check_available, get_device
from .export import EXPORTER, export_onnx, random_model
from .fingerprint import host_fingerprint, library_versions
from .sampling import profile_plan
from .timing import time_model

DRIFT_THRESHOLD = 0.10
REFERENCE_EVERY = 10


def _release_memory() -> None:
    """Give freed model and session memory back to the OS (glibc keeps it otherwise, and RSS
    grows by GBs over a long profile of differently sized models)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def default_out(device: str) -> Path:
    return Path("profiles") / f"{device}.parquet"


class Profiler:
    """Exports, times and records architectures of one model on one device and workload."""

    def __init__(self, config, device: Device, workload: Workload, writer: ProfileWriter, keep_onnx: bool = False):
        self.config = config
        self.space = SearchSpace.from_config(self.config)
        self.identity = model_identity(self.config)
        self.device, self.workload, self.writer, self.keep_onnx = device, workload, writer, keep_onnx
        self.onnx_root = cache_dir() / "onnx" / self.identity["config_hash"]
        self.key = {"device": device.name, "workload": workload.key, "model_hash": self.identity["config_hash"]}
        self.drift = 1.0

    def onnx_for(self, arch: Architecture) -> tuple[Path, float]:
        """The exported graph of `arch` (cached by architecture id and dtype) and export seconds."""
        folder = self.onnx_root / f"{arch.id}-{self.device.dtype}"
        if (folder / "model.onnx").is_file():
            return folder / "model.onnx", 0.0
        t0 = time.perf_counter()
        model = random_model(self.config, arch, self.device.dtype, self.device.torch_device)
        path = export_onnx(model, folder, self.device.torch_device)
        return path, time.perf_counter() - t0

    def measure(self, arch: Architecture, role: str) -> dict[str, Any]:
        """One row: measured statistics, or status 'error' with the error text."""
        row = self._base_row(arch, role)
        folder = self.onnx_root / f"{arch.id}-{self.device.dtype}"
        try:
            path, row["export_s"] = self.onnx_for(arch)
            t0 = time.perf_counter()
            stats = time_model(path, self.device, self.workload)
            row["timing_s"] = time.perf_counter() - t0
            for metric, s in stats.items():
                name = metric.removesuffix("_ms")
                row.update({f"{name}_ms": s.median_ms, f"{name}_p10_ms": s.p10_ms, f"{name}_p90_ms": s.p90_ms,
                            f"{name}_iqr_ms": s.iqr_ms, f"{name}_repeats": s.repeats})
            row["e2e_ms"] = self.workload.e2e_ms(row["prefill_ms"], row["decode_ms"])
        except (KeyboardInterrupt, LatpruneError):
            raise
        except Exception as exc:  # noqa: BLE001 - a failing sample is recorded and the run goes on
            row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000],
                       traceback=traceback.format_exc()[-4000:])
        finally:
            if not self.keep_onnx and arch != self.space.largest():  # the reference graph is reused
                shutil.rmtree(folder, ignore_errors=True)
            _release_memory()
        return row

    def _base_row(self, arch: Architecture, role: str) -> dict[str, Any]:
        return {
            "role": role, **self.key, "arch_id": arch.id, "arch_json": arch.to_json(),
            "layers": arch.num_layers, "heads": arch.heads[0], "kv_groups": arch.kv_groups[0], "mlp": arch.mlp[0],
            "hidden": arch.hidden, "head_dim": self.space.parent["head_dim"], "params": self.space.num_params(arch),
            "batch": self.workload.batch, "prompt": self.workload.prompt, "generate": self.workload.generate,
            "model_name": self.identity["name"], "model_type": self.space.model_type,
            "parent_config_json": self.config.to_json_string(use_diff=False),
            "device_json": json.dumps(self.device.to_dict()), "dtype": self.device.dtype,
            "threads": self.device.intra_threads, "host_json": json.dumps(host_fingerprint()),
            "cpu_model": host_fingerprint()["cpu_model"], "gpu_name": host_fingerprint().get("gpu_name", ""),
            "versions_json": json.dumps(library_versions()), "exporter": EXPORTER,
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": "ok", "error": "", "traceback": "", "export_s": 0.0, "timing_s": 0.0,
            "drift": self.drift, "drift_flag": abs(self.drift - 1) > DRIFT_THRESHOLD,
        }

    def reference(self, pbar=None) -> dict[str, Any]:
        """Time the reference architecture (the parent shape) and update the drift ratio."""
        ref = self.space.largest()
        row = self.measure(ref, "reference")
        if row["status"] != "ok":
            raise LatpruneError(f"the reference architecture failed to time: {row['error']}")
        previous = self.writer.rows(role="reference", status="ok", **self.key)
        if not previous.empty:  # relative to the median of earlier timings: robust to one unlucky first timing
            ratios = [row[m] / float(previous[m].median()) for m in ("prefill_ms", "decode_ms")]
            self.drift = max(ratios, key=lambda r: abs(r - 1))
            if abs(self.drift - 1) > DRIFT_THRESHOLD:
                (pbar.write if pbar else print)(
                    f"latprune: warning: reference drifted {self.drift - 1:+.0%} from its earlier timings; "
                    "following samples are flagged (machine busy or throttling?)")
        row.update(drift=self.drift, drift_flag=abs(self.drift - 1) > DRIFT_THRESHOLD)
        self.writer.append(row)
        return row


def profile(model: str | Path = "default", device: str = "cpu", samples: int = 40,
            workload: Workload | None = None, out: str | Path | None = None, seed: int = 0,
            devices_file: str | Path | None = None, reference_every: int = REFERENCE_EVERY,
            keep_onnx: bool = False, progress: bool = True) -> Path:
    """Profile `samples` architectures of `model` on `device`; rerunning resumes."""
    if samples < 1:
        raise LatpruneError(f"--samples must be at least 1; got {samples}")
    dev = get_device(device, devices_file)
    check_available(dev)
    workload = workload or Workload()
    out = Path(out) if out else default_out(dev.name)
    writer = ProfileWriter(out)
    prof = Profiler(load_config(model), dev, workload, writer, keep_onnx)
    plan = profile_plan(prof.space, samples, seed)
    done = set(writer.rows(role="sample", **prof.key)["arch_id"]) if not writer.frame.empty else set()
    todo = [a for a in plan if a.id not in done]
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc=f"profile {dev.name}", unit="sample",
               disable=not progress)
    try:
        if todo:
            prof.reference(bar)
        for i, arch in enumerate(todo):
            row = prof.measure(arch, "sample")
            writer.append(row)
            bar.update(1)
            if row["status"] == "ok":
                bar.set_postfix_str(f"{arch.describe()}: prefill {row['prefill_ms']:.1f} ms, "
                                    f"decode {row['decode_ms']:.2f} ms")
            else:
                bar.write(f"latprune: sample {arch.id} failed: {row['error'].splitlines()[0]}")
            if (i + 1) % reference_every == 0 and i + 1 < len(todo):
                prof.reference(bar)
    finally:
        bar.close()
        if not keep_onnx:
            shutil.rmtree(prof.onnx_root / f"{prof.space.largest().id}-{dev.dtype}", ignore_errors=True)
    return out
