"""Profiling a fleet of devices at once on Ray (`latprune profile --device a,b --ray ADDRESS`).

A device is a Ray custom resource, `latprune:NAME`, offered by the nodes of that device
(`ray start --address HEAD --resources '{"latprune:jetson": 1}'`). This process, the
coordinator, plans every device's samples and owns one Parquet per device. On each node
one actor per unit of the resource (one per node, so never two timings at once on a node)
builds, exports and times samples paired with the parent on that node and returns the
rows; the coordinator appends them to the device's file as they arrive, each with its
node's host fingerprint. All nodes of a device record on the device's scale: the file's
baseline (the first reference row, timed by one node before any other starts), each node's
own reference timing recorded as a drift from it, like a resumed session's. A node that dies
mid-sample: its sample goes back in the queue for the device's other nodes, its actor
restarts when the node is back, and finished rows are already in the file; rerunning
resumes like a local profile.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.models import config_from_dict, load_config
from latprune.workload import Workload

from .dataset import ProfileWriter, default_profile
from .devices import Device, get_device
from .sampling import check_samples, profile_plan

PREFIX = "latprune:"
RETRY_S = 1.0  # between asks whether a restarting actor is back


def resource(device: str) -> str:
    """The Ray custom resource that nodes of `device` offer."""
    return PREFIX + device


def require_ray():
    """ray, or one line naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise LatpruneError("--ray needs ray: pip install -e '.[ray]' (setup.sh installs it)") from None
    return ray


def connect(address: str):
    """ray, connected to the cluster at `address` ('auto': the local one)."""
    ray = require_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise LatpruneError(f"cannot reach the Ray cluster at '{address}': {str(exc).splitlines()[0]}") from None
    return ray


def offered(address: str) -> dict[str, int]:
    """Devices the cluster's nodes offer, with how many units of each (one per node)."""
    ray = connect(address)
    return {k.removeprefix(PREFIX): int(v) for k, v in ray.cluster_resources().items() if k.startswith(PREFIX)}


class _Rows:
    """What a node's Profiler needs of a ProfileWriter: the rows so far, kept in memory."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame

    def append(self, row: dict[str, Any]) -> None:
        self.frame = pd.concat([self.frame, pd.DataFrame([row])], ignore_index=True)


class NodeProfiler:
    """The Ray actor on one node of a device: a Profiler whose rows go back to the coordinator."""

    def __init__(self, config: dict, device: Device, workload: Workload, references: pd.DataFrame):
        from .devices import check_available
        from .run import Profiler

        check_available(device)  # a node whose ONNX Runtime lacks the provider fails here, by name
        self.rows = _Rows(references)
        self.profiler = Profiler(config_from_dict(config), device, workload, self.rows, check_host=False)

    def reference(self) -> list[dict[str, Any]]:
        """Time the parent alone (the rows recorded by this call)."""
        return [self.profiler.reference()]

    def measure(self, arch_json: str) -> list[dict[str, Any]]:
        """One sample; with this node's session reference first, when it has none yet."""
        rows = [] if self.profiler.session_referenced else self.reference()
        return [*rows, self.profiler.measure(Architecture.from_json(arch_json), "sample")]

    def ready(self) -> bool:
        return True


def _actors(ray, device: Device, count: int, config: dict, workload: Workload, references: pd.DataFrame) -> list:
    remote = ray.remote(NodeProfiler).options(resources={resource(device.name): 1}, num_cpus=0, max_restarts=-1,
                                              max_task_retries=0)
    return [remote.remote(config, device, workload, references) for _ in range(count)]


class _Device:
    """One device's file, queue of samples, actors and progress bar."""

    def __init__(self, device: Device, writer: ProfileWriter, plan: list[Architecture], position: int):
        self.device, self.writer = device, writer
        self.queue = deque(a for a in plan if a.id not in self.sampled())
        self.bar = tqdm(total=len(plan), initial=len(plan) - len(self.queue), desc=f"profile {device.name}",
                        unit="sample", position=position)
        self.idle: list = []
        self.failures: list[str] = []

    def references(self) -> pd.DataFrame:
        frame = self.writer.frame
        return frame[frame.role == "reference"] if not frame.empty else frame

    def sampled(self) -> set[str]:
        """Ids of the architectures the file already has sample rows of."""
        frame = self.writer.frame
        return set(frame.arch_id[frame.role == "sample"]) if not frame.empty else set()

    def record(self, rows: list[dict[str, Any]]) -> None:
        done = self.sampled()
        for row in rows:
            if row["role"] == "sample" and row["arch_id"] in done:
                continue  # never a duplicate row
            self.writer.append(row)
            if row["role"] == "sample":
                self.bar.update(1)


