"""Lens training step: lens-hub's fused step against a faithful reference step, side by side, same inputs.

The reference is tuned-lens 0.2.0's step: a loop over layers, full-vocabulary fp32 log-softmax per layer, a
backward per layer and a host sync (``.item()``) per layer. Both steps include the model's forward pass and use
random-weight models built from real configs (speed does not depend on the weights).

    python bench/bench_step.py --config smollm2 --batch 8 --seq 1024          # GPU (bf16 autocast)
    python bench/bench_step.py --config smollm2 --batch 1 --seq 256 --steps 2 # CPU

Prints one JSON line: per step kind, tokens/s and peak GPU memory; per kernel of the fused step (eager PyTorch,
and the Triton kernel where it runs), its speed-up over the reference and its largest loss/gradient difference.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

import lens_hub
from lens_hub import TunedLens
from lens_hub.training.kernels import triton_usable
from lens_hub.training.losses import fused_lens_losses, reference_lens_losses
from lens_hub.training.train import hidden_states

CONFIGS = {
    # HuggingFaceTB/SmolLM2-135M(-Instruct)
    "smollm2": lambda: LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    ),
    # openai-community/gpt2
    "gpt2": lambda: GPT2Config(),
    # the tiny GPT-2 of bench/tiny_gpt2.py (3 layers, d 96, real vocabulary)
    "tiny-gpt2": lambda: GPT2Config(n_layer=3, n_embd=96, n_head=4),
}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.machine()
    return f"{name} ({torch.get_num_threads()} threads)"


def _time(fn, steps: int, device: torch.device) -> tuple[float, float]:
    """Mean seconds per call after one warm-up call, and peak GPU memory in GiB (0 on CPU)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return (time.perf_counter() - start) / steps, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="smollm2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--layers", type=int, default=None, help="Train only the first N layers (CPU: fewer).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunk", type=int, default=None, help="Tokens per chunk of the fused step.")
    parser.add_argument(
        "--kernels",
        default=None,
        help="Comma-separated kernels of the fused step to time: eager, triton (default: eager, plus triton on CUDA).",
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(CONFIGS[args.config](), dtype=dtype).to(device).eval()
    model.requires_grad_(False)
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(std=0.01)
    layers = list(range(args.layers or lens.num_layers))
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def forward():
        with torch.no_grad(), autocast:
            return hidden_states(model, ids)

    def reference():
        hs = forward()
        with autocast:
            return reference_lens_losses(lens, hs, layers)

    kernels = args.kernels.split(",") if args.kernels else ["eager"]
    if args.kernels is None and triton_usable(device):
        kernels.append("triton")

    def ours(kernel: str):
        hs = forward()
        with autocast:
            losses = fused_lens_losses(lens, hs, layers, chunk=args.chunk, kernel=kernel)
        losses.sum().backward()
        return losses.detach().tolist()  # one host sync per step

    # Same inputs, same weights: the steps must agree before their speed means anything.
    lens.zero_grad()
    ref_losses = reference()
    ref_grads = [p.grad.clone() for p in lens.parameters()]
    grad_scale = max(float(g.abs().max()) for g in ref_grads)
    agreement = {}
    for kernel in kernels:
        lens.zero_grad()
        our_losses = ours(kernel)
        agreement[kernel] = {
            "max_loss_diff": max(abs(a - b) for a, b in zip(ref_losses, our_losses, strict=True)),
            "max_grad_diff": max(
                float((p.grad - g).abs().max()) for p, g in zip(lens.parameters(), ref_grads, strict=True)
            ),
        }

    tokens = args.batch * args.seq
    steps = {"forward": forward, "reference": reference}
    steps |= {f"lens-hub-{kernel}": lambda kernel=kernel: ours(kernel) for kernel in kernels}
    results = {}
    for name, fn in steps.items():
        seconds, peak = _time(lambda fn=fn: (lens.zero_grad(), fn()), args.steps, device)
        results[name] = {"tokens_per_s": round(tokens / seconds, 1), "peak_gib": round(peak, 2)}
        if name.startswith("lens-hub-"):
            results[name] |= agreement[name.removeprefix("lens-hub-")]
            results[name]["speedup"] = round(results[name]["tokens_per_s"] / results["reference"]["tokens_per_s"], 2)
    info = {
        "config": args.config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "dtype": str(dtype),
        "batch": args.batch,
        "seq": args.seq,
        "layers": len(layers),
        "chunk": args.chunk,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lens_hub": lens_hub.__version__,
        "max_grad": grad_scale,
        **results,
    }
    print(json.dumps(info))


if __name__ == "__main__":
    main()
