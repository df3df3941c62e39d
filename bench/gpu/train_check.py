"""`lens-hub train` and `lens-hub eval` end to end on one device: a random-weight GPT-2 (real config, real tokenizer),
the shipped Persuasion sample, bf16 autocast on CUDA. Run by `bench/gpu/run.sh`; on the CPU, pass `--cpu` for a
small dry run of the same script.

    python bench/gpu/train_check.py OUT_DIR [--cpu]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests" / "data" / "gpt2-tokenizer"
SAMPLE = ROOT / "lens_hub" / "samples" / "persuasion-ch1-8.txt"


def main() -> None:
    out = Path(sys.argv[1])
    cpu = "--cpu" in sys.argv
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2) if cpu else GPT2Config()
    AutoModelForCausalLM.from_config(config).save_pretrained(out / "model")
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / "model" / f.name)
    device = ["--device", "cpu"] if cpu else ["--device", "cuda", "--dtype", "bfloat16"]
    size = ["--seq-len", "128", "--tokens-per-step", "512", "--batch-size", "4"] if cpu else []
    size = size or ["--seq-len", "1024", "--tokens-per-step", "8192", "--batch-size", "8"]
    cli = [sys.executable, "-m", "lens_hub.cli"]
    start = time.perf_counter()
    train = [*cli, "train", str(out / "model"), "--data", str(SAMPLE), "--out", str(out / "lens"), "--steps", "3"]
    subprocess.run([*train, *size, *device, "--log", "jsonl"], check=True)
    print(f"train: {time.perf_counter() - start:.1f} s in all, model load and data included")
    logs = sorted((out / "lens").rglob("*.jsonl"))
    for line in logs[0].read_text().splitlines() if logs else []:
        print("log:", line)
    evaluate = [*cli, "eval", str(out / "lens"), "--model", str(out / "model"), "--data", str(SAMPLE)]
    subprocess.run(
        [*evaluate, "--max-sequences", "4", *size[:2], *device, "--json", str(out / "eval.json")], check=True
    )
    config_json = json.loads((out / "lens" / "config.json").read_text())
    training = {k: v for k, v in config_json["training"].items() if v not in (None, {}, [])}
    print("training provenance:", json.dumps(training))
    kl = json.loads((out / "eval.json").read_text())
    print("KL tuned:", kl["tuned"]["kl"], "logit:", kl["logit"]["kl"])


if __name__ == "__main__":
    main()
