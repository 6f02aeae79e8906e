"""Wall time of profiling two devices through Ray at once vs two sequential local profiles.

Both devices are this machine's CPU (`cpu-1t` with one thread and `cpu` with all cores,
from benchmarks/data/devices.toml), so on a 2-core VM the two Ray nodes share the cores the
sequential runs each had alone: expect about equal wall time here. With N real nodes, one per
device (or several per device), samples run in parallel across nodes, and the wall time is
about the slowest device's share: max over devices of samples x (export + paired timing)
/ nodes of that device, plus Ray's start (seconds) and one reference timing per node.

    python benchmarks/fleet_scaling.py --samples 20
"""

from __future__ import annotations

# isort: off
import _common  # first: sets OMP_WAIT_POLICY=PASSIVE before anything imports torch
# isort: on

import argparse
import tempfile
import time
from pathlib import Path

from latprune.profiling.fleet import fleet_profile, resource
from latprune.profiling.run import profile

DEVICES = Path(__file__).parent / "data" / "devices.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--devices", default="cpu-1t,cpu")
    args = ap.parse_args()
    names = args.devices.split(",")
    work = Path(tempfile.mkdtemp(prefix="fleet-"))
    t0 = time.perf_counter()
    for name in names:
        profile("default", name, args.samples, out=work / "local" / f"{name}.parquet", devices_file=DEVICES,
                progress=False)
    local_s = time.perf_counter() - t0
    import ray
    from ray.cluster_utils import Cluster

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for name in names:
        cluster.add_node(num_cpus=1, resources={resource(name): 1})
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    fleet_profile("default", names, args.samples, address=cluster.address, out_dir=work / "ray", devices_file=DEVICES)
    ray_s = time.perf_counter() - t0
    ray.shutdown()
    cluster.shutdown()
    body = "\n".join([
        f"{len(names)} devices ({', '.join(names)}) x {args.samples} samples of the default model, on this machine.",
        "", "| how | wall time |", "|---|---|",
        f"| sequential local profiles | {local_s / 60:.1f} min |",
        f"| Ray, one node per device (cluster start included) | {ray_s / 60:.1f} min |", "",
        "Scaling model (N nodes on separate machines): wall time ≈ max over devices of samples x seconds per "
        "sample / nodes of that device, plus the cluster start and one reference timing per node; on one "
        "2-core machine the nodes share the cores, so no speedup is expected here."])
    print(_common.write_markdown("fleet_scaling", "Fleet profiling on Ray vs sequential local runs", body))


if __name__ == "__main__":
    main()
