"""The command line: one clear line for bad input, and a compress/eval round trip."""

import json
import subprocess
import sys

import pytest

from latprune.cli import main

from conftest import make_tiny


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "latprune.cli", *args], capture_output=True, text=True)


def test_missing_model_is_one_line():
    r = run_cli("space", "--model", "/does/not/exist")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_unsupported_family_is_one_line(tmp_path):
    from transformers import BertConfig

    BertConfig().save_pretrained(tmp_path)
    r = run_cli("space", "--model", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "'bert' is not supported; supported:" in r.stderr


def test_invalid_arch_file_names_the_dimension(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    make_tiny("llama").save_pretrained(model_dir)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"layers": 3, "heads": 3, "kv_groups": 2, "mlp": 64, "hidden": 64}))
    assert main(["compress", "--model", str(model_dir), "--arch", str(arch), "--out", str(tmp_path / "o")]) == 2
    assert "heads=3" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.real_model
def test_compress_then_eval_default(tmp_path, capsys):
    out = tmp_path / "smol"
    assert main(["compress", "--model", "default", "--keep", "0.7", "--out", str(out), "--windows", "4"]) == 0
    meta = json.loads((out / "latprune.json").read_text())
    assert 0.66 < meta["parameters"] / meta["parent"]["parameters"] < 0.74
    assert main(["eval", "--model", str(out), "--windows", "4"]) == 0
    printed = capsys.readouterr().out
    assert f"{meta['quality']['perplexity']:.3f}" in printed
