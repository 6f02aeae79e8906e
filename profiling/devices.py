"""Devices: named targets with the ONNX Runtime execution providers, dtype, threads and
timing policy used on them. Built-ins `cpu`, `a100`, `jetson`; users add their own in a
TOML file (`--devices-file`, default `$XDG_CONFIG_HOME/latprune/devices.toml`).

A device never silently falls back: `check_available` refuses a device whose first
provider this onnxruntime lacks, and the timing harness refuses a session that did not
end up on it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latprune.checks import is_int
from latprune.errors import LatpruneError

PROVIDER_HINTS = {
    "CUDAExecutionProvider": "install onnxruntime-gpu (matching your CUDA) on a host with an NVIDIA GPU",
    "TensorrtExecutionProvider": "install onnxruntime-gpu built with TensorRT (JetPack's wheel on a Jetson)",
}


@dataclass(frozen=True)
class Device:
    name: str
    providers: tuple[str, ...]
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    dtype: str = "fp32"  # fp32 | fp16
    threads: int = 0  # intra-op threads; 0 = all logical cores
    warmup: int = 3
    min_repeats: int = 10
    min_time_s: float = 1.0
    max_repeats: int = 200
    bursts: int = 9  # timings are split into this many bursts, interleaved with the reference
    max_bursts: int = 27  # ... and extended up to this many while the ratio's 95% interval is
    ratio_tolerance: float = 0.02  # wider than this (relative half-width)
    busy_tolerance: float = 0.05  # host busy: the reference ran this far off its recent median ...
    busy_retries: int = 2  # ... so the sample is timed again, up to this many more times
    io_binding: bool = False
    description: str = ""

    @property
    def torch_device(self) -> str:
        return "cuda" if any(p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for p in self.providers) \
            else "cpu"

    @property
    def intra_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["providers"] = list(self.providers)
        return d


BUILTIN: dict[str, Device] = {
    "cpu": Device("cpu", ("CPUExecutionProvider",), dtype="fp32", warmup=2, min_repeats=7, min_time_s=1.0,
                  description="this machine's CPU, ORT CPU EP, fp32, no spinning"),
    "a100": Device("a100", ("CUDAExecutionProvider",), {"CUDAExecutionProvider": {"device_id": 0}}, dtype="fp16",
                   warmup=10, min_repeats=30, min_time_s=1.0, io_binding=True,
                   description="NVIDIA datacenter GPU (A100/H100/H200), ORT CUDA EP, fp16, IO binding"),
    "jetson": Device("jetson", ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
                     {"TensorrtExecutionProvider": {"trt_fp16_enable": True, "trt_engine_cache_enable": True}},
                     dtype="fp16", warmup=10, min_repeats=30, min_time_s=1.0, io_binding=True,
                     description="NVIDIA Jetson, ORT TensorRT EP then CUDA EP, fp16, IO binding"),
}


def default_devices_file() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "latprune" / "devices.toml"


def _device_from_toml(name: str, data: dict[str, Any], source: Path) -> Device:
    _check_table(data, lambda what: LatpruneError(f"devices file {source}: device '{name}' {what}"))
    try:
        return Device(name=name, **{**data, "providers": tuple(data["providers"])})
    except TypeError as exc:
        raise LatpruneError(f"devices file {source}: device '{name}': {exc}") from None


def _check_table(data: dict[str, Any], bad) -> None:
    """Raise `bad(what)` for the first key of a [devices.NAME] table of the wrong type or range."""
    known = set(Device.__dataclass_fields__) - {"name"}
    unknown = set(data) - known
    if unknown:
        raise bad(f"has unknown keys {sorted(unknown)}; known: {sorted(known)}")
    providers = data.get("providers")
    if not (isinstance(providers, list) and providers and all(isinstance(p, str) and p for p in providers)):
        raise bad('needs \'providers\', a list of ONNX Runtime provider names, e.g. ["CPUExecutionProvider"]')
    options = data.get("provider_options", {})
    if not (isinstance(options, dict) and all(k in providers and isinstance(v, dict) for k, v in options.items())
            and all(isinstance(x, str | int | float | bool) for v in options.values() for x in v.values())):
        raise bad("provider_options must be a table per provider of 'providers', of strings, numbers or booleans, "
                  'e.g. provider_options.CUDAExecutionProvider = { device_id = 0 }')
    if data.get("dtype", "fp32") not in ("fp32", "fp16"):
        raise bad("dtype must be fp32 or fp16")
    for key, lowest in (("threads", 0), ("warmup", 0), ("min_repeats", 1), ("max_repeats", 1), ("bursts", 1),
                        ("max_bursts", 1), ("busy_retries", 0)):
        if key in data and (not is_int(data[key]) or data[key] < lowest):
            raise bad(f"{key} must be an integer >= {lowest}")
    for key in ("min_time_s", "ratio_tolerance", "busy_tolerance"):
        if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int | float)
                            or not 0 <= data[key] < float("inf")):
            raise bad(f"{key} must be a number >= 0")
    if not isinstance(data.get("io_binding", False), bool):
        raise bad("io_binding must be true or false")
    if not isinstance(data.get("description", ""), str):
        raise bad("description must be a string")


def load_devices(devices_file: str | Path | None = None) -> dict[str, Device]:
    """Built-ins plus the devices of the TOML file (an explicit file must exist)."""
    devices = dict(BUILTIN)
    path = Path(devices_file) if devices_file else default_devices_file()
    if devices_file and not path.is_file():
        raise LatpruneError(f"devices file '{devices_file}' does not exist")
    if not path.is_file():
        return devices
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LatpruneError(f"devices file {path} is not valid TOML: {exc}") from None
    table = data.get("devices")
    if not isinstance(table, dict):
        raise LatpruneError(f"devices file {path}: expected [devices.NAME] tables")
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise LatpruneError(f"devices file {path}: [devices.{name}] must be a table")
        devices[name] = _device_from_toml(name, spec, path)
    return devices


def get_device(name: str, devices_file: str | Path | None = None) -> Device:
    devices = load_devices(devices_file)
    if name not in devices:
        raise LatpruneError(f"unknown device '{name}'; known: {', '.join(sorted(devices))} "
                            f"(add your own in {default_devices_file()})")
    return devices[name]


def availability(device: Device) -> tuple[bool, str]:
    """(usable here, reason)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in device.providers if p not in available]
    if device.providers[0] in missing:
        first = device.providers[0]
        hint = PROVIDER_HINTS.get(first, "install an onnxruntime build that has it")
        return False, f"this onnxruntime ({ort.__version__}) has no {first}: {hint}"
    if device.torch_device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU visible to torch (needed to build fp16 models on the device)"
    return True, "ok"


def check_available(device: Device) -> None:
    ok, why = availability(device)
    if not ok:
        raise LatpruneError(f"device '{device.name}' is not usable here: {why}")
