"""Per-layer checkpoints load with plain transformers (trust_remote_code), in a process that
never imports latprune, and generate what the extracted torch model generates."""

import json
import os
import subprocess
import sys

import pytest
import torch

import latprune
from latprune import LatpruneError
from latprune.architecture import Architecture
from latprune.compress.checkpoint import save_compressed
from latprune.compress.extract import extract

from conftest import make_tiny

# (family, per-layer widths legal in its tiny config: layers, heads, kv_groups, mlp)
CASES = {
    "llama": ([0, 2], [8, 2], [4, 1], [128, 48]),
    "mistral": ([0, 1, 2], [2, 8, 4], [1, 2, 2], [32, 128, 80]),
    "qwen2": ([1, 2], [4, 6], [2, 2], [96, 16]),
    "qwen3": ([0, 1], [8, 1], [2, 1], [64, 128]),
}
PROMPT = [5, 17, 3, 99, 42, 7]

LOADER = """
import json, sys, torch
from transformers import AutoModelForCausalLM
out = {}
for name, folder in json.loads(sys.argv[1]).items():
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.tensor([json.loads(sys.argv[2])])
    with torch.no_grad():
        tokens = model.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    out[name] = {"tokens": tokens[0].tolist(), "class": type(model).__name__}
assert not any(m == "latprune" or m.startswith("latprune.") for m in sys.modules), "latprune was imported"
print(json.dumps(out))
"""


def _generate(model, prompt):
    with torch.no_grad():
        return model.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                              pad_token_id=0)[0].tolist()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("per-layer")
    out = {}
    for family, (layers, heads, kv, mlp) in CASES.items():
        parent = make_tiny(family)
        arch = Architecture.per_layer(layers, heads, kv, mlp, hidden=parent.config.hidden_size)
        assert not arch.is_uniform
        child = extract(parent, arch)
        save_compressed(child, arch, root / family, parent.config)
        out[family] = (root / family, child)
    return out


def test_per_layer_checkpoints_generate_the_same_tokens_without_latprune(saved, tmp_path):
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    folders = {family: str(folder) for family, (folder, _) in saved.items()}
    run = subprocess.run([sys.executable, "-c", LOADER, json.dumps(folders), json.dumps(PROMPT)], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for family, (folder, child) in saved.items():
        assert got[family]["class"].endswith("PerLayerForCausalLM")
        assert got[family]["tokens"] == _generate(child, PROMPT), family
        meta = json.loads((folder / "latprune.json").read_text())
        assert "trust_remote_code=True" in meta["loads_with"]


def test_latprune_still_loads_them_and_a_missing_modeling_file_is_one_line(saved, tmp_path):
    import shutil

    folder, child = saved["qwen2"]
    assert _generate(latprune.load_model(folder), PROMPT) == _generate(child, PROMPT)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "modeling_latprune.py").unlink()
    with pytest.raises(LatpruneError, match="per-layer checkpoint without its modeling_latprune.py"):
        latprune.load_model(broken)


def test_families_the_modeling_file_does_not_cover_keep_loading_through_latprune(tmp_path):
    parent = make_tiny("gpt_neox")
    arch = Architecture.per_layer([0, 1, 2], heads=4, kv_groups=4, mlp=[128, 32, 80], hidden=64)
    save_compressed(extract(parent, arch), arch, tmp_path / "m", parent.config)
    meta = json.loads((tmp_path / "m" / "latprune.json").read_text())
    assert meta["loads_with"] == "latprune.load_model(folder)"
    assert not (tmp_path / "m" / "modeling_latprune.py").exists()


def _ort_generate(onnx_path, prompt: list[int], steps: int = 32) -> list[int]:
    """Greedy decoding with plain ONNX Runtime and the graph's own KV cache."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    past = {n: np.zeros((1, m.shape[1], 0, m.shape[3]), np.float32) for n, m in inputs.items()
            if n.startswith("past_key_values")}
    tokens, new, done = list(prompt), np.array([prompt], dtype=np.int64), 0
    for _ in range(steps):
        n = new.shape[1]
        feeds = {"input_ids": new, "attention_mask": np.ones((1, done + n), np.int64),
                 "position_ids": np.arange(done, done + n, dtype=np.int64)[None], **past}
        out = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in inputs})))
        tokens.append(int(out["logits"][0, -1].argmax()))
        done += n
        new = np.array([[tokens[-1]]], dtype=np.int64)
        past = {k: out[k.replace("past_key_values", "present")] for k in past}
    return tokens


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_per_layer_onnx_graph_generates_the_same_tokens(saved, family, tmp_path):
    import onnxruntime as ort

    from latprune.profiling.export import export_onnx

    _, child = saved[family]
    kv_heads = list(CASES[family][2])
    path = export_onnx(child, tmp_path / "onnx", final=True)  # KV heads read from the layers
    shapes = {i.name: i.shape for i in ort.InferenceSession(str(path)).get_inputs()}
    assert [shapes[f"past_key_values.{i}.key"][1] for i in range(len(kv_heads))] == kv_heads
    assert _ort_generate(path, PROMPT) == _generate(child, PROMPT)
