"""Terminal reports shared by the CLI and the demo (the library itself never prints)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ..hub.publish import PushResult


def print_push(result: PushResult, out: Console) -> None:
    """Report a push: for a dry run the plan (files, card, registry diff), else what was committed and tagged; then
    the lens's quality warnings and what a dry run could not check."""
    if result.dry_run:
        _print_dry_run(result, out)
    else:
        _print_pushed(result, out)
    for warning in result.warnings:
        out.print(f"[bold yellow]Warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if result.note:
        out.print(f"[yellow]Note:[/] {escape(result.note)}", highlight=False, soft_wrap=True)


def _print_pushed(result: PushResult, out: Console) -> None:
    out.print(
        f"[green]✓[/] committed {len(result.files)} files to {result.repo_id} ({str(result.commit)[:12]})",
        highlight=False,
    )
    out.print(f"[green]✓[/] tagged {result.tag}", highlight=False)
    out.print(f"[green]✓[/] registry: {result.registry_file}", highlight=False)
    out.print(result.diff, markup=False, highlight=False, soft_wrap=True, end="")
    registry = str(result.registry_file.parent)
    out.print(
        f"Load it with TunedLens.from_pretrained({result.base_model!r}, registry={registry!r}) or {result.uri}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _print_dry_run(result: PushResult, out: Console) -> None:
    if not result.hub_checked:
        what = "create or use the repo"
        parent = "the head of main, not read: the Hub could not be reached"
        tag = f"{result.tag} (not checked to be free)"
    else:
        what = "create the repo" if result.repo_created else "use the existing repo"
        parent, tag = result.parent_commit or "the initial commit", result.tag
    private = " (private)" if result.private and result.repo_created else ""
    out.print(
        f"[bold]Dry run[/]: would {what} {escape(result.repo_id)}{private}, commit these files on main in one commit "
        f"(parent {escape(parent)}) and tag it {escape(tag)}:",
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
