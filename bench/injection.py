"""The tuned-lens paper's prompt-injection experiment, as its scripts ran it, on the real SmolLM2-135M-Instruct.

Offline on CPU. A tuned lens over all 30 layers is fitted in closed form (no KL steps) on the first 16,384 tokens
of the shipped Austen sample into out/injection-smollm2/lens, or reused from there. Then, on the multiple-choice
tasks shipped in lens_hub/samples/tasks (`lens_hub.analysis.tasks`), each item's 5-shot prompt is read without
and with the paper's injection, and `lens_hub.analysis.injection.run_injection_experiment` scores the tuned and
logit lenses' choice log-likelihoods (isolation forest, LOF), the paper's hidden-state baseline (relative
Mahalanobis) and today's trajectory statistics, over 10 seeds x 1,000 bootstrap resamples.

    python bench/injection.py --limit 200 --threads 1

writes bench/results/injection_smollm2.json and docs/assets/injection-smollm2.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from lens_hub import TunedLens
from lens_hub.analysis.injection import paper_table, run_injection_experiment, write_injection_png
from lens_hub.analysis.tasks import load_shipped_task, shipped_tasks
from lens_hub.core.models import load_smollm2, quiet_progress
from lens_hub.core.progress import ProgressReport
from lens_hub.errors import LensHubError
from lens_hub.training.data import load_token_data
from lens_hub.training.settings import TrainSettings
from lens_hub.training.train import train_lens

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEXT = ROOT / "lens_hub" / "samples" / "persuasion-ch1-8.txt"
LENS_DIR = ROOT / "out" / "injection-smollm2" / "lens"
FIT_TOKENS = 16_384
SEQ_LEN = 256


def get_lens(model: torch.nn.Module, tokenizer, console: Console) -> tuple[TunedLens, dict]:
    """Reuse the fitted lens in out/injection-smollm2/lens, else fit one over all layers (a few minutes)."""
    if (LENS_DIR / "config.json").is_file():
        try:
            lens = TunedLens.load(LENS_DIR, model)
            console.print(f"reusing the tuned lens in {LENS_DIR}")
            return lens, {"dir": str(LENS_DIR.relative_to(ROOT)), "reused": True, "fit_seconds": None}
        except LensHubError as exc:
            console.print(f"[yellow]not reusing {LENS_DIR}:[/] {exc}")
    tokens = load_token_data(TEXT, tokenizer, seq_len=SEQ_LEN, max_sequences=FIT_TOKENS // SEQ_LEN)
    settings = TrainSettings(init="fit", steps=0, seq_len=SEQ_LEN, batch_size=4, fit_tokens=FIT_TOKENS)
    start = time.perf_counter()
    lens = train_lens(model, tokens, settings, LENS_DIR, console=console)
    seconds = round(time.perf_counter() - start, 1)
    return lens, {"dir": str(LENS_DIR.relative_to(ROOT)), "reused": False, "fit_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=shipped_tasks(), choices=shipped_tasks())
    parser.add_argument("--limit", type=int, default=200, help="items per task")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=str(HERE / "results" / "injection_smollm2.json"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "assets" / "injection-smollm2.png"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=160)
    start = time.perf_counter()
    torch.manual_seed(0)
    with quiet_progress():
        model, tokenizer = load_smollm2()
    lens, lens_info = get_lens(model, tokenizer, console)
    fitted = time.perf_counter()
    tasks = [load_shipped_task(name) for name in args.tasks]
    with ProgressReport("injection", console=console, unit="prompts", interval=60) as bar:
        report = run_injection_experiment(
            model,
            tokenizer,
            {"tuned": lens, "logit": "logit"},
            tasks,
            shots=args.shots,
            limit=args.limit,
            seeds=args.seeds,
            bootstrap=args.bootstrap,
            progress=bar,
        )
    done = time.perf_counter()
    report.meta.update(
        {
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct (offline GGUF conversion, float32)",
            "lens": {**lens_info, "fit_tokens": FIT_TOKENS, "layers": "all 30, closed-form fit, no KL steps"},
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "load_average_at_end": os.getloadavg(),
            },
            "seconds": {
                "lens": round(fitted - start, 1),
                "experiment": round(done - fitted, 1),
                "total": round(done - start, 1),
            },
            "command": "python " + shlex.join(["bench/injection.py", *sys.argv[1:]]),
        }
    )
    console.print(report.table(title="SmolLM2-135M-Instruct: median AUROC [95% range]"))
    console.print(paper_table())
    out = report.write_json(args.json)
    png = write_injection_png(report, args.png, title="SmolLM2-135M-Instruct, 5-shot, the paper's protocol")
    console.print(f"wrote {out} and {png}; {json.dumps(report.meta['seconds'])}")


if __name__ == "__main__":
    main()
