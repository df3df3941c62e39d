"""The `lens-hub registry` group: validate, list, show, audit, add, pin, schema."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..core.options import Status
from .app import _WIDTH, Flag, RegistryOption, app, console, err_console

registry_app = typer.Typer(
    help="Inspect, check and curate the lens registry (one YAML file per base model).", no_args_is_help=True
)


app.add_typer(registry_app, name="registry")


@registry_app.command("validate")
def registry_validate(
    path: Annotated[
        Path | None, typer.Argument(metavar="DIR", help="Registry directory (default: the shipped one).")
    ] = None,
) -> None:
    """Validate every registry file offline: schema, unique aliases, one default per model, version order,
    pinned revisions and checksums for verified lenses, sha256 format. Exits 1 listing every error by file and field.
    """
    from ..registry.store import Registry

    registry, problems = Registry.check(path)
    for problem in problems:
        err_console.print(f"[red]✗[/] {escape(problem)}", highlight=False, soft_wrap=True)
    versions = sum(len(e.lenses) for e in registry.entries.values())
    if problems:
        err_console.print(f"[bold red]{len(problems)} problem(s)[/] in {registry.directory}")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {registry.directory}: {len(registry.entries)} models, {versions} lens versions, valid")


@registry_app.command("list")
def registry_list(
    registry: RegistryOption = None,
    model: Annotated[str | None, typer.Option(help="Only models whose id or alias contains this.")] = None,
    status: Annotated[Status | None, typer.Option(help="Only default versions with this status.")] = None,
    architecture: Annotated[str | None, typer.Option(help="Only this model_type (llama, gpt_neox, ...).")] = None,
    json_out: Annotated[
        bool, Flag("Print the records as JSON (as lens_hub.registry.catalogue.list_pretrained).", "--json")
    ] = (False),
) -> None:
    """List every base model with a lens: aliases, architecture, versions, format, status, and quality (mean
    held-out KL logit → tuned, flagged when barely better or partly untrained, or "not evaluated") and tokens trained
    on. Status verified only means the files are intact.

    The same records as lens_hub.registry.catalogue.list_pretrained(); --json prints them as JSON.
    """
    from ..registry.catalogue import list_pretrained

    records = list_pretrained(model=model, status=status, architecture=architecture, registry=registry)
    if json_out:
        typer.echo(records.to_json())  # plain stdout: rich would wrap long lines
    elif sys.stdout.isatty():
        console.print(records)
    else:  # piped: as wide as the table needs, so no id is folded or cut (a pipe has no width)
        table = records.__rich__()
        natural = Console(width=100_000).measure(table).maximum
        Console(width=max(natural, _WIDTH or 0)).print(table)


@registry_app.command("show")
def registry_show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Model id or alias.")], registry: RegistryOption = None
) -> None:
    """Show one registry entry in full, with the code that loads its lens."""
    from ..registry.store import Registry, dump_entry

    reg = Registry.load(registry)
    entry = reg.get(name)
    console.print(f"[bold]{entry.model}[/]  ({reg.files.get(entry.model)})")
    console.print(dump_entry(entry), highlight=False, markup=False)
    console.print(f'from lens_hub import TunedLens\nlens = TunedLens.from_pretrained("{entry.model}")', markup=False)


@registry_app.command("audit")
def registry_audit(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Model id or alias (or --all).")] = None,
    all_: Annotated[bool, Flag("Audit every entry.", "--all")] = False,
    remote: Annotated[bool, Flag("Check against the live Hub (required: this is online).", "--remote")] = False,
    registry: RegistryOption = None,
) -> None:
    """Check entries against the live Hub: the revision exists, files have the recorded size and sha256, and
    safetensors headers match the facts. Online; run by hand or on a schedule, not in offline CI.
    """
    from ..hub.files import audit_version
    from ..registry.store import Registry

    if not remote:
        raise typer.BadParameter("audit talks to the Hub: pass --remote (offline checks are `registry validate`)")
    if (name is None) == (not all_):
        raise typer.BadParameter("name one model, or pass --all")
    reg = Registry.load(registry)
    entries = list(reg.entries.values()) if all_ else [reg.get(name)]  # type: ignore[arg-type]
    failed = 0
    for entry in entries:
        for version in entry.lenses:
            report = audit_version(entry.model, version, entry.facts)
            mark = "[green]✓[/]" if report.ok else "[red]✗[/]"
            console.print(f"{mark} {report.name}", highlight=False)
            for line in report.problems:
                console.print(f"    [red]{escape(line)}[/]", highlight=False, soft_wrap=True)
            for line in report.notes:
                console.print(f"    [dim]{escape(line)}[/]", highlight=False, soft_wrap=True)
            failed += not report.ok
    if failed:
        err_console.print(f"[bold red]{failed} lens version(s) drifted from the registry[/]")
        raise typer.Exit(1)


ConvertToOption = Annotated[
    str | None,
    typer.Option(
        "--convert-to",
        help="For a legacy tuned-lens lens: convert it to safetensors and publish it to this repo ORG/NAME, "
        "adding the safe copy as the next, default version.",
    ),
]


CurateModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Load the base model (Hub id or directory) to record its type, vocab, fingerprint."),
]


CurateDryRunOption = Annotated[bool, Flag("Show the entry's diff; write and publish nothing.", "--dry-run")]


def _print_adopted(result) -> None:
    """What `registry add` / `registry pin` did: the diff, the notes, the pinned location."""
    if result.diff:
        console.print(result.diff, markup=False, highlight=False, soft_wrap=True, end="")
    for note in result.notes:
        console.print(f"[yellow]Note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    verb = "wrote" if result.written else "would write (dry run)"
    console.print(
        f"[green]✓[/] {escape(result.entry.model)} v{result.version} ({result.format}, verified): "
        f"{escape(result.uri)}; {verb} {escape(str(result.registry_file))}",
        highlight=False,
        soft_wrap=True,
    )
    if result.converted is not None:
        from .reports import print_push

        print_push(result.converted, console)


@registry_app.command("add")
def registry_add(
    location: Annotated[
        str,
        typer.Argument(metavar="LOCATION", help="hf://ORG/REPO\\[@REV]\\[/SUBFOLDER] (hf://spaces/... for a Space)."),
    ],
    base_model: Annotated[
        str | None, typer.Option(help="Hub id of the base model (required when the lens config names a local path).")
    ] = None,
    model: CurateModelOption = None,
    registry: RegistryOption = None,
    version: Annotated[str | None, typer.Option(help="Version X.Y.Z (default: the next patch, else 1.0.0).")] = None,
    aliases: Annotated[str | None, typer.Option(help="Extra registry names for the model, a,b,c.")] = None,
    license_: Annotated[str | None, typer.Option("--license", help="License id to record (mit, apache-2.0, ...).")] = (
        None
    ),
    convert_to: ConvertToOption = None,
    dry_run: CurateDryRunOption = False,
) -> None:
    """Adopt a lens already on the Hub (lens-hub or legacy tuned-lens format) into the registry, verified.

    Resolves the revision to a commit and pins it, downloads and hashes every file, reads the lens with the safe
    readers (shapes checked against the config), then writes registry/ORG--NAME.yaml and prints the diff.

    Example: lens-hub registry add hf://me/gpt2-lens@main --base-model openai-community/gpt2 --registry registry
    """
    from ..hub.curate import adopt

    alias_list = [a.strip() for a in (aliases or "").split(",") if a.strip()]
    result = adopt(
        location,
        base_model=base_model,
        model=model,
        registry=registry,
        version=version,
        aliases=alias_list,
        license=license_,
        convert_to=convert_to,
        dry_run=dry_run,
    )
    _print_adopted(result)


@registry_app.command("pin")
def registry_pin(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Model id or alias of an entry with an unverified version.")
    ],
    version: Annotated[str | None, typer.Option(help="Version to pin (default: the entry's default).")] = None,
    model: CurateModelOption = None,
    registry: RegistryOption = None,
    convert_to: ConvertToOption = None,
    dry_run: CurateDryRunOption = False,
) -> None:
    """Verify an unverified registry version against the Hub: pin its commit, record every file's size and
    sha256, check the facts it claims, and mark it verified. Refused when the files no longer match the entry.

    Example: lens-hub registry pin pythia-70m-deduped --model EleutherAI/pythia-70m-deduped
    """
    from ..hub.curate import pin

    _print_adopted(pin(name, version=version, model=model, registry=registry, convert_to=convert_to, dry_run=dry_run))


@registry_app.command("schema")
def registry_schema(
    out: Annotated[Path | None, typer.Option(help="Write the JSON Schema here (default: print it).")] = None,
    check: Annotated[bool, Flag("Exit 1 if --out differs from the current schema.")] = False,
) -> None:
    """Print or write the registry JSON Schema (registry/schema.json is generated with this)."""
    import json

    from ..registry.schema import registry_json_schema

    text = json.dumps(registry_json_schema(), indent=2) + "\n"
    if out is None:
        console.print(text, markup=False, highlight=False)
    elif check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            err_console.print(f"[red]✗[/] {out} is stale: run `lens-hub registry schema --out {out}`")
            raise typer.Exit(1)
        console.print(f"[green]✓[/] {out} is current")
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")
