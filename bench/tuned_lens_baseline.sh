#!/usr/bin/env bash
# CPU throughput baseline of the OLD tuned-lens 0.2.0 CLI on a tiny random GPT-2.
#
# Creates (once) a separate venv with the pinned old stack, builds the tiny model and the
# Austen jsonl corpus with bench/tiny_gpt2.py, runs `tuned_lens train` (through
# bench/tuned_lens_timed.py, which only adds per-step timing) and prints tokens/s.
# Rerunnable: the venv, model and data are reused when present.
#
# Env knobs (defaults in brackets):
#   TL_BENCH_DIR [/work/tl-bench]   venv, model, data, logs and results live here
#   TL_SEQ_LEN [512]  TL_TOKENS_PER_STEP [2048]  TL_NUM_STEPS [4]  TL_BATCH [1]
#   TL_N_LAYER [3]  TL_N_EMBD [96]  TL_N_HEAD [4]
#   TL_REBUILD=1                    rebuild model + data even if present
set -euo pipefail
start_s=$SECONDS

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_DIR="${TL_BENCH_DIR:-/work/tl-bench}"
VENV="$BENCH_DIR/venv"
PY="$VENV/bin/python"
SEQ_LEN="${TL_SEQ_LEN:-512}"
TOKENS_PER_STEP="${TL_TOKENS_PER_STEP:-2048}"
NUM_STEPS="${TL_NUM_STEPS:-4}"
BATCH="${TL_BATCH:-1}"
N_LAYER="${TL_N_LAYER:-3}"
N_EMBD="${TL_N_EMBD:-96}"
N_HEAD="${TL_N_HEAD:-4}"
MODEL_DIR="$BENCH_DIR/tiny-gpt2-l${N_LAYER}-d${N_EMBD}"
DATA="$BENCH_DIR/austen-paragraphs.jsonl"
RUN_DIR="$BENCH_DIR/runs/seq${SEQ_LEN}-tps${TOKENS_PER_STEP}-b${BATCH}-n${NUM_STEPS}"

# Nothing may touch the network.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export WANDB_MODE=disabled WANDB_DISABLED=true HF_HUB_DISABLE_TELEMETRY=1
export HF_HOME="$BENCH_DIR/hf-home" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONWARNINGS="ignore::UserWarning"

mkdir -p "$BENCH_DIR"

have_stack() {
  [[ -x "$PY" ]] && "$PY" - <<'EOF' 2>/dev/null
import importlib.metadata as m
want = {"tuned-lens": "0.2.0", "transformers": "4.57.6", "torchdata": "0.9.0"}
assert all(m.version(k) == v for k, v in want.items()), "version mismatch"
assert m.version("torch").startswith("2.13.0")
EOF
}

if ! have_stack; then
  echo "== creating venv $VENV and installing the pinned tuned-lens 0.2.0 stack"
  [[ -x "$PY" ]] || python3 -m venv "$VENV"
  # torch 2.13.0 is pinned so pip takes the local CPU wheel; torchdata 0.9.0 accepts it.
  "$PY" -m pip install -q "torch==2.13.0" "tuned-lens==0.2.0" "transformers==4.57.6" \
    "torchdata==0.9.0" 2>&1 | grep -v -E "^WARNING: Location .* is ignored" || true
  have_stack || { echo "install failed: pinned stack not importable" >&2; exit 1; }
fi
"$PY" -m pip check >/dev/null || echo "warning: pip check reports conflicts" >&2

if [[ "${TL_REBUILD:-0}" == 1 || ! -f "$MODEL_DIR/config.json" || ! -f "$DATA" ]]; then
  echo "== building tiny GPT-2 ($N_LAYER layers, d $N_EMBD, $N_HEAD heads) and corpus"
  "$PY" "$REPO/bench/tiny_gpt2.py" --model-out "$MODEL_DIR" --data-out "$DATA" \
    --n-layer "$N_LAYER" --n-embd "$N_EMBD" --n-head "$N_HEAD" --seed 0
fi

rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
CLI_ARGS=(train
  --model.name "$MODEL_DIR"
  --data.name "$DATA"
  --max_length "$SEQ_LEN"
  --tokens_per_step "$TOKENS_PER_STEP"
  --per_gpu_batch_size "$BATCH"
  --num_steps "$NUM_STEPS"
  --seed 42
  --output "$RUN_DIR/lens")

echo "== versions: $("$PY" -c 'import importlib.metadata as m; print(" ".join(f"{p}=={m.version(p)}" for p in ("tuned-lens","torch","torchdata","transformers","datasets","accelerate","simple-parsing")))')"
echo "== cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "== loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== command: python -m tuned_lens ${CLI_ARGS[*]}   (via bench/tuned_lens_timed.py)"
"$PY" "$REPO/bench/tuned_lens_timed.py" --json-out "$RUN_DIR/result.json" -- "${CLI_ARGS[@]}" \
  2>&1 | tr '\r' '\n' | tee "$RUN_DIR/train.log" | grep -v -E "^(Training|Map|Generating).*(it/s|s/it|examples/s)" || true
echo "== loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)"

[[ -f "$RUN_DIR/result.json" ]] || { echo "no result: see $RUN_DIR/train.log" >&2; exit 1; }
"$PY" - "$RUN_DIR/result.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"== RESULT tokens/s = {r.get('tokens_per_second')}  "
      f"(mean step {r.get('mean_step_seconds')} s over {r.get('timed_steps')} steps after warm-up; "
      f"warm-up step {r['warmup_step_seconds']} s; all steps {r['step_seconds']})")
print(f"   seq_len={r['tokens_per_sample']} tokens_per_step={r['tokens_per_step']} "
      f"batch={r['per_gpu_batch_size']} grad_acc={r['grad_acc_steps']} steps={r['steps_completed']} "
      f"threads={r['torch_threads']} device={r['device']}")
print(f"   autocast(cpu)={r.get('autocast_cpu_enabled')} dtype={r.get('autocast_cpu_dtype')} "
      f"lens logits={r.get('lens_logits_dtype')} lens params={r.get('lens_param_dtype')}")
print(f"   CPU cores busy during the loop: this run {r.get('own_cpu_cores_used')}, "
      f"other processes {r.get('other_processes_cpu_cores_used')} (of {r.get('machine_cores')})")
EOF
echo "== result json: $RUN_DIR/result.json; log: $RUN_DIR/train.log; total wall $((SECONDS - start_s)) s"
