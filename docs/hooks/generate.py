"""MkDocs hook: generate the pages that must never be written by hand.

- ``catalogue/index.md`` and one ``catalogue/<org>--<name>.md`` per base model, from the lens registry
  (``$LENS_HUB_REGISTRY`` or the registry of this checkout), with a per-layer plot of tuned vs logit lens for every
  version whose registry entry holds evaluation metrics (PNG made by ``lens_hub.core.plots.evaluation_png``) and a
  per-layer table of KL and cross-entropy, tuned vs logit lens (the quality fields of the model card);
- ``reference/cli.md``, from the Typer app's click commands (their own help texts and parameters);
- ``reference/registry-schema.md``, from ``lens_hub.registry.schema.registry_json_schema()``.

Nothing here reaches the network: the registry is read from disk and the plots are drawn from its metrics.

Registry files are written by anyone who opens a pull request, and the pages are built with raw HTML enabled
(``md_in_html``, ``attr_list``), so nothing read from the registry reaches the markdown as is: free text goes through
`_text` (every character that could mean markdown or HTML becomes a numeric character reference), ids and hashes
through `_code` (code spans, which show their content literally), code blocks through `_fenced` (a fence no line
of the content can close) and links through `_hub_url` (percent-encoded).
"""

from __future__ import annotations

import html
import inspect
import json
import os
import re
from pathlib import Path
from urllib.parse import quote

from mkdocs.structure.files import File, Files

# ---------------------------------------------------------------------------------------------------------------
# helpers


def _cell(text: object) -> str:
    """A markdown table cell: no pipes, no newlines, no raw HTML."""
    text = html.escape(" ".join(str(text).split()), quote=False).replace("|", "&#124;")
    return text.replace("[", "&#91;").replace("]", "&#93;")  # never a markdown link or autorefs reference


def _code(text: object) -> str:
    """An inline code span for a table cell (code spans show entities literally, so nothing is escaped)."""
    return "`" + " ".join(str(text).split()).replace("`", "'").replace("|", "\\|") + "`"


def _text(text: object) -> str:
    """Registry-derived free text for any inline position: shown exactly as written, never read as markup.

    Whitespace is collapsed to single spaces, letters, digits and spaces are kept, and every other character
    becomes a numeric character reference (``<`` -> ``&#60;``): no HTML tag, markdown link, emphasis, attribute
    list (``{: onclick=...}``), table pipe or code fence can be formed, whatever the text holds.
    """
    return "".join(c if c.isalnum() or c == " " else f"&#{ord(c)};" for c in " ".join(str(text).split()))


