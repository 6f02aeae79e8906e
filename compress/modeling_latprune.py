"""Per-layer (heterogeneous) Llama-family models written by latprune, loadable with
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.

latprune copies this file into every per-layer checkpoint it saves; it imports only torch
and transformers. The config is the base family's (llama, mistral, qwen2, qwen3) plus the
widths of every layer: `layer_heads`, `layer_kv_heads` (query heads and KV heads) and
`layer_intermediate` (MLP width); its top-level widths are the largest of them. The model
is the base family's, with each layer's projections built at that layer's widths, so the
checkpoint's weights load into it as they are.
"""

from __future__ import annotations

from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)


def _linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=old.bias is not None, device=old.weight.device,
                     dtype=old.weight.dtype)


def reshape_layers(model: nn.Module, config) -> None:
    """Rebuild every decoder layer's attention and MLP projections at its own widths."""
    hidden, head_dim = config.hidden_size, config.head_dim
    widths = zip(config.layer_heads, config.layer_kv_heads, config.layer_intermediate)
    for layer, (heads, kv_heads, mlp) in zip(model.model.layers, widths):
        attn, ffn = layer.self_attn, layer.mlp
        attn.q_proj = _linear(attn.q_proj, hidden, heads * head_dim)
        attn.k_proj = _linear(attn.k_proj, hidden, kv_heads * head_dim)
        attn.v_proj = _linear(attn.v_proj, hidden, kv_heads * head_dim)
        attn.o_proj = _linear(attn.o_proj, heads * head_dim, hidden)
        attn.num_key_value_groups = heads // kv_heads
        ffn.gate_proj = _linear(ffn.gate_proj, hidden, mlp)
        ffn.up_proj = _linear(ffn.up_proj, hidden, mlp)
        ffn.down_proj = _linear(ffn.down_proj, mlp, hidden)


def _per_layer(base_config: type, base_model: type, name: str) -> tuple[type, type]:
    """A config and a causal-LM class of one family with per-layer widths."""

    class Config(base_config):
        model_type = f"latprune_{base_config.model_type}"

        def __init__(self, layer_heads=None, layer_kv_heads=None, layer_intermediate=None, **kwargs):
            super().__init__(**kwargs)
            n = self.num_hidden_layers
            self.layer_heads = list(layer_heads or [self.num_attention_heads] * n)
            self.layer_kv_heads = list(layer_kv_heads or [self.num_key_value_heads] * n)
            self.layer_intermediate = list(layer_intermediate or [self.intermediate_size] * n)

    class Model(base_model):
        config_class = Config

        def __init__(self, config):
            super().__init__(config)
            reshape_layers(self, config)

    Config.__name__ = Config.__qualname__ = f"{name}PerLayerConfig"
    Model.__name__ = Model.__qualname__ = f"{name}PerLayerForCausalLM"
    return Config, Model


LlamaPerLayerConfig, LlamaPerLayerForCausalLM = _per_layer(LlamaConfig, LlamaForCausalLM, "Llama")
MistralPerLayerConfig, MistralPerLayerForCausalLM = _per_layer(MistralConfig, MistralForCausalLM, "Mistral")
Qwen2PerLayerConfig, Qwen2PerLayerForCausalLM = _per_layer(Qwen2Config, Qwen2ForCausalLM, "Qwen2")
Qwen3PerLayerConfig, Qwen3PerLayerForCausalLM = _per_layer(Qwen3Config, Qwen3ForCausalLM, "Qwen3")
