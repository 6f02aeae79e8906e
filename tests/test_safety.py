"""Nothing lost, nothing silently wrong: a user's files, concurrent writers, interrupted
training, and bad input that must end in one `latprune: error:` line (exit 2)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latprune.cli import main
from latprune.files import MODEL_MARKER, atomic_dir
from latprune.predictors.predictor import Predictor
from latprune.profiling.dataset import ProfileWriter, read_profile, write_profile

from conftest import VOCAB, make_tiny, synthetic_profile


def fails_in_one_line(capsys, *argv: str) -> str:
    """Run the CLI in-process; assert exit 2 with exactly one `latprune: error:` line."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("latprune: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def users_folder(tmp_path):
    """A folder of a user's own files (no latprune metadata)."""
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "todo.txt").write_text("my notes")
    (folder / "sub" / "data.csv").write_text("1,2,3")
    return folder


@pytest.fixture
def tiny_dir(tmp_path):
    make_tiny("llama").save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.fixture
def predictor_dir(tmp_path):
    return Predictor.fit(synthetic_profile(40), "roofline").save(tmp_path / "pred")


# ---- --out never deletes a user's files ---------------------------------------
def test_compress_out_dot_refuses_and_leaves_the_current_directory(capsys, users_folder, tiny_dir, monkeypatch):
    monkeypatch.chdir(users_folder)
    before = snapshot(users_folder)
    err = fails_in_one_line(capsys, "compress", "--model", str(tiny_dir), "--keep", "0.9", "--out", ".")
    assert "current directory" in err and snapshot(users_folder) == before
    fails_in_one_line(capsys, "compress", "--model", str(tiny_dir), "--out", str(users_folder.parent))
    assert snapshot(users_folder) == before


def test_fit_out_holding_its_profile_refuses_and_keeps_the_profile(capsys, tmp_path):
    profile = tmp_path / "mine" / "cpu.parquet"
    write_profile(profile, synthetic_profile(20))
    before = snapshot(tmp_path / "mine")
    err = fails_in_one_line(capsys, "fit", str(profile), "--out", str(tmp_path / "mine"))
    assert "would replace the input" in err and snapshot(tmp_path / "mine") == before


@pytest.mark.parametrize("command", ["compress", "search", "distill", "fit"])
def test_out_over_a_users_folder_refuses_and_changes_nothing(capsys, command, users_folder, tiny_dir, tmp_path):
    before = snapshot(users_folder)
    args = {"compress": ["compress", "--model", str(tiny_dir), "--keep", "0.5"],
            "search": ["search", "--model", str(tiny_dir), "--latency-ms", "5"],
            "distill": ["distill", "--student", str(tiny_dir), "--teacher", str(tiny_dir)],
            "fit": ["fit", str(tmp_path / "p.parquet")]}[command]
    if command == "fit":
        write_profile(tmp_path / "p.parquet", synthetic_profile(20))
    err = fails_in_one_line(capsys, *args, "--out", str(users_folder))
    assert "latprune did not write" in err and snapshot(users_folder) == before


def test_a_latprune_output_is_replaced_whole_and_an_input_never(tmp_path):
    out = tmp_path / "model"
    for version in ("1", "2"):
        with atomic_dir(out, MODEL_MARKER) as tmp:
            (tmp / MODEL_MARKER).write_text(version)
    assert (out / MODEL_MARKER).read_text() == "2" and len(list(tmp_path.iterdir())) == 1  # no leftovers
    with pytest.raises(Exception, match="would replace the input"):
        with atomic_dir(out, MODEL_MARKER, inputs=[out / "weights.bin"]):
            pass
    assert (out / MODEL_MARKER).read_text() == "2"


# ---- concurrent profile writers ---------------------------------------------------
def test_a_second_profile_process_is_refused_and_the_first_keeps_its_rows(tmp_path, tiny_dir):
    out = tmp_path / "p.parquet"
    with ProfileWriter(out) as first:
        first.append({"role": "sample", "arch_id": "a", "status": "ok"})
        second = subprocess.run([sys.executable, "-m", "latprune.cli", "profile", "--model", str(tiny_dir),
                                 "--samples", "2", "--out", str(out)], capture_output=True, text=True,
                                env={**os.environ, "LATPRUNE_CACHE": str(tmp_path / "cache")})
        first.append({"role": "sample", "arch_id": "b", "status": "ok"})
    err = second.stderr.strip()
    assert second.returncode == 2 and err.count("\n") == 0 and "Traceback" not in err
    assert "in use by another latprune process" in err and "disturb each other" in err
    assert list(read_profile(out).arch_id) == ["a", "b"]
    with ProfileWriter(out) as again:  # the lock went with the first writer
        assert len(again.frame) == 2


# ---- timings of another machine ------------------------------------------------
ELSEWHERE = {"hostname": "elsewhere", "cpu_model": "Imaginary CPU 9000 (test)", "cpu_cores": "2"}