def _fenced(language: str, lines: list[str], indent: str = "") -> list[str]:
    """A fenced code block whose fence is longer than any run of backticks in ``lines`` (so none can close it)."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{indent}{fence}{language}", *(f"{indent}{line}" for line in lines), f"{indent}{fence}"]


def _add(files: Files, config, src_uri: str, content: str | bytes) -> None:
    existing = files.get_file_from_path(src_uri)
    if existing is not None:
        files.remove(existing)
    files.append(File.generated(config, src_uri, content=content))


def model_slug(model_id: str) -> str:
    """``org/name`` -> ``org--name`` (the registry file's stem)."""
    return model_id.replace("/", "--")


# ---------------------------------------------------------------------------------------------------------------
# the catalogue


def _load_registry():
    from lens_hub.registry.store import Registry, default_registry_dir

    directory = default_registry_dir()
    return Registry.load(directory), directory


def _quality(version, num_layers: int | None = None):
    """The version's `lens_hub.registry.quality.Quality`: the judgement `lens-hub registry list` and the push make.
    Its ``summary()`` is the headline: mean KL(final || lens) over the evaluated layers, logit → tuned, in bits per
    byte (flagged when barely better or partly untrained), or "not evaluated"."""
    from lens_hub.registry.quality import assess

    return assess(version.evaluation, version.training, version.untrained_layers, num_layers)


def _hub_url(location) -> str:
    """The Hub page of a lens location; every registry-derived part is percent-encoded (no quote, space or paren
    can end the markdown link or the ``href``)."""
    prefix = {"model": "", "space": "spaces/", "dataset": "datasets/"}[location.repo_type]
    ref = quote(location.revision or "main", safe="")
    tree = f"/tree/{ref}/{quote(location.subfolder, safe='/')}" if location.subfolder else f"/tree/{ref}"
    return f"https://huggingface.co/{prefix}{quote(location.repo_id, safe='/')}{tree}"


def _index_page(registry, directory: Path) -> str:
    from lens_hub.registry.quality import BARELY_BETTER

    entries = sorted(registry.entries.values(), key=lambda e: e.model.lower())
    versions = sum(len(e.lenses) for e in entries)
    lines = [
        "---",
        "hide:",
        "  - navigation",
        "  - toc",
        "---",
        "",
        "# Lens catalogue",
        "",
        f"Every base model with a lens in the registry: **{len(entries)} models, {versions} lens versions**. This page "
        "is generated from the registry files at build time (`registry/`, one YAML file per base model); click a "
        "model for its versions, Hub locations and the code that loads its lens.",
        "",
        "Status `verified` means the lens is pinned to a commit and every file's size and sha256 is recorded "
        "(integrity, not quality); `unverified` lenses load with a warning. Quality is the mean held-out KL divergence "
        "from the final layer over the evaluated layers in bits per byte, logit lens → tuned lens (lower is better), "
        f"flagged *barely better* when the tuned lens keeps more than {BARELY_BETTER:.0%} of the logit lens's KL and "
        "with the number of untrained layers (where the lens is the logit lens); *not evaluated* means the entry "
        "records no held-out evaluation. Tokens: what the lens was trained on.",
        "",
        '<div class="catalogue-filter">',
        '<input type="search" id="catalogue-filter" placeholder="Filter by model, alias, architecture, status…" '
        'aria-label="Filter the catalogue" autocomplete="off">',
        '<span id="catalogue-count" aria-live="polite"></span>',
        "</div>",
        "",
        '<div class="catalogue-table" markdown>',
        "",
        "| Base model | Aliases | Architecture | Hidden size | Layers | Versions | Format | Status | Quality "
        "| Tokens |",
        "| --- | --- | --- | ---: | ---: | --- | --- | --- | --- | ---: |",
    ]
    for e in entries:
        v = e.default_version
        quality = _quality(v, e.facts.num_layers)
        version_text = ", ".join(
            f"v{x.version}" + (" (default)" if x.default and len(e.lenses) > 1 else "") for x in e.lenses
        )
        lines.append(
            f"| [{_text(e.model)}]({quote(model_slug(e.model))}.md) | {_text(', '.join(e.aliases) or '—')} "
            f"| {_text(e.facts.model_type or '?')} | {e.facts.hidden_size or '?'} | {e.facts.num_layers or '?'} "
            f"| {_text(version_text)} | {_text(v.format)} | {_text(v.status)} "
            f"| {_text(quality.summary())} | {_tokens(quality.tokens_seen)} |"
        )
    lines += ["", "</div>", "", f"<small>Built from {_code(directory.name + '/')} with lens-hub.</small>", ""]
    return "\n".join(lines)


def _model_page(entry, plots: dict[str, str]) -> str:
    from lens_hub.registry.store import dump_entry

    facts = entry.facts
    lines = [f"# {_text(entry.model)}", ""]
    if entry.aliases:
        lines += ["**Aliases:** " + ", ".join(_code(a) for a in entry.aliases), ""]
    lines += [
        "## Load the lens",
        "",
        *_fenced(
            "python", ["from lens_hub import TunedLens", "", f"lens = TunedLens.from_pretrained({_py(entry.model)})"]
        ),
        "",
        f'This loads the default version (v{_text(entry.default_version.version)}); pass `version="X.Y.Z"` for '
        "another. Names are case-insensitive and aliases work too.",
        "",
        "## Model facts",
        "",
        "Every lens of this model must match these (`?`: not known for certain).",
        "",
        "| Fact | Value |",
        "| --- | --- |",
    ]
    for name in ("model_type", "hidden_size", "num_layers", "vocab_size", "revision", "fingerprint"):
        value = getattr(facts, name)
        lines.append(f"| {name} | {_code(value) if value is not None else '?'} |")
    lines += ["", "## Versions", ""]
    for v in reversed(entry.lenses):  # newest first
        loc = v.location
        badges = [v.status, v.format] + (["default"] if v.default else [])
        lines += [f"### v{_text(v.version)}", "", " · ".join(_code(b) for b in badges), ""]
        lines += ["| | |", "| --- | --- |"]
        lines.append(f"| Hub location | [{_text(loc.repo_type)}: {_text(loc.repo_id)}]({_hub_url(loc)}) |")
        lines.append(f"| Subfolder | {_code(loc.subfolder) if loc.subfolder else '(repo root)'} |")
        lines.append(f"| Pinned commit | {_code(loc.revision) if loc.revision else 'not pinned (unverified)'} |")
        if v.license:
            lines.append(f"| Licence | {_text(v.license)} |")
        if v.training:
            t = v.training
            parts = [
                f"{k}: {getattr(t, k)}"
                for k in ("dataset", "num_tokens", "steps", "lens_hub_version")
                if getattr(t, k) is not None
            ]
            if parts:
                lines.append(f"| Training | {_text('; '.join(parts))} |")
        quality = _quality(v, facts.num_layers)
        lines.append(f"| Quality | {_text(quality.summary())} |")
        if quality.evaluated and quality.eval_dataset:
            tokens = f", {quality.eval_tokens:,} tokens" if quality.eval_tokens else ""
            lines.append(f"| Evaluated on | {_text(quality.eval_dataset + tokens)} |")
        lines.append(f"| Tokens trained on | {_tokens(quality.tokens_seen)} |")
        if v.untrained_layers is not None:
            from lens_hub.registry.quality import layer_ranges

            lines.append(f"| Untrained layers | {_text(layer_ranges(v.untrained_layers) or 'none')} |")
        for problem in quality.problems().values():
            lines.append(f"| Caveat | {_text(problem)} |")
        lines += ["", "**Files**", "", "| Path | Size | sha256 |", "| --- | ---: | --- |"]
        for f in v.files:
            size = f"{f.size:,}" if f.size is not None else "?"
            sha = _code(f.sha256) if f.sha256 else "?"
            lines.append(f"| {_code(f.path)} | {size} | {sha} |")
        lines.append("")
        snippet = f"lens = TunedLens.from_pretrained({_py(entry.model)}, version={_py(v.version)})"
        lines += [*_fenced("python", ["from lens_hub import TunedLens", "", snippet]), ""]
        if v.notes:
            lines += ["!!! note", "", "    " + _text(v.notes), ""]
        if v.version in plots:
            ev = v.evaluation
            lines += [
                "**Evaluation** (tuned vs logit lens, per layer"
                + (f", on {_text(ev.dataset)}" if ev.dataset else "")
                + (f", {ev.num_tokens:,} tokens" if ev.num_tokens else "")
                + ")",
                "",
                f"![Per-layer KL and cross-entropy of the tuned and logit lens for {_text(entry.model)} "
                f"v{_text(v.version)}]({quote(plots[v.version])}){{ .lens-plot }}",
                "",
            ]
        if v.evaluation is not None:
            lines += _evaluation_table(v.evaluation)
    lines += [
        "## Registry entry",
        "",
        '??? info "The registry file as it is validated"',
        "",
        *_fenced("yaml", dump_entry(entry).splitlines(), indent="    "),
        "",
    ]
    return "\n".join(lines)


def _tokens(count: int | None) -> str:
    return f"{count:,}" if count is not None else "?"


def _metric(values: list[float] | None, i: int) -> str:
    """One per-layer value to three decimals, or ``–`` where the list does not cover the layer."""
    return _cell(f"{values[i]:.3f}") if values is not None and i < len(values) else "–"


def _evaluation_table(ev) -> list[str]:
    """The per-layer quality fields of the model card (`lens_hub.hub.card`): KL(final ‖ lens) and cross-entropy, tuned
    vs logit lens, in bits per byte; nothing when the evaluation holds no such metric."""
    columns = [(ev.tuned, "kl"), (ev.logit, "kl"), (ev.tuned, "cross_entropy"), (ev.logit, "cross_entropy")]
    n = max((len(getattr(m, k) or []) for m, k in columns), default=0)
    if n == 0:
        return []
    labels = ev.layers if ev.layers is not None else list(range(n))  # the evaluated layers, not row numbers
    lines = [
        "**Per layer** (bits per byte, lower is better)",
        "",
        "| Layer | KL tuned | KL logit | Cross-entropy tuned | Cross-entropy logit |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {_cell(layer)} | " + " | ".join(_metric(getattr(m, k), i) for m, k in columns) + " |"
        for i, layer in enumerate(labels[:n])
    ]
    if ev.model_cross_entropy is not None:
        lines += ["", f"The model's own cross-entropy: {_cell(f'{ev.model_cross_entropy:.3f}')} bits per byte."]
    return [*lines, ""]


def _py(value: str) -> str:
    """A Python string literal for a code snippet (escaped as Python escapes it, so it cannot end the string)."""
    return json.dumps(value, ensure_ascii=True)


def _catalogue(files: Files, config) -> None:
    from lens_hub.core.plots import evaluation_png

    registry, directory = _load_registry()
    _add(files, config, "catalogue/index.md", _index_page(registry, directory))
    for entry in registry.entries.values():
        slug = model_slug(entry.model)
        plots: dict[str, str] = {}
        for v in entry.lenses:
            if v.evaluation is None:
                continue
            png = evaluation_png(v.evaluation, title=f"{entry.model} v{v.version}: tuned vs logit lens")
            name = f"{slug}-v{v.version}.png"
            _add(files, config, f"catalogue/plots/{name}", png)
            plots[v.version] = f"plots/{name}"
        _add(files, config, f"catalogue/{slug}.md", _model_page(entry, plots))


# ---------------------------------------------------------------------------------------------------------------
# the CLI reference


def _param_row(param, ctx) -> str:
    """One table row from the parameter's own help record (what ``--help`` prints)."""
    record = param.get_help_record(ctx) or (param.name or "", getattr(param, "help", None) or "")
    names, help_text = record
    names, _, typ = names.partition(" <")
    typ = typ.rstrip(">")
    kind = param.param_type_name
    if kind == "option" and getattr(param, "is_flag", False):
        kind = "flag"
    shown = " / ".join(f"`{n.strip()}`" for n in names.split(",") if n.strip()) or f"`{param.name}`"
    if kind == "argument":
        shown = f"`{(param.name or '').upper()}`"
    help_text = re.sub(r"\s*\[(required|default: [^\]]*)\]", "", help_text).strip()  # own columns
    help_text = help_text.replace("\\[", "[")  # Typer's rich markup escape: the page shows the bracket itself
    required = "yes" if param.required else ""
    default = ""
    value = param.default
    if not param.required and value is not None and not callable(value) and value is not False and value != []:
        default = f"{_code(value)}"
    return f"| {shown} | {kind} | {_cell(typ)} | {required} | {default} | {_cell(help_text)} |"


_EXAMPLE = re.compile(r"^Examples?:")
# What an example line of a help text starts with: the command itself, or an environment assignment before it.
_COMMAND = re.compile(r"^(lens-hub|torchrun|python|[A-Z][A-Z0-9_]*=\S*)\s")


def _commands(lines: list[str]) -> list[str] | None:
    """``lines`` as shell lines (a line after one ending in a backslash continues it, indented), or None when they
    are not all commands."""
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out.append("  " + line)
        elif _COMMAND.match(line):
            out.append(line)
        else:
            return None
    return out or None


def _help_paragraphs(text: str) -> list[str]:
    """A command's docstring as markdown: prose paragraphs kept, examples as bash blocks.

    An example is a line starting ``Example:`` or ``Examples:`` (anywhere in a paragraph): the command after the
    label and the lines below it form the block; after a bare ``Examples:``, the paragraphs that follow and are
    commands (the root's list, one per paragraph so that ``--help`` keeps them apart) join the same block.
    """
    out: list[str] = []
    block: list[str] | None = None  # the example lines being collected

    def close() -> None:
        nonlocal block
        if block:
            out.extend(["**Examples**" if len(block) > 1 else "**Example**", "", *_fenced("bash", block), ""])
        block = None

    for para in inspect.cleandoc(text).split("\n\n"):
        lines = [line.strip() for line in para.strip().splitlines() if line.strip()]
        more = _commands(lines) if block is not None else None
        if more:
            block += more  # one more command of an "Examples:" list
            continue
        close()
        at = next((k for k, line in enumerate(lines) if _EXAMPLE.match(line)), len(lines))
        if at:
            # Typer's rich markup needs "\[" for a literal bracket; the page shows the bracket itself.
            prose = " ".join(lines[:at]).replace("\\[", "[")
            out += [_cell(prose).replace("&#124;", "|"), ""]
        if at < len(lines):
            first = _EXAMPLE.sub("", lines[at]).strip()
            rest = [first] if first else []
            block = _commands(rest + lines[at + 1 :]) or rest + lines[at + 1 :]
    close()
    return out


def _cli_page() -> str:
    from typer.main import get_command

    from lens_hub.cli import app

    root = get_command(app)
    lines = [
        "# CLI reference",
        "",
        "Generated at build time from the `lens-hub` command itself (its Typer app's click commands), so it always "
        "matches the installed version. `lens-hub COMMAND --help` prints the same.",
        "",
    ]

    # Typer vendors its own click, so commands are handled by duck typing rather than click's classes.
    def walk(cmd, path: list[str], parent) -> None:
        ctx = cmd.context_class(cmd, info_name=path[-1], parent=parent)
        title = " ".join(path)
        level = "#" * min(len(path) + 1, 4)
        lines.extend([f"{level} `{title}`", ""])
        if cmd.help:
            lines.extend(_help_paragraphs(cmd.help))
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        lines.extend(["```text", f"Usage: {title} {usage}".rstrip(), "```", ""])
        params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
        if params:
            lines.extend(
                [
                    "| Name | Kind | Type | Required | Default | Description |",
                    "| --- | --- | --- | --- | --- | --- |",
                    *(_param_row(p, ctx) for p in params),
                    "",
                ]
            )
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, [*path, name], ctx)

    walk(root, ["lens-hub"], None)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# the registry schema reference


