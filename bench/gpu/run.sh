#!/usr/bin/env bash
# The GPU benchmark of issue 4, as one device call (about 4 minutes on an H200):
#   bash bench/gpu/prepare_wheels.sh            # here, once
#   device run: bash bench/gpu/run.sh            # carry [".whl"], timeout_s 540
# It checks the image, times the reference step against lens-hub's fused step (eager and Triton kernels) for the
# SmolLM2-135M and GPT-2 configs, sweeps the chunk size, trains a lens end to end with `lens-hub train` on CUDA, and
# runs the closed-form fit + polish against the paper's recipe for the same wall time (bench/gpu/fit_check.py).
# Everything lands in $OUT (JSON lines and logs); the last lines printed are a summary table.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-/tmp/lens-hub-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
if ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, pydantic, importlib.util as u; triton = u.find_spec('triton') and __import__('triton'); print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'triton', triton and triton.__version__, 'pydantic', pydantic.VERSION)" | tee -a "$OUT/gpu.txt"

bench() {  # name, then bench_step.py arguments
  local name=$1
  shift
  echo "== $name: $*"
  timeout 150 python3 bench/bench_step.py "$@" >"$OUT/$name.json" 2>"$OUT/$name.log" || {
    echo "FAILED ($?)"
    tail -20 "$OUT/$name.log"
  }
}
if [ "${DRY_RUN:-0}" = 1 ]; then  # the same script, tiny, on this machine's CPU: checks the plumbing only
  bench tiny --config tiny-gpt2 --batch 1 --seq 64 --steps 1
  timeout 300 python3 bench/gpu/train_check.py "$OUT/train" --cpu >"$OUT/train.log" 2>&1 || echo "FAILED ($?)"
  tail -3 "$OUT/train.log"
  timeout 300 python3 bench/gpu/fit_check.py --cpu >"$OUT/fit.log" 2>&1 || echo "FAILED ($?)"
  grep '^{' "$OUT/fit.log"
else
  bench smollm2 --config smollm2 --batch 8 --seq 1024 --steps 10
  bench gpt2 --config gpt2 --batch 8 --seq 1024 --steps 10
  bench smollm2-chunk4x --config smollm2 --batch 8 --seq 1024 --steps 10 --chunk 180 --kernels triton
  bench smollm2-b16 --config smollm2 --batch 16 --seq 1024 --steps 5
  echo "== lens-hub train on CUDA (random GPT-2 weights, real tokenizer, bf16 autocast)"
  timeout 200 python3 bench/gpu/train_check.py "$OUT/train" >"$OUT/train.log" 2>&1 || echo "FAILED ($?)"
  tail -25 "$OUT/train.log"
  echo "== the closed-form fit + polish on 1M tokens vs the paper's recipe for the same wall time (SmolLM2 config)"
  timeout 240 python3 bench/gpu/fit_check.py >"$OUT/fit.log" 2>&1 || echo "FAILED ($?)"
  grep '^{' "$OUT/fit.log" || tail -20 "$OUT/fit.log"
fi
python3 bench/gpu/summary.py "$OUT"/*.json
