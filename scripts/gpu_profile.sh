#!/usr/bin/env bash
# On a lent NVIDIA GPU machine (bare Python 3.12 with CUDA torch, no network): install the kit
# that scripts/gpu_kit.sh built, then record the cpu -> a100 transfer profiles within BUDGET_S
# (the transfer plan until SPLIT_S, then the held-out plan; both resumable, stopped by Ctrl-C).
# Needs /tmp/stage/cuda.so or cuda.so.xz there (the CUDA provider, sent by a first call).
# PY, DEVICE, N_TRANSFER, N_HELDOUT, BUDGET_S, SPLIT_S, SITE, OUT override the defaults; a
# local dry run: SKIP_ORT=1 PY=.venv/bin/python DEVICE=cpu N_TRANSFER=2 N_HELDOUT=2 bash scripts/gpu_profile.sh
set -uo pipefail
T0=$(date +%s)
PY=${PY:-python3}
DEVICE=${DEVICE:-a100}
N_TRANSFER=${N_TRANSFER:-20}
N_HELDOUT=${N_HELDOUT:-24}
BUDGET_S=${BUDGET_S:-570}
SPLIT_S=${SPLIT_S:-330}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/out-dry}
mkdir -p "$SITE" "$OUT"
cp -n gpukit/prev/*.parquet "$OUT"/ 2>/dev/null && chmod u+w "$OUT"/*.parquet  # profiles of an earlier call resume
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

log "install wheels"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" gpukit/whl/*.whl || exit 3
log "unpack onnxruntime-gpu"
[ -n "${SKIP_ORT:-}" ] || $PY - "$SITE" <<'EOF' || exit 4
import lzma, shutil, sys, tarfile
site = sys.argv[1]
with tarfile.open("gpukit/whl/ort_rest.tar.xz") as t:
    t.extractall(site, filter="data")
dst = f"{site}/onnxruntime/capi/libonnxruntime_providers_cuda.so"
try:
    shutil.copyfile("/tmp/stage/cuda.so", dst)
except FileNotFoundError:
    with lzma.open("/tmp/stage/cuda.so.xz") as src, open(dst, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 24)
EOF
log "install latprune"
$PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" . || exit 5
export PYTHONPATH="$SITE"
REPO=$(pwd)
cd /tmp  # not the checkout: its latprune/ folder would shadow the installed package
SP=$($PY -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
LIBS=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tail -2
$PY - <<'EOF'
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
print("onnxruntime", ort.__version__, ort.get_available_providers())
g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "g",
                      [helper.make_tensor_value_info("a", TensorProto.FLOAT16, [64, 64]),
                       helper.make_tensor_value_info("b", TensorProto.FLOAT16, [64, 64])],
                      [helper.make_tensor_value_info("c", TensorProto.FLOAT16, [64, 64])])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 9
providers = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["CPUExecutionProvider"]
s = ort.InferenceSession(m.SerializeToString(), providers=providers)
a = np.random.rand(64, 64).astype(np.float16)
c = s.run(None, {"a": a, "b": np.eye(64, dtype=np.float16)})[0]
print("smoke", s.get_providers(), "max err", float(np.abs(c - a).max()))
EOF
$PY -c "import latprune; print('latprune from', latprune.__file__)"
$PY -m latprune.cli devices 2>&1 | head -4
left() { echo $(( T0 + $1 - $(date +%s) )); }
log "transfer plan: $N_TRANSFER samples"
timeout -s INT -k 20 "$(left "$SPLIT_S")" $PY -m latprune.cli profile --device "$DEVICE" --model "$REPO/gpukit/smollm2-config" \
  --samples "$N_TRANSFER" --plan transfer --transfer-from "$REPO/benchmarks/data/cpu-160.parquet" --out "$OUT/$DEVICE-transfer.parquet"
log "transfer plan rc $?"
log "held-out: $N_HELDOUT samples"
timeout -s INT -k 20 "$(left "$BUDGET_S")" $PY -m latprune.cli profile --device "$DEVICE" --model "$REPO/gpukit/smollm2-config" \
  --samples "$N_HELDOUT" --aim 0.6 --seed 8 --out "$OUT/$DEVICE-heldout.parquet"
log "held-out rc $?"
ls -la "$OUT"