def fleet_profile(model: str | Path, devices: list[str], samples: int, workload: Workload | None = None, *,
                  address: str = "auto", out_dir: str | Path | None = None, seed: int = 0,
                  devices_file: str | Path | None = None) -> dict[str, Path]:
    """Profile `samples` architectures of `model` on every device of `devices` at once, each on
    the Ray nodes that offer it; returns each device's Parquet (default profiles/NAME.parquet,
    or OUT_DIR/NAME.parquet). Rerunning resumes."""
    check_samples(samples)
    devs = [get_device(name, devices_file) for name in devices]
    workload = workload or Workload()
    config = load_config(model)
    have = offered(address)
    missing = [d.name for d in devs if not have.get(d.name)]
    if missing:
        raise LatpruneError(f"no node of the Ray cluster offers device '{missing[0]}': start one with "
                            f"ray start --address ADDRESS --resources '{{\"{resource(missing[0])}\": 1}}'")
    ray = connect(address)
    outs = {d.name: Path(out_dir) / f"{d.name}.parquet" if out_dir else default_profile(d.name) for d in devs}
    space_plan = profile_plan(_space(config), samples, seed)
    writers = [ProfileWriter(outs[d.name]) for d in devs]
    try:
        states = [_Device(d, w, space_plan, i) for i, (d, w) in enumerate(zip(devs, writers))]
        _run(ray, states, config.to_dict(), workload, have)
    finally:
        for w in writers:
            w.close()
    failed = {s.device.name: s.failures for s in states if s.failures and s.queue}
    if failed:
        name, why = next(iter(failed.items()))
        raise LatpruneError(f"device '{name}': every node failed ({why[-1]}); the other devices' rows are saved")
    return outs


def _space(config):
    from latprune.space import SearchSpace

    return SearchSpace.from_config(config)


def _start(ray, state: _Device, config: dict, workload: Workload, count: int) -> None:
    """The device's actors, after one of them fixed the file's baseline if it has none."""
    if not state.queue:
        return
    if state.references().empty:
        first = _actors(ray, state.device, 1, config, workload, state.references())[0]
        try:
            state.record(ray.get(first.reference.remote()))
        except ray.exceptions.RayError as exc:
            state.failures.append(_reason(exc))
            return
        ray.kill(first)
    state.idle = _actors(ray, state.device, count, config, workload, state.references())


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if "Error" in line), text[-1] if text else type(exc).__name__)


def _run(ray, states: list[_Device], config: dict, workload: Workload, have: dict[str, int]) -> None:
    """Dispatch every queued sample to an idle actor of its device until all are recorded."""
    for state in states:
        _start(ray, state, config, workload, have[state.device.name])
    inflight: dict = {}  # ObjectRef -> (state, actor, arch)
    recovering: dict = {}  # ready() ObjectRef -> (state, actor)
    while any(s.queue and s.idle for s in states) or inflight or recovering:
        for state in states:
            while state.queue and state.idle:
                actor, arch = state.idle.pop(), state.queue.popleft()
                inflight[actor.measure.remote(arch.to_json())] = (state, actor, arch)
        ready, _ = ray.wait([*inflight, *recovering], num_returns=1)
        for ref in ready:
            if ref in recovering:
                state, actor = recovering.pop(ref)
                try:
                    ray.get(ref)
                    state.idle.append(actor)
                except ray.exceptions.ActorUnavailableError:  # restarting (its node is coming back): ask again
                    time.sleep(RETRY_S)
                    recovering[actor.ready.remote()] = (state, actor)
                except ray.exceptions.RayError as exc:  # cannot start on this node: leave it out
                    state.failures.append(_reason(exc))
                continue
            state, actor, arch = inflight.pop(ref)
            try:
                state.record(ray.get(ref))
                state.idle.append(actor)
            except ray.exceptions.RayError as exc:  # the node died or the actor failed: the sample goes back
                state.queue.appendleft(arch)
                state.failures.append(_reason(exc))
                recovering[actor.ready.remote()] = (state, actor)
    for state in states:
        state.bar.close()
