"""The closed-form fit on one device, against the paper's recipe given the same wall time (issue "Lenses in minutes").

Random weights with the real SmolLM2-135M config (the real weights cannot travel to the device; speed does not
depend on them, and the comparison is of how well each method matches the model's own final layer), the shipped
Persuasion sample repeated up to the budget, bf16 autocast on CUDA. Prints JSON lines:

1. ``moments``: tokens/s of the moment accumulation alone (30 layers, d 576), and of the forward passes;
2. ``fit+polish``: `train_lens` with the fit on ``--tokens`` tokens and the default polish, its wall time;
3. ``paper``: the paper's recipe run for the same wall time (as many steps of 2^16 tokens as fit in it);
4. held-out KL (bits/byte) of both lenses and the logit lens at every 4th layer.

    python bench/gpu/fit_check.py [--tokens 1048576] [--cpu]   # --cpu: a tiny dry run of the same script
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from lens_hub.analysis.evaluate import evaluate
from lens_hub.training.data import TokenData, load_token_data
from lens_hub.training.fit import Moments
from lens_hub.training.settings import TrainSettings
from lens_hub.training.train import train_lens

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from bench_step import CONFIGS  # noqa: E402 - the real configs, defined once for the benchmarks

TOKENIZER = ROOT / "tests" / "data" / "gpt2-tokenizer"
SAMPLE = ROOT / "lens_hub" / "samples" / "persuasion-ch1-8.txt"


def repeat(data: TokenData, sequences: int) -> TokenData:
    """The sample's sequences repeated up to ``sequences`` (a random-weight model cannot tell)."""
    times = -(-sequences // len(data.sequences))
    seqs = data.sequences.repeat(times, 1)[:sequences]
    return TokenData(seqs, data.num_bytes * times, data.num_tokens_read * times, data.source)


def moments_rate(device: torch.device, d: int, layers: int, tokens: int = 8192, reps: int = 5) -> float:
    xs = [torch.randn(tokens, d, device=device, dtype=torch.bfloat16) for _ in range(layers)]
    y = torch.randn(tokens, d, device=device, dtype=torch.bfloat16)
    moments = Moments(layers, d, device)
    moments.update(xs, y)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        moments.update(xs, y)
    sync()
    return reps * tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1 << 20)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    seq_len, batch = (128, 2) if args.cpu else (1024, 8)
    tokens = 4096 if args.cpu else args.tokens
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2) if args.cpu else CONFIGS["smollm2"]()
    config.vocab_size = len(tokenizer)  # the GPT-2 tokenizer's ids must fit the random model's vocabulary
    dtype = torch.float32 if args.cpu else torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    data = load_token_data(SAMPLE, tokenizer, seq_len=seq_len)
    train, held = data.split(4)
    train = repeat(train, tokens // seq_len)
    d, num_layers = config.hidden_size if not args.cpu else 64, config.num_hidden_layers
    print(
        json.dumps(
            {"what": "moments", "device": str(device), "tokens_per_s": round(moments_rate(device, d, num_layers))}
        )
    )
    layers = list(range(0, num_layers, 4 if not args.cpu else 1))
    common = dict(seq_len=seq_len, batch_size=batch, layers=layers, quiet=True, checkpoint_every=10**9)
    polish_tokens = 1 << (10 if args.cpu else 16)
    start = time.perf_counter()
    fitted = train_lens(
        model,
        train,
        TrainSettings(fit_tokens=tokens, tokens_per_step=polish_tokens, steps=2 if args.cpu else 40, **common),
        Path(tempfile.mkdtemp()),
    )
    fit_seconds = time.perf_counter() - start
    print(json.dumps({"what": "fit+polish", "seconds": round(fit_seconds, 1), "tokens": tokens}))
    # The paper's recipe for the same wall time: time one step, then run as many as fit.
    probe = time.perf_counter()
    settings = TrainSettings(init="zero", steps=1, tokens_per_step=polish_tokens, **common)
    train_lens(model, train, settings, Path(tempfile.mkdtemp()))
    per_step = time.perf_counter() - probe
    steps = max(1, min(int(fit_seconds / per_step), len(train.sequences) * seq_len // polish_tokens))
    start = time.perf_counter()
    paper = train_lens(
        model,
        train,
        TrainSettings(init="zero", steps=steps, tokens_per_step=polish_tokens, **common),
        Path(tempfile.mkdtemp()),
    )
    print(json.dumps({"what": "paper", "seconds": round(time.perf_counter() - start, 1), "steps": steps}))
    for name, lens in (("fit+polish", fitted), ("paper", paper)):
        result = evaluate(model, held, lens, layers=layers)
        print(
            json.dumps(
                {"what": f"kl {name}", "layers": layers, "tuned": result.tuned["kl"], "logit": result.logit["kl"]}
            )
        )


if __name__ == "__main__":
    main()
