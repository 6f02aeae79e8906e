"""Random-weight models of a sub-architecture's shape, exported to ONNX with KV cache.

Latency depends on shapes only, so profiling never copies parent weights. The exporter is
optimum-onnx (`text-generation-with-past`): one graph taking input_ids, attention_mask,
position_ids and past key/values, returning logits and the present key/values.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

from latprune.architecture import Architecture
from latprune.errors import LatpruneError
from latprune.space import SearchSpace

EXPORTER = f"optimum-onnx {version('optimum-onnx')} (text-generation-with-past, no post-process)"


def random_model(parent_config, arch: Architecture, dtype: str = "fp32", device: str = "cpu", seed: int = 0):
    """A random-weight HF model with the shapes of `arch` (a per-layer one is cut from a
    random model with its depth and hidden size, the parent's heads and its widest MLP)."""
    from transformers import AutoModelForCausalLM

    space = SearchSpace.from_config(parent_config)
    space.validate(arch)
    widest = arch if arch.is_uniform else Architecture.uniform(
        list(arch.layers), space.parent["heads"], space.parent["kv_groups"], max(arch.mlp), arch.hidden)
    config = copy.deepcopy(parent_config)
    space.apply_to_config(config, widest)
    config._name_or_path = ""  # keep the exporter from copying a tokenizer next to the graph
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    if not arch.is_uniform:
        from latprune.compress.extract import extract

        local = Architecture.per_layer(range(arch.num_layers), arch.heads, arch.kv_groups, arch.mlp, arch.hidden)
        model = extract(model, local)
    return model.to(device=device, dtype=torch.float16 if dtype == "fp16" else torch.float32)


def export_onnx(model, out_dir: str | Path, device: str = "cpu", final: bool = False,
                kv_heads: list[int] | None = None) -> Path:
    """Export `model` to `out_dir/model.onnx` (with KV cache); returns the .onnx path.
    `final` (a delivered model, not a timing sample): tied weights are stored once, and the
    folder's config is one optimum's `ORTModelForCausalLM` runs (see `_runtime_config`).
    `kv_heads`: a per-layer model's KV heads, layer by layer (default: read from its layers,
    `layer_kv_heads`); each layer's cache inputs and outputs get its own shape (plain ONNX
    Runtime runs the graph, optimum's `ORTModelForCausalLM` assumes one shape for every layer)."""
    from optimum.exporters.onnx import onnx_export_from_model

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))  # private to this call
    for name in ("optimum", "transformers", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kv_heads = kv_heads or layer_kv_heads(model)
            custom = {"model": per_layer_onnx_config(model, kv_heads)} if kv_heads else None
            onnx_export_from_model(model, tmp, task="text-generation-with-past", do_validation=False, device=device,
                                   no_post_process=not final,  # post-processing dedups tied weights: 1.5x slower
                                   custom_onnx_configs=custom)
        if not (tmp / "model.onnx").is_file():
            raise LatpruneError(f"the exporter wrote no model.onnx in {tmp}")
        if final:
            _runtime_config(tmp / "config.json")
        try:
            tmp.rename(out_dir)
        except OSError:  # another process exported the same graph meanwhile: use theirs
            if not (out_dir / "model.onnx").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / "model.onnx"


def layer_kv_heads(model) -> list[int] | None:
    """Each layer's KV heads when they differ from the config's (a per-layer Llama-family
    model); None when every layer has the config's shape."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    head_dim = getattr(model.config, "head_dim", None)
    if not layers or not head_dim or not hasattr(getattr(layers[0], "self_attn", None), "k_proj"):
        return None
    kv = [layer.self_attn.k_proj.out_features // head_dim for layer in layers]
    return kv if any(k != model.config.num_key_value_heads for k in kv) else None


def per_layer_onnx_config(model, kv_heads: list[int]):
    """optimum's export config of `model`'s family, with dummy KV caches shaped layer by
    layer (`kv_heads[i]` heads in layer i), so tracing follows each layer's real widths."""
    from optimum.exporters.tasks import TasksManager
    from optimum.utils.input_generators import MistralDummyPastKeyValuesGenerator

    if len(kv_heads) != model.config.num_hidden_layers:
        raise LatpruneError(f"kv_heads has {len(kv_heads)} entries for {model.config.num_hidden_layers} layers")
    constructor = TasksManager.get_exporter_config_constructor(
        "onnx", model=model, task="text-generation-with-past", library_name="transformers")
    base = getattr(constructor, "func", constructor)

    class PerLayerCache(MistralDummyPastKeyValuesGenerator):
        def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64",
                     float_dtype: str = "fp32"):
            return [tuple(self.random_float_tensor((self.batch_size, kv, self.sequence_length, self.head_dim),
                                                   framework=framework, dtype=float_dtype) for _ in range(2))
                    for kv in kv_heads]

    class PerLayer(base):
        DUMMY_INPUT_GENERATOR_CLASSES = (base.DUMMY_INPUT_GENERATOR_CLASSES[0], PerLayerCache)
        DUMMY_PKV_GENERATOR_CLASS = PerLayerCache

    return PerLayer(model.config, task="text-generation", use_past=True, use_past_in_inputs=True)


def _runtime_config(path: Path) -> None:
    """optimum's ORTModelForCausalLM sizes the KV cache with head_dim = hidden_size / heads,
    but a pruned Llama-family model keeps its parent's head_dim while its heads shrink. The
    ONNX folder's config then states hidden_size = heads x head_dim (the graph itself has the
    real shapes) and keeps the true hidden size as `latprune_hidden_size`."""
    data = json.loads(path.read_text())
    heads, head_dim = data.get("num_attention_heads"), data.get("head_dim")
    if heads and head_dim and data.get("hidden_size") != heads * head_dim:
        data.update(latprune_hidden_size=data["hidden_size"], hidden_size=heads * head_dim,
                    latprune_note="hidden_size here is num_attention_heads x head_dim, what optimum's "
                                  "ORTModelForCausalLM derives head_dim from; the model's hidden size is "
                                  "latprune_hidden_size (the graph has the real shapes)")
        path.write_text(json.dumps(data, indent=2))