def _type_of(prop: dict) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    if "enum" in prop:
        return " / ".join(f"`{json.dumps(x)}`" for x in prop["enum"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    extras = []
    if "pattern" in prop:
        extras.append(f"pattern `{prop['pattern']}`")
    for key, sym in (("exclusiveMinimum", ">"), ("minimum", "≥"), ("minLength", "length ≥"), ("maxLength", "length ≤")):
        if key in prop:
            extras.append(f"{sym} {prop[key]}")
    if "minItems" in prop:
        extras.append(f"at least {prop['minItems']} item(s)")
    return f"{kind}" + (f" ({', '.join(extras)})" if extras else "")


def _schema_table(name: str, schema: dict) -> list[str]:
    lines = [f"## {name}", ""]
    if schema.get("description"):
        lines += [html.escape(" ".join(schema["description"].split()), quote=False), ""]
    required = set(schema.get("required", []))
    lines += ["| Field | Type | Required | Default | Description |", "| --- | --- | --- | --- | --- |"]
    for field, prop in schema.get("properties", {}).items():
        default = f"{_code(json.dumps(prop['default']))}" if "default" in prop else ""
        lines.append(
            f"| `{field}` | {_type_of(prop).replace('|', '&#124;')} | {'yes' if field in required else ''} "
            f"| {default} | {_cell(prop.get('description', ''))} |"
        )
    return [*lines, ""]


def _schema_page() -> str:
    from lens_hub.core.format import MAX_NESTING
    from lens_hub.registry.schema import REQUIRED_FILES, registry_json_schema
    from lens_hub.registry.store import MAX_FILE_BYTES

    schema = registry_json_schema()
    lines = [
        "# Registry schema",
        "",
        "Generated at build time from the pydantic models in `lens_hub.registry.schema` "
        "(`registry_json_schema()`), the same JSON Schema that `lens-hub registry schema` writes to "
        "`registry/schema.json`. Every model is strict and forbids unknown keys. Besides the field rules below:",
        "",
        "- a file for `org/name` is named `org--name.yaml`; aliases are case-insensitive and unique across the "
        "registry, and never repeat the canonical id; model ids, aliases, repo ids and subfolders are ASCII and "
        "follow the Hub's rules;",
        "- versions are listed oldest first, with exactly one `default: true` (never a deprecated one);",
        "- a `verified` lens is pinned to a 40-hex commit with `size` and `sha256` for every file; a `safetensors` "
        "lens is always pinned;",
        "- an entry lists exactly the files of its format, each a plain file name in the lens's folder: "
        + "; ".join(f"`{fmt}`: " + ", ".join(f"`{p}`" for p in paths) for fmt, paths in REQUIRED_FILES.items())
        + ";",
        f"- a file is at most {MAX_FILE_BYTES // 2**20} MiB, nests at most {MAX_NESTING} levels, and uses no YAML "
        "aliases or duplicate keys.",
        "",
        "Check a registry with `lens-hub registry validate` (offline).",
        "",
    ]
    lines += _schema_table(
        schema.get("title", "RegistryEntry").replace("lens-hub registry entry", "RegistryEntry"), schema
    )
    for name, sub in schema.get("$defs", {}).items():
        lines += _schema_table(name, sub)
    lines += [
        "## The JSON Schema",
        "",
        '??? info "registry/schema.json"',
        "",
        "    ```json",
        *("    " + line for line in json.dumps(schema, indent=2).splitlines()),
        "    ```",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# mkdocs events


# lens_hub/core/lens.py's from_pretrained docstring lists several exceptions on one "Raises:" item, which griffe's
# Google parser reports as a warning (failing --strict). Only that one known message is dropped here; everything
# else griffe says still counts. Remove this filter once the docstring lists one exception per item.
def on_files(files: Files, config) -> Files:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _add(files, config, "reference/cli.md", _cli_page())
    _add(files, config, "reference/registry-schema.md", _schema_page())
    _catalogue(files, config)
    return files
