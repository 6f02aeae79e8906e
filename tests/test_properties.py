"""Property-based checks of everything a user types or writes: architecture JSON, workloads,
device TOML tables and CLI option values. Valid input works; invalid input is one
`latprune: error:` line (exit 2) or a LatpruneError, never a traceback; no file changes."""

import json
import math
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from latprune import Architecture, LatpruneError
from latprune.architecture import KEYS
from latprune.cli import main
from latprune.profiling.devices import Device, load_devices
from latprune.workload import Workload

from conftest import smol_like_space

# derandomize: the same examples in every run, so a landing never hangs on a lucky draw (new cases go in @example)
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
scalars = st.one_of(st.integers(-3, 40), st.integers(), st.booleans(), st.floats(allow_nan=True),
                    st.text(max_size=5), st.none())
values = st.one_of(scalars, st.lists(st.one_of(st.integers(0, 40), scalars), max_size=6))


@st.composite
def arch_dicts(draw):
    data = {k: draw(st.one_of(st.integers(1, 12), st.lists(st.integers(0, 29), min_size=1, max_size=5), values))
            for k in KEYS if draw(st.integers(0, 9)) > 0}
    if draw(st.booleans()):
        data[draw(st.sampled_from(["hiden", "schema_version", "extra", "layer"]))] = draw(values)
    return data


@SETTINGS
@given(arch_dicts())
@example({"layers": 2**62, "heads": 9, "kv_groups": 3, "mlp": 512, "hidden": 576})  # once ran the host out of memory
def test_architecture_json_is_either_a_legal_architecture_or_one_clear_error(data):
    space = smol_like_space()
    try:
        arch = space.validate(Architecture.from_json(json.dumps(data)))
    except LatpruneError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert set(data) <= {*KEYS, "schema_version"}
    for key in ("heads", "kv_groups", "mlp"):
        assert all(type(v) is int for v in getattr(arch, key))
    assert Architecture.from_dict(arch.to_dict()) == arch and Architecture.from_json(arch.to_json()) == arch


@SETTINGS
@given(st.text(alphabet="batchpromptgenerate=,0123456789-. x", max_size=40))
def test_workload_text_is_a_workload_or_one_clear_error(text):
    try:
        w = Workload.parse(text)
    except LatpruneError as exc:
        assert "\n" not in str(exc)
        return
    assert min(w.batch, w.prompt, w.generate) >= 1


@SETTINGS
@given(st.integers(1, 64), st.integers(1, 4096), st.integers(1, 256), st.text(alphabet="bpg-0123456789x", max_size=12))
def test_a_workload_key_reads_back_as_its_workload_and_other_keys_are_one_clear_error(batch, prompt, generate, key):
    w = Workload(batch=batch, prompt=prompt, generate=generate)
    assert Workload.from_key(w.key) == w
    try:
        read = Workload.from_key(key)
    except LatpruneError as exc:
        assert "\n" not in str(exc)
        return
    assert re.fullmatch(r"b(\d+)-p(\d+)-g(\d+)", key)
    assert [read.batch, read.prompt, read.generate] == [int(v) for v in re.findall(r"\d+", key)]


def _toml(value) -> str:
    """A tiny TOML encoder for what the device tables hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


toml_scalars = st.one_of(st.integers(-2, 64), st.floats(allow_nan=True), st.booleans(), st.text(max_size=8))
device_values = {
    "providers": st.one_of(st.just(["CPUExecutionProvider"]), st.lists(toml_scalars, max_size=3), toml_scalars),
    "provider_options": st.one_of(st.just({"CPUExecutionProvider": {"x": 1}}),
                                  st.dictionaries(st.sampled_from(["CPUExecutionProvider", "Nope"]),
                                                  st.one_of(toml_scalars, st.dictionaries(st.text(min_size=1,
                                                            max_size=3), toml_scalars, max_size=2)), max_size=2)),
    **{k: toml_scalars for k in ("dtype", "threads", "warmup", "min_repeats", "min_time_s", "max_repeats", "bursts",
                                 "max_bursts", "ratio_tolerance", "busy_tolerance", "busy_retries", "io_binding",
                                 "description", "nonsense")},
}


@SETTINGS
@given(st.fixed_dictionaries({}, optional=device_values))
def test_device_tables_are_a_device_or_one_clear_error(tmp_path, table):
    path = tmp_path / "devices.toml"
    path.write_text("[devices.box]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()))
    try:
        device = load_devices(path)["box"]
    except LatpruneError as exc:
        assert "\n" not in str(exc) and "devices file" in str(exc)
        return
    assert isinstance(device, Device) and all(isinstance(p, str) for p in device.providers)
    for name in ("threads", "warmup", "min_repeats", "max_repeats", "bursts", "max_bursts", "busy_retries"):
        assert type(getattr(device, name)) is int and getattr(device, name) >= 0
    for name in ("min_time_s", "ratio_tolerance", "busy_tolerance"):
        assert math.isfinite(getattr(device, name)) and getattr(device, name) >= 0
    assert device.dtype in ("fp32", "fp16") and type(device.io_binding) is bool


option_text = st.one_of(st.integers(-5, 200).map(str), st.floats(allow_nan=True).map(str),
                        st.sampled_from(["", "nan", "inf", "-0", "1e400", "abc", "0x10", "3.5"]))


@SETTINGS
@pytest.mark.parametrize("command", ["search", "eval", "profile", "run"])
@given(data=st.data())
def test_any_option_value_ends_in_one_line_and_changes_no_file(capsys, tmp_path, monkeypatch, command, data):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path / "cache"))
    options = {"search": ["--latency-ms", "--finalists", "--evaluations", "--margin", "--seed", "--pareto",
                          "--distill-steps"],
               "eval": ["--windows"], "profile": ["--samples", "--seed"],
               "run": ["--latency-ms", "--samples", "--evaluations", "--seed"]}[command]
    argv = [command, "--model", str(tmp_path / "no-such-model")]
    for option in options:
        argv += [option, data.draw(option_text, label=option)]
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("latprune: error:") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
