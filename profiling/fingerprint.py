"""Host fingerprint and library versions, stored with every measurement."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HARDWARE = ("cpu_model", "cpu_cores", "gpu_name")  # what sets a timing (hostname, RAM and OS do not)
LIBRARIES = ("latprune", "torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "onnxruntime-gpu",
             "onnx", "numpy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return 0.0


def _gpu() -> dict[str, str]:
    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if not out:
        return {}
    name, _, driver = out[0].partition(",")
    info = {"gpu_name": name.strip(), "gpu_driver": driver.strip()}
    try:
        import torch

        info["cuda_version"] = str(torch.version.cuda)
    except ImportError:
        pass
    return info


@lru_cache(maxsize=1)
def host_fingerprint() -> dict[str, str]:
    """CPU model, cores, RAM; GPU name, driver and CUDA version when present."""
    info = {"hostname": platform.node(), "cpu_model": _cpu_model(), "cpu_cores": str(os.cpu_count()),
            "ram_gb": str(_ram_gb()), "os": platform.platform()}
    info.update(_gpu())
    return info


def describe_hardware(host: dict[str, str]) -> str:
    """'Intel(R) Xeon(R) Processor (2 cores)', with the GPU when there is one."""
    gpu = f", {host['gpu_name']}" if host.get("gpu_name") else ""
    return f"{host.get('cpu_model', 'an unknown CPU')} ({host.get('cpu_cores', '?')} cores){gpu}"


def hardware_difference(recorded: dict[str, str], here: dict[str, str] | None = None) -> str | None:
    """How the machine of fingerprint `recorded` differs from this one (`here`) in what sets
    a timing (the HARDWARE keys both name), as 'on A, and this host is B'; None when it does not."""
    here = host_fingerprint() if here is None else here
    if all(str(recorded[k]) == str(here[k]) for k in HARDWARE if k in recorded and k in here):
        return None
    return f"on {describe_hardware(recorded)}, and this host is {describe_hardware(here)}"


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