def calibrated_elsewhere(path: Path, model_dir: Path, **workload: int) -> bytes:
    """`path`: a profile whose reference row (its scale) was timed on another machine; its bytes."""
    import pandas as pd

    from latprune.models import load_config, model_identity
    from latprune.workload import Workload

    row = {"role": "reference", "status": "ok", "device": "cpu", "workload": Workload(**workload).key,
           "model_hash": model_identity(load_config(str(model_dir)))["config_hash"], "arch_id": "parent",
           "host_json": json.dumps(ELSEWHERE), "prefill_ms": 10.0, "decode_ms": 1.0, "drift_flag": False}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_profile(path, pd.DataFrame([row]))
    return path.read_bytes()


def test_a_profile_calibrated_on_another_machine_is_refused_before_any_timing(capsys, tmp_path, tiny_dir):
    out = tmp_path / "p.parquet"
    before = calibrated_elsewhere(out, tiny_dir, prompt=16, generate=4)
    err = fails_in_one_line(capsys, "profile", "--model", str(tiny_dir), "--samples", "2", "--out", str(out),
                            "--workload", "batch=1,prompt=16,generate=4")
    assert "calibrated on Imaginary CPU 9000 (test) (2 cores), and this host is" in err and str(out) in err
    assert out.read_bytes() == before  # not a row added


def test_search_refuses_a_record_or_a_predictor_from_another_machine(capsys, tmp_path, tiny_dir, monkeypatch):
    import warnings

    from latprune.errors import LatpruneError
    from latprune.search.workflow import check_predictor_host

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path / "no-cache"))
    calibrated_elsewhere(tmp_path / "profiles" / "cpu.parquet", tiny_dir)
    err = fails_in_one_line(capsys, "search", "--model", str(tiny_dir), "--latency-ms", "10")
    assert "profile 'profiles/cpu.parquet' was calibrated on Imaginary CPU 9000" in err
    assert not (tmp_path / "no-cache").exists()  # refused before the model was loaded
    here = Predictor.fit(synthetic_profile(20), "roofline")
    check_predictor_host(here)  # profiled on this host: nothing to say
    there = synthetic_profile(20).assign(host_json=json.dumps(ELSEWHERE))
    elsewhere = Predictor.fit(there, "roofline")
    with pytest.raises(LatpruneError, match=r"fitted on timings taken on Imaginary CPU 9000 \(test\) \(2 cores\), "
                                            r"and this host is .*: profile and fit on this host \(or pass --allow"):
        check_predictor_host(elsewhere)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_predictor_host(elsewhere, allow_mismatch=True)
    assert any("Imaginary CPU 9000" in str(w.message) for w in caught)


# ---- interrupted distillation saves its finished steps -------------------------
def test_distillation_interrupted_before_its_first_checkpoint_keeps_the_finished_steps(tmp_path, monkeypatch):
    import latprune.compress.distill as distill_mod
    from latprune import Architecture, SearchSpace
    from latprune.compress.extract import extract
    from latprune.errors import Interrupted

    def setup():
        teacher = make_tiny("llama")
        student = extract(teacher, Architecture.uniform([0, 2], 4, 2, 64, 48),
                          space=SearchSpace.from_config(teacher.config))
        return teacher, student

    windows = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(0))
    cfg = distill_mod.DistillConfig(steps=6, batch_size=4, grad_accum=2, lr=1e-3, warmup=2)  # saves every 25
    teacher, straight = setup()
    distill_mod.distill(straight, teacher, windows, cfg, progress=False)

    real_loss, calls = distill_mod._loss, {"n": 0}

    def ctrl_c_in_step_4(*args):
        calls["n"] += 1
        if calls["n"] == 3 * cfg.grad_accum + 1:  # the first micro-batch of the 4th step
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(distill_mod, "_loss", ctrl_c_in_step_4)
    teacher, interrupted = setup()
    with pytest.raises(Interrupted, match="after 3 of 6 steps; those steps are saved"):
        distill_mod.distill(interrupted, teacher, windows, cfg, tmp_path / "ck", progress=False)
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["step"] == 3
    monkeypatch.setattr(distill_mod, "_loss", real_loss)
    teacher, resumed = setup()
    distill_mod.distill(resumed, teacher, windows, cfg, tmp_path / "ck", progress=False)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


# ---- predictions of per-layer or malformed architectures ------------------------
@pytest.mark.parametrize("arch, says", [
    ({"layers": 3, "heads": 9, "kv_groups": [3, 2], "mlp": 512, "hidden": 576}, "'kv_groups' has 2 entries but 3"),
    ({"layers": 3, "heads": 9, "kv_groups": 3, "mlp": 512, "hiden": 576}, "unknown key(s) 'hiden'"),
    ({"layers": True, "heads": 9, "kv_groups": 3, "mlp": 512, "hidden": 576}, "'layers' must be"),
    ({"layers": 3, "heads": "9", "kv_groups": 3, "mlp": 512, "hidden": 576}, "'heads' must be"),
    ({"layers": 3, "heads": 9, "kv_groups": 3, "mlp": 512.0, "hidden": 576}, "'mlp' must be"),
    ({"layers": 3, "heads": 9, "kv_groups": None, "mlp": 512, "hidden": 576}, "'kv_groups' must be"),
])
def test_predict_refuses_what_it_cannot_predict(capsys, tmp_path, predictor_dir, arch, says):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch))
    assert says in fails_in_one_line(capsys, "predict", "--predictor", str(predictor_dir), "--arch", str(path))


