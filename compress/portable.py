"""Per-layer checkpoints that load without latprune.

A per-layer (heterogeneous) model has no standard Hugging Face config: every layer has its
own heads, KV heads and MLP width. latprune writes such a checkpoint's config.json as the
base family's plus those widths, with an `auto_map` to `modeling_latprune.py` (copied
beside it, as DeciLM and Nemotron-51B ship theirs), so that
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` builds the right
shapes and loads the weights as they are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from latprune.architecture import Architecture

MODELING = Path(__file__).with_name("modeling_latprune.py")
PORTABLE = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}  # model_type -> class prefix


def make_portable(folder: Path, arch: Architecture) -> bool:
    """Rewrite `folder`'s config.json for the per-layer `arch` and copy the modeling file in;
    False (folder unchanged) for a family the modeling file does not cover."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    prefix = PORTABLE.get(config.get("model_type"))
    if prefix is None:
        return False
    config.update(model_type=f"latprune_{config['model_type']}", architectures=[f"{prefix}PerLayerForCausalLM"],
                  layer_heads=list(arch.heads), layer_kv_heads=list(arch.kv_groups),
                  layer_intermediate=list(arch.mlp),
                  auto_map={"AutoConfig": f"modeling_latprune.{prefix}PerLayerConfig",
                            "AutoModelForCausalLM": f"modeling_latprune.{prefix}PerLayerForCausalLM"})
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    shutil.copyfile(MODELING, folder / MODELING.name)
    return True
