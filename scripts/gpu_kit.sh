#!/usr/bin/env bash
# Builds gpukit/ (git-ignored): what scripts/gpu_profile.sh needs on a lent NVIDIA H100/H200
# machine that has Python 3.12, CUDA 13 torch and no network. The device tool carries 64 MiB
# a call, and onnxruntime-gpu's wheel is 256 MB, so its CUDA provider is cut to sm_90 code
# (scripts/prune_fatbin.py) and travels alone in a first call:
#   run(command="mkdir -p /tmp/stage && cp gpukit/partA/cuda.so.xz /tmp/stage/", carry=["gpukit/partA"])
#   run(command="bash scripts/gpu_profile.sh 2>&1 | tee $OUT/log.txt",
#       carry=["gpukit/whl", "gpukit/smollm2-config", "gpukit/prev"], timeout_s=590)
# within 30 s of each other (the machine stays warm that long). Needs network (pip) and .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=gpukit
grep -qxF "/$KIT/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/$KIT/" >> .git/info/exclude; }
mkdir -p "$KIT/whl" "$KIT/partA" "$KIT/prev" "$KIT/smollm2-config" "$KIT/tmp"
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --only-binary=:all: --no-deps)
# the versions .venv has (setup.sh's pins) of what the GPU image lacks or has too new (transformers 5)
PINS=$(.venv/bin/python -c "from importlib.metadata import version as v; print(' '.join(f'{n}=={v(n)}' for n in
  'transformers tokenizers huggingface_hub optimum optimum-onnx xgboost-cpu nevergrad cma bayesian-optimization'.split()))")
python3 -m pip download -q "${PLATFORMS[@]}" -d "$KIT/whl" $PINS
python3 -m pip download -q "${PLATFORMS[@]}" -d "$KIT/tmp" onnxruntime-gpu==1.31.1  # built for CUDA 13
rm -rf "$KIT/tmp/ort" && mkdir "$KIT/tmp/ort" && unzip -q "$KIT"/tmp/onnxruntime_gpu-*.whl -d "$KIT/tmp/ort"
CUDA_LIB=onnxruntime/capi/libonnxruntime_providers_cuda.so
python3 scripts/prune_fatbin.py "$KIT/tmp/ort/$CUDA_LIB" "$KIT/tmp/cuda90.so" --keep 90
xz -9 -T0 -c "$KIT/tmp/cuda90.so" > "$KIT/partA/cuda.so.xz"
(cd "$KIT/tmp/ort" && tar --exclude="$CUDA_LIB" -cf - onnxruntime onnxruntime_gpu-*.dist-info) | xz -9 -T0 > "$KIT/whl/ort_rest.tar.xz"
cp "$(.venv/bin/python -c "from latprune.models import default_model_dir; print(default_model_dir())")/config.json" \
  "$KIT/smollm2-config/"  # profiling needs the parent's shapes only
rm -rf "$KIT/tmp"
du -sh "$KIT"/partA "$KIT"/whl
