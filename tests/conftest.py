"""Shared fixtures: tiny random-weight models of every supported family."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

VOCAB = 128


def tiny_configs() -> dict:
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3)
    return {
        "llama": LlamaConfig(**common, num_attention_heads=8, num_key_value_heads=4, head_dim=16),
        "mistral": MistralConfig(**common, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**common, num_attention_heads=8, num_key_value_heads=2),
        "qwen3": Qwen3Config(**common, num_attention_heads=8, num_key_value_heads=2, head_dim=16),
        "gpt2": GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=64),
        "gpt_neox": GPTNeoXConfig(**common, num_attention_heads=4, rotary_pct=0.25),
    }


FAMILIES = list(tiny_configs())


def make_tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_configs()[family]).eval()
    # Non-trivial norms so that channel permutations are really exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def tiny_search():
    """(ranked tiny Llama, a roofline predictor fitted on its synthetic profile, windows) for searches."""
    from latprune import SearchSpace
    from latprune.compress.importance import compute_ranking
    from latprune.compress.ranked import RankedModel
    from latprune.predictors.predictor import Predictor

    model = make_tiny("llama")
    windows = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    ranked = RankedModel(model, None, SearchSpace.from_config(model.config),
                         compute_ranking(model, windows, progress=False), "")
    return ranked, Predictor.fit(synthetic_profile(40, config=model.config), "roofline"), windows


@pytest.fixture(params=FAMILIES)
def tiny(request):
    return make_tiny(request.param)


@pytest.fixture
def tokens():
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (2, 24))


def smol_like_config():
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)


def smol_like_space():
    from latprune import SearchSpace

    return SearchSpace.from_config(smol_like_config())


def synthetic_profile(n: int, seed: int = 0, device: str = "cpu", config=None, *, bandwidth: float = 25e9,
                      layer_s: float = 8e-5, flops: float = 3e11, tiling: float = 0.0, archs=None,
                      prompt: int = 128, context_s: float = 0.0, repeat_s: float = 0.0):
    """A profile frame whose latencies follow a known law of the features (1% noise); the
    law's constants say how the device behaves (`tiling`: how much slower a block with an MLP
    wider than 1024 runs, a cache effect no roofline sees; `context_s`: what a decode step
    pays per layer, KV group and cached token; `repeat_s`: per layer, query head and cached
    token, when attention is grouped, for the cache's copy repeated to every head); `archs`
    replaces the plan."""
    import json

    import numpy as np

    from latprune import SearchSpace
    from latprune.models import model_identity
    from latprune.predictors.features import arch_columns, features
    from latprune.profiling.fingerprint import host_fingerprint  # as if profiled on this host
    from latprune.profiling.sampling import profile_plan

    config = config or smol_like_config()
    space = SearchSpace.from_config(config)
    archs = archs if archs is not None else profile_plan(space, n, seed)
    n = len(archs)
    cols = arch_columns(archs).assign(batch=1, prompt=prompt, generate=32, arch_id=[a.id for a in archs],
                                      workload="w")
    f = features(space, cols)
    rng = np.random.default_rng(seed)
    noise = lambda: rng.normal(1, 0.01, n)  # noqa: E731
    context = f.layers * f.prompt * (f.kv_groups * context_s + f.heads * (f.heads > f.kv_groups) * repeat_s)
    decode = (f.weight_bytes / bandwidth + f.layers * layer_s + context + 2e-4) * 1e3 * noise()
    prefill = (f.prefill_flops / flops * (1 + 0.3 * (f.hidden < 256)) + f.layers * 3.75 * layer_s) * 1e3 * noise()
    kernel = 1 + tiling * (f.mlp > 1024)
    decode, prefill = decode * kernel, prefill * kernel
    return cols.assign(
        role="sample", status="ok", drift_flag=False, device=device, model_hash=model_identity(config)["config_hash"],
        dtype="fp32", parent_config_json=config.to_json_string(use_diff=False), prefill_ms=prefill,
        decode_ms=decode, device_json=json.dumps({"name": device}), host_json=json.dumps(host_fingerprint()),
        model_name="smol", model_type=config.model_type, versions_json="{}",
    )