def test_predict_refuses_a_number_json_cannot_hold(capsys, tmp_path, predictor_dir):
    path = tmp_path / "arch.json"
    path.write_text('{"layers": 3, "heads": 9, "kv_groups": 3, "mlp": 1e400, "hidden": 576}')
    assert "'mlp' must be" in fails_in_one_line(capsys, "predict", "--predictor", str(predictor_dir), "--arch",
                                               str(path))


# ---- damaged files and bad values: one line each ------------------------------
def test_damaged_predictors_are_refused_in_one_line(capsys, tmp_path, predictor_dir):
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"layers": 3, "heads": 9, "kv_groups": 3, "mlp": 512, "hidden": 576}))
    meta = (predictor_dir / "metadata.json").read_text()
    (predictor_dir / "metadata.json").write_text(meta[: len(meta) // 2])
    assert "damaged" in fails_in_one_line(capsys, "predict", "--predictor", str(predictor_dir), "--arch", str(arch))
    xgb = Predictor.fit(synthetic_profile(40), "xgboost").save(tmp_path / "xgb")
    ubj = sorted(xgb.glob("*.ubj"))
    ubj[0].write_bytes(ubj[0].read_bytes()[:100])
    ubj[1].unlink()
    assert "damaged" in fails_in_one_line(capsys, "predict", "--predictor", str(xgb), "--arch", str(arch))


@pytest.mark.parametrize("config", ["{}", "not json", None])
def test_damaged_model_directories_are_refused_in_one_line(capsys, tmp_path, config):
    folder = tmp_path / "m"
    make_tiny("llama").config.save_pretrained(folder)  # a config without weights
    if config is not None:
        (folder / "config.json").write_text(config)
    fails_in_one_line(capsys, "eval", "--model", str(folder))


@pytest.mark.parametrize("content", [b"", b"GGUF" + bytes(range(256)) * 4, b"\x00" * 64])
def test_damaged_gguf_files_are_refused_in_one_line(capsys, tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    fails_in_one_line(capsys, "space", "--model", str(path))


def test_text_that_is_not_prose_is_refused(capsys, tmp_path, tiny_dir):
    noise = tmp_path / "noise.txt"
    noise.write_bytes(bytes(torch.randint(0, 256, (20000,), generator=torch.Generator().manual_seed(0)).tolist()))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    controls = tmp_path / "controls.txt"
    controls.write_text("word \x01\x02\x03 " * 2000)
    for text, says in ((noise, "not UTF-8"), (empty, "too short"), (controls, "does not look like text")):
        assert says in fails_in_one_line(capsys, "eval", "--model", str(tiny_dir), "--text", str(text))


@pytest.mark.parametrize("argv, says", [
    (["run", "--metric", "nope"], "--metric"),
    (["run", "--latency-ms", "nan"], "--latency-ms"),
    (["search", "--latency-ms", "10", "--strategy", "nope"], "--strategy"),
    (["search", "--latency-ms", "10", "--finalists", "0"], "--finalists"),
    (["search", "--latency-ms", "10", "--evaluations", "0"], "--evaluations"),
    (["search", "--latency-ms", "10", "--margin", "1"], "--margin"),
    (["search", "--latency-ms", "-3"], "--latency-ms"),
    (["search", "--latency-ms", "10", "--optimizer", "NoSuchOptimizer"], "NoSuchOptimizer"),
    (["eval", "--windows", "0"], "--windows"),
    (["eval", "--windows", "-1"], "--windows"),
    (["profile", "--seed", "-1"], "--seed"),
    (["profile", "--samples", "0"], "--samples"),
    (["run", "--samples", "100000000"], "--samples"),
    (["distill", "--student", "x", "--out", "y", "--lr", "nan"], "--lr"),
    (["distill", "--student", "x", "--out", "y", "--steps", "-1"], "--steps"),
    (["fit", "p.parquet", "--kind", "forest"], "--kind"),
    (["compress", "--keep", "0", "--out", "o"], "--keep"),
])
def test_bad_options_fail_in_one_line_before_any_work(capsys, tmp_path, monkeypatch, argv, says):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATPRUNE_CACHE", str(tmp_path / "no-cache"))  # a model load would convert into it
    assert says in fails_in_one_line(capsys, *argv)
    assert not (tmp_path / "no-cache").exists() and not (tmp_path / "profiles").exists()


def test_report_of_a_folder_without_candidates_is_one_line(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    assert "candidates.parquet" in fails_in_one_line(capsys, "report", str(tmp_path / "run"))


def test_model_code_shipped_in_a_directory_is_never_run(capsys, tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {
        "AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('ran')\n")
    fails_in_one_line(capsys, "space", "--model", str(folder))
    assert not (tmp_path / "ran").exists()
