"""The whole pipeline (`latprune run`) end to end on a tiny Llama that uses SmolLM2's tokenizer."""

import json
import re

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig

from latprune.models import load_tokenizer
from latprune.profiling.dataset import read_profile

pytestmark = pytest.mark.real_model  # needs the default model's tokenizer


def tiny_llama(tmp_path, monkeypatch):
    """A tiny Llama with the default tokenizer in tmp_path/tiny; the working directory moved there."""
    import latprune.profiling.run as profiling_run

    tokenizer = load_tokenizer("default")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model_dir = tmp_path / "tiny"
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(profiling_run, "DRIFT_THRESHOLD", 10.0)  # sub-ms timings of a toy model are noisy
    return model_dir


def test_run_profiles_fits_searches_verifies_and_reports(tmp_path, monkeypatch):
    from latprune.search.options import SearchOptions
    from latprune.search.pipeline import run_pipeline

    model_dir = tiny_llama(tmp_path, monkeypatch)
    opts = SearchOptions(None, evaluations=6, distill_steps=2)
    summary = run_pipeline(str(model_dir), "cpu", opts, samples=14, supernet_steps=1, out="out/run",
                           log=lambda *_: None)

    out = tmp_path / "out" / "run"
    for name in ("summary.json", "candidates.parquet", "report.md", "report.html", "onnx/model.onnx",
                 "model/latprune.json", "pareto.png", "predicted_vs_measured.png"):
        assert (out / name).is_file(), name
    assert summary["winner"]["measured"]["decode_ms"] <= summary["budget_ms"]
    parent, winner = summary["parent"], summary["winner"]
    # measured figures are on the profile's scale: the parent's is the profile's first reference timing
    baseline = read_profile(tmp_path / "profiles" / "cpu.parquet").query("role == 'reference'").iloc[0]
    assert parent["measured"]["decode_ms"] == baseline["decode_raw_ms"]
    assert parent["drift"]["decode_ms"] == pytest.approx(
        parent["measured_raw"]["decode_ms"] / parent["measured"]["decode_ms"])
    assert winner["measured_raw"]["decode_ms"] > 0
    timed = {f["arch_id"]: f["decode_ms"] for f in summary["finalists_measured"]}  # every finalist, in order timed
    assert list(timed) == summary["finalists"] and timed[winner["architecture_id"]] == winner["measured"]["decode_ms"]
    assert json.loads((out / "summary.json").read_text())["winner"]["architecture_id"] == \
        summary["winner"]["architecture_id"]
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.num_hidden_layers == \
        len(summary["winner"]["architecture"]["layers"])
    assert (tmp_path / "profiles" / "cpu.parquet").is_file() and (tmp_path / "out/predictors/cpu").is_dir()
    # recovered by default, quality measured against the parent, saved in bf16; the checkpoint folder is gone
    assert summary["supernet"] and summary["recovery"]["steps"] == 2
    assert not (tmp_path / "out" / "run.distill-checkpoint").exists()
    for q in (winner["quality"], winner["quality_before_recovery"], parent["quality"]):
        assert set(q) == {"heldout_perplexity", "kl_to_parent", "top1_agreement", "second_text_perplexity"}
    assert parent["quality"]["kl_to_parent"] == 0 and winner["quality"]["kl_to_parent"] > 0
    from safetensors import safe_open

    with safe_open(out / "model" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert winner["saved"]["dtype"] == "bf16"
    # the report shows this run's own plots only
    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert sorted(images) == ["pareto.png", "predicted_vs_measured.png"] and "## Quality" in report


def test_run_with_the_per_layer_space_delivers_a_verified_model_that_loads_without_latprune(tmp_path, monkeypatch):
    import pandas as pd

    from latprune import Architecture
    from latprune.search.options import SearchOptions
    from latprune.search.pipeline import run_pipeline

    model_dir = tiny_llama(tmp_path, monkeypatch)
    # 8 evaluations: the seeds and tapers (which may all be uniform) leave some to the per-layer mutations
    opts = SearchOptions(None, evaluations=8, distill_steps=1, finalist_steps=1, space="per-layer")
    summary = run_pipeline(str(model_dir), "cpu", opts, samples=12, out="out/run", log=lambda *_: None)

    out = tmp_path / "out" / "run"
    assert summary["space"] == "per-layer" and summary["strategy_requested"] == "auto"
    assert summary["winner"]["measured"]["decode_ms"] <= summary["budget_ms"]
    cands = pd.read_parquet(out / "candidates.parquet")
    per_layer = cands[cands.strategy.str.startswith("per-layer")]  # the mutations, the filled seed, the tapers
    assert len(per_layer) and not all(Architecture.from_json(j).is_uniform for j in per_layer.arch_json)
    assert per_layer.bound.isin(["median", "band"]).all()  # the round near the budget, refinement's band rounds
    # the search's own round stays under the budget; a refinement band round looks up to REACH x the limit,
    # or up to the prediction of a candidate the device measured over the band (`refine.bracket`), which
    # a noisy host can put anywhere: what the user gets from it is held to the budget by measurement (above)
    near = per_layer[per_layer.bound == "median"]
    assert len(near) and (near.pred_decode_ms <= summary["budget_ms"] + 1e-9).all()
    winner = Architecture.from_dict(summary["winner"]["architecture"])
    model = AutoModelForCausalLM.from_pretrained(out / "model", trust_remote_code=not winner.is_uniform)
    assert sum(p.numel() for p in model.parameters()) == summary["winner"]["parameters"]
