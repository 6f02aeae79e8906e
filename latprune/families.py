"""What latprune knows about each supported Hugging Face model family: where the config
keeps each dimension and where the model keeps each module.

Three structural kinds cover the supported `model_type`s:
- ``llama``: Llama, Mistral, Qwen2, Qwen3 (separate q/k/v/o, gated MLP, RMSNorm, GQA);
- ``gpt2``: fused Conv1D attention, learned positions, LayerNorm, MHA;
- ``gpt_neox``: fused per-head QKV, LayerNorm, MHA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import LatpruneError

if TYPE_CHECKING:  # torch is imported by whoever passes modules in, not by `import latprune`
    from torch import nn


@dataclass(frozen=True)
class Family:
    """Structural facts of one supported family."""

    kind: str  # llama | gpt2 | gpt_neox
    gated_mlp: bool
    has_kv_groups: bool  # GQA-capable config (num_key_value_heads)
    head_dim_coupled: bool  # config derives head_dim = hidden / heads

    # ---- config access -------------------------------------------------
    def dims(self, config) -> dict[str, int]:
        """Parent dimensions: layers, heads, kv_groups, head_dim, mlp, hidden, vocab."""
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads) if self.has_kv_groups else heads
        head_dim = getattr(config, "head_dim", None) if self.kind == "llama" else None
        head_dim = int(head_dim or hidden // heads)
        if self.kind == "gpt2":
            mlp = int(config.n_inner or 4 * hidden)
        else:
            mlp = int(config.intermediate_size)
        return {
            "layers": int(config.num_hidden_layers),
            "heads": heads,
            "kv_groups": kv,
            "head_dim": head_dim,
            "mlp": mlp,
            "hidden": hidden,
            "vocab": int(config.vocab_size),
        }

    def set_dims(self, config, *, layers: int, heads: int, kv_groups: int, mlp: int, hidden: int, head_dim: int):
        """Write uniform sub-network dimensions into a (copied) config."""
        config.num_hidden_layers = layers
        config.num_attention_heads = heads
        config.hidden_size = hidden
        if self.has_kv_groups:
            config.num_key_value_heads = kv_groups
        if self.kind == "llama":
            config.head_dim = head_dim
        if self.kind == "gpt2":
            config.n_inner = mlp
        else:
            config.intermediate_size = mlp

    @property
    def norm_bias(self) -> bool:
        """LayerNorm (with a bias) rather than RMSNorm."""
        return self.kind != "llama"

    def extras(self, config) -> dict[str, int | bool]:
        """Parameters beyond the dimensions: learned positions, biases, QK norms."""
        model_type, kind = config.model_type, self.kind
        attention_bias = bool(getattr(config, "attention_bias", False))
        return {
            "positions": int(config.n_positions) if kind == "gpt2" else 0,
            "qkv_bias": kind == "gpt2" or model_type == "qwen2" or attention_bias,
            "o_bias": kind == "gpt2" or (model_type != "qwen2" and attention_bias),
            "mlp_bias": kind in ("gpt2", "gpt_neox") or bool(getattr(config, "mlp_bias", False)),
            "qk_norm": model_type == "qwen3",
        }

    # ---- module access -------------------------------------------------
    def body(self, model: nn.Module) -> nn.Module:
        return {"llama": lambda: model.model, "gpt2": lambda: model.transformer, "gpt_neox": lambda: model.gpt_neox}[
            self.kind
        ]()

    def layers(self, model: nn.Module) -> nn.ModuleList:
        body = self.body(model)
        return body.h if self.kind == "gpt2" else body.layers

    def set_layers(self, model: nn.Module, layers: list[nn.Module]) -> None:
        from torch import nn

        setattr(self.body(model), "h" if self.kind == "gpt2" else "layers", nn.ModuleList(layers))

    def embeddings(self, model: nn.Module) -> list[nn.Embedding]:
        """Embeddings whose width is the hidden size (token, and learned positions for GPT-2)."""
        body = self.body(model)
        return {"llama": lambda: [body.embed_tokens], "gpt2": lambda: [body.wte, body.wpe],
                "gpt_neox": lambda: [body.embed_in]}[self.kind]()

    def final_norm(self, model: nn.Module) -> nn.Module:
        body = self.body(model)
        return {"llama": lambda: body.norm, "gpt2": lambda: body.ln_f, "gpt_neox": lambda: body.final_layer_norm}[
            self.kind
        ]()

    def layer_norms(self, layer: nn.Module) -> list[nn.Module]:
        if self.kind == "gpt2":
            return [layer.ln_1, layer.ln_2]
        return [layer.input_layernorm, layer.post_attention_layernorm]

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.attn if self.kind == "gpt2" else (layer.attention if self.kind == "gpt_neox" else layer.self_attn)

    def attn_out_proj(self, layer: nn.Module) -> nn.Module:
        """The projection whose input is the concatenated head outputs."""
        attn = self.attention(layer)
        return attn.dense if self.kind == "gpt_neox" else (attn.c_proj if self.kind == "gpt2" else attn.o_proj)

    def mlp_out_proj(self, layer: nn.Module) -> nn.Module:
        """The projection whose input is the MLP's intermediate neurons."""
        mlp = layer.mlp
        return {"llama": lambda: mlp.down_proj, "gpt2": lambda: mlp.c_proj, "gpt_neox": lambda: mlp.dense_4h_to_h}[
            self.kind
        ]()


_LLAMA = Family("llama", gated_mlp=True, has_kv_groups=True, head_dim_coupled=False)
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gpt2": Family("gpt2", gated_mlp=False, has_kv_groups=False, head_dim_coupled=True),
    "gpt_neox": Family("gpt_neox", gated_mlp=False, has_kv_groups=False, head_dim_coupled=True),
}


def family_of(config) -> Family:
    """The family of a Hugging Face config, or a clear error listing the supported ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise LatpruneError(
            f"model_type '{model_type}' is not supported; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]
