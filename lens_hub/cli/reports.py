"""Terminal reports shared by the CLI and the demo (the library itself never prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ..hub.publish import PushResult


def print_push(result: PushResult, out: Console) -> None:
    """Report a push: for a dry run the plan (files, card, registry diff), else what was committed and tagged."""
    if result.dry_run:
        _print_dry_run(result, out)
        return
    out.print(
        f"[green]✓[/] committed {len(result.files)} files to {result.repo_id} ({str(result.commit)[:12]})",
        highlight=False,
    )
    out.print(f"[green]✓[/] tagged {result.tag}", highlight=False)
    out.print(f"[green]✓[/] registry: {result.registry_file}", highlight=False)
    out.print(result.diff, markup=False, highlight=False, soft_wrap=True, end="")
    out.print(
        f"Load it with TunedLens.from_pretrained({result.base_model!r}, registry=...) or {result.uri}",
        markup=False,
        highlight=False,
    )


def _print_dry_run(result: PushResult, out: Console) -> None:
    what = "create the repo" if result.repo_created else "use the existing repo"
    private = " (private)" if result.private and result.repo_created else ""
    out.print(
        f"[bold]Dry run[/]: would {what} {result.repo_id}{private}, commit these files on main in one commit "
        f"(parent {result.parent_commit or 'the initial commit'}) and tag it {result.tag}:",
        highlight=False,
    )
    table = Table(show_header=True, box=None)
    table.add_column("path in repo")
    table.add_column("bytes", justify="right")
    for f in result.files:
        table.add_row(f.path_in_repo, f"{f.size:,}")
    out.print(table)
    out.print(f"\n[bold]Model card[/] ({result.files[0].path_in_repo.rpartition('/')[0] or 'repo root'}):")
    out.print(result.card, markup=False, highlight=False, soft_wrap=True)
    out.print(f"[bold]Registry[/] {escape(str(result.registry_file))}:")
    out.print(result.diff, markup=False, highlight=False, soft_wrap=True, end="")
    out.print("Nothing was uploaded or written (dry run).")
