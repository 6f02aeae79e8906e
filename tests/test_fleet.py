"""Fleet profiling on a local Ray cluster: worker nodes tagged as two devices (both this CPU,
with different thread settings), one killed mid-run and restarted."""

import threading
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from latprune import LatpruneError
from latprune.architecture import Architecture
from latprune.profiling.dataset import read_profile
from latprune.profiling.fleet import fleet_profile, offered, resource
from latprune.workload import Workload

from conftest import make_tiny

FAST = "warmup = 1\nmin_repeats = 3\nmin_time_s = 0.05\nbursts = 3\nmax_bursts = 3\n"
DEVICES = (f'[devices.cpu-a]\nproviders = ["CPUExecutionProvider"]\nthreads = 1\n{FAST}\n'
           f'[devices.cpu-b]\nproviders = ["CPUExecutionProvider"]\nthreads = 2\n{FAST}')
SAMPLES = 6


@pytest.fixture
def fleet(tmp_path, monkeypatch):
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path / "cache"))  # before the nodes start: they inherit it
    make_tiny("llama").save_pretrained(tmp_path / "tiny")
    (tmp_path / "devices.toml").write_text(DEVICES)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {name: cluster.add_node(num_cpus=1, resources={resource(name): 1}) for name in ("cpu-a", "cpu-b")}
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    yield cluster, nodes, tmp_path
    ray.shutdown()
    cluster.shutdown()


def _samples(path):
    rows = read_profile(path)
    return rows, rows[rows.role == "sample"]


def test_two_devices_at_once_survive_a_node_killed_mid_run(fleet):
    cluster, nodes, tmp = fleet
    assert offered(cluster.address) == {"cpu-a": 1, "cpu-b": 1}
    result: dict = {}

    def run():
        try:
            result["outs"] = fleet_profile(str(tmp / "tiny"), ["cpu-a", "cpu-b"], SAMPLES,
                                           Workload(prompt=16, generate=4), address=cluster.address,
                                           out_dir=tmp / "profiles", devices_file=tmp / "devices.toml")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    path_a = tmp / "profiles" / "cpu-a.parquet"
    deadline = time.time() + 240
    while time.time() < deadline and not (path_a.exists() and len(_samples(path_a)[1]) >= 2):
        time.sleep(0.2)
    cluster.remove_node(nodes["cpu-a"])  # the node dies while it times a sample
    killed_at = len(_samples(path_a)[1])
    assert 2 <= killed_at < SAMPLES, "the kill should land mid-run"
    time.sleep(1)
    cluster.add_node(num_cpus=1, resources={resource("cpu-a"): 1})  # ... and comes back
    worker.join(timeout=300)
    assert not worker.is_alive() and "error" not in result, result.get("error")
    for name in ("cpu-a", "cpu-b"):
        rows, samples = _samples(tmp / "profiles" / f"{name}.parquet")
        assert len(samples) == SAMPLES and samples.arch_id.is_unique and (samples.status == "ok").all(), name
        assert (rows.device == name).all() and set(rows.threads) == {1 if name == "cpu-a" else 2}
    rows, samples = _samples(path_a)
    assert (rows.role == "reference").sum() >= 2  # the restarted node timed the parent again, on the file's scale
    assert len({a.id for a in map(Architecture.from_json, samples.arch_json)}) == SAMPLES


def test_a_device_no_node_offers_is_one_line_before_any_work(fleet):
    cluster, _, tmp = fleet
    with pytest.raises(LatpruneError, match=r"no node of the Ray cluster offers device 'cpu'.*latprune:cpu"):
        fleet_profile(str(tmp / "tiny"), ["cpu-a", "cpu"], 2, address=cluster.address, out_dir=tmp / "p",
                      devices_file=tmp / "devices.toml")
    assert not (tmp / "p").exists()
