"""Commands on lens files: `convert`, `info`, `download`, `push`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .app import Flag, RegistryOption, app, console


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(metavar="OLD_DIR", help="Old tuned-lens directory (config.json + params.pt).")],
    dst: Annotated[
        Path, typer.Argument(metavar="NEW_DIR", help="Output lens-hub directory (config.json + lens.safetensors).")
    ],
    base_model: Annotated[
        str | None, typer.Option(help="Hub id of the base model (overrides the old config, which may hold a path).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Load this model (Hub id or directory) to record and check its facts and fingerprint."),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Revision of --model.")] = None,
) -> None:
    """Convert a lens made by the old `tuned-lens` package into the safe lens-hub format.

    params.pt is read with torch.load(weights_only=True) only; anything but a plain tensor state dict is refused.
    Without --model the lens records only its width and depth; with it, loads are fully verified.

    Example: lens-hub convert old/gpt2 lenses/gpt2 --base-model openai-community/gpt2
    """
    from ..core.legacy import convert_legacy
    from ..core.models import load_model

    loaded = load_model(model, revision=revision) if model else None
    config = convert_legacy(src, dst, model=loaded, base_model=base_model)
    console.print(f"[green]Converted[/] {escape(str(src))} -> {escape(str(dst))}")
    _print_config(config)
    if config.fingerprint is None:
        console.print("[yellow]Note:[/] no --model given, so model_type, vocab_size and the fingerprint are unknown.")


@app.command()
def info(directory: Annotated[Path, typer.Argument(metavar="LENS_DIR", help="A lens directory.")]) -> None:
    """Show a lens directory's config (what model it fits), how it was trained, and its evaluation."""
    from ..core.format import read_config

    config = read_config(directory)
    _print_config(config)
    if config.training is not None:
        trained = Table(title="training", show_header=False, title_justify="left")
        for key, value in config.training.model_dump(exclude_none=True).items():
            trained.add_row(key, escape(str(value)))
        console.print(trained)
    if config.evaluation is not None:
        ev = config.evaluation
        rows = ev.layers if ev.layers is not None else list(range(len(ev.tuned.kl or ev.tuned.cross_entropy or [])))
        where = f" on {escape(ev.dataset)}" if ev.dataset else ""
        evaluated = Table(title=f"evaluation{where} (bits per byte; lower is better)", title_justify="left")
        columns = {"tuned KL": ev.tuned.kl, "logit KL": ev.logit.kl}
        columns |= {"tuned CE": ev.tuned.cross_entropy, "logit CE": ev.logit.cross_entropy}
        columns = {name: values for name, values in columns.items() if values}
        evaluated.add_column("layer", justify="right")
        for name in columns:
            evaluated.add_column(name, justify="right")
        for i, layer in enumerate(rows):
            evaluated.add_row(str(layer), *(f"{v[i]:.3f}" if i < len(v) else "" for v in columns.values()))
        console.print(evaluated)
        if ev.model_cross_entropy is not None:
            console.print(f"model's own cross-entropy: {ev.model_cross_entropy:.3f} bits per byte")


def _print_config(config) -> None:
    table = Table(show_header=False, box=None)
    for key, value in config.model_dump(exclude={"training", "evaluation"}).items():
        text = str(value)  # a stranger's text: shown as is, never read as rich markup ("[/]", "[link=...]")
        table.add_row(key, escape(text if len(text) < 70 else text[:67] + "..."))
    console.print(table)


@app.command()
def download(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Registry id or alias, hf://org/repo\\[@rev]\\[/sub], or org/repo.")
    ],
    version: Annotated[str | None, typer.Option(help="Lens version (default: the entry's default).")] = None,
    registry: RegistryOption = None,
    pinned_only: Annotated[bool, Flag("Refuse lenses not pinned to a commit.")] = False,
) -> None:
    """Fetch and verify a lens into the local cache (for later offline use), without loading a model.

    Example: lens-hub download gpt2 && HF_HUB_OFFLINE=1 python my_script.py
    """
    from ..hub.pretrained import FetchOptions
    from ..hub.pretrained import download as fetch_lens

    fetched = fetch_lens(name, version=version, registry=registry, options=FetchOptions(pinned_only=pinned_only))
    fetched.cleanup()  # a legacy lens is converted again at every load, from the verified files cached here
    config = fetched.config
    console.print(
        f"[green]✓[/] {escape(fetched.ref.describe())}: {config.num_layers} layers, d={config.hidden_size}, verified"
        + (" (old tuned-lens format: converted when loaded)" if fetched.temporary else "")
    )
    console.print(str(fetched.source), markup=False, highlight=False)


@app.command()
def push(
    lens_dir: Annotated[
        Path, typer.Argument(metavar="LENS_DIR", help="Lens directory (config.json + lens.safetensors).")
    ],
    repo: Annotated[str, typer.Option("--repo", help="Hub model repo to publish to, ORG/NAME (created if missing).")],
    version: Annotated[
        str | None, typer.Option(help="Version X.Y.Z (default: next patch after the newest v* tag, else 1.0.0).")
    ] = None,
    subfolder: Annotated[str, typer.Option(help="Folder inside the repo (tag SUBFOLDER/vX.Y.Z).")] = "",
    private: Annotated[bool, Flag("Create the repo as private.", "--private")] = False,
    dry_run: Annotated[bool, Flag("Show what would happen; upload nothing.", "--dry-run")] = False,
    registry: RegistryOption = None,
    base_model: Annotated[
        str | None, typer.Option(help="Hub id of the base model, when the lens config holds a local path.")
    ] = None,
    license_: Annotated[str | None, typer.Option("--license", help="License id (mit, apache-2.0, ...).")] = None,
    aliases: Annotated[str | None, typer.Option(help="Extra registry names for the model, a,b,c.")] = None,
) -> None:
    """Publish a lens to the Hub in one commit, tag it, and record it in the registry (pinned, with checksums).

    Uploads config.json, lens.safetensors, a model card (README.md) and eval.png (when the config holds metrics),
    tags the commit vX.Y.Z, then adds the version to registry/ORG--NAME.yaml as the default. Needs a token with
    write access (hf auth login, or HF_TOKEN). Warns when the lens has no held-out evaluation, has untrained
    layers, or is barely better than the logit lens (verified only means its files are intact). --dry-run works
    offline too, saying what it could not check.

    Example: lens-hub push lenses/smollm2 --repo me/smollm2-lens --license mit --dry-run
    """
    from ..hub.publish import execute, plan_push
    from .reports import print_push

    plan = plan_push(
        lens_dir,
        repo,
        version=version,
        subfolder=subfolder,
        private=private,
        registry=registry,
        base_model=base_model,
        license=license_,
        aliases=aliases,
        dry_run=dry_run,
    )
    print_push(plan.result() if dry_run else execute(plan), console)
