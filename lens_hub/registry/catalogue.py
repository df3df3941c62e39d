"""Discovery: which lenses the registry lists, as typed records (``list_pretrained``, ``lens-hub registry list``).

`list_pretrained` reads a registry (the shipped one, ``$LENS_HUB_REGISTRY``, or a directory) and returns one
`LensRecord` per base model, describing its default lens version: the model's facts, where the lens lives, its
format and status, and what its quality is judged by (`lens_hub.registry.quality`): the per-layer held-out KL
divergence from the final layer of the tuned and the logit lens, the tokens it was trained on and its untrained
layers (``verified`` only says the files are intact; the ``quality`` column says whether the lens is any good). The
result is a `LensList`, a plain list
that also renders as an HTML table in a notebook (``_repr_html_``, every value escaped) and as a rich table in a
terminal (``__rich__``, no value read as markup). ``lens-hub registry list`` prints this same list, so the command
line and Python never disagree.
"""

from __future__ import annotations

import html
import json
import os
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .quality import Quality, tokens_seen
from .schema import LensVersion, RegistryEntry
from .store import Registry

if TYPE_CHECKING:
    from rich.table import Table

# Headings of the HTML and rich tables, shared so that both views (and `LensRecord.cells`) say the same.
_COLUMNS = ("model", "aliases", "type", "d", "layers", "vocab", "default", "format", "status", "quality", "tokens")


@dataclass(frozen=True)
class LensRecord:
    """One base model of the registry and its default lens version (``None``: not known for certain).

    KL values are in bits per byte, KL(final layer ‖ lens) per evaluated layer (``kl_layers`` names the layers;
    ``None`` when the lists cover every layer in order), exactly as the version's evaluation records them.
    """

    model: str
    aliases: tuple[str, ...]
    model_type: str | None
    hidden_size: int | None
    num_layers: int | None
    vocab_size: int | None
    version: str
    versions: tuple[str, ...]
    format: str
    status: str
    repo_id: str
    repo_type: str
    subfolder: str
    revision: str | None
    kl_layers: tuple[int, ...] | None = None
    kl_tuned: tuple[float, ...] | None = None
    kl_logit: tuple[float, ...] | None = None
    eval_dataset: str | None = None
    tokens_seen: int | None = None  # in training: the fit's plus the KL steps'
    untrained_layers: tuple[int, ...] | None = None  # None: not checked

    @property
    def quality(self) -> Quality:
        """The judgement the push warnings and the model card make too (`lens_hub.registry.quality`)."""
        return Quality(
            mean_kl_tuned=self.mean_kl_tuned,
            mean_kl_logit=self.mean_kl_logit,
            eval_dataset=self.eval_dataset,
            tokens_seen=self.tokens_seen,
            untrained_layers=self.untrained_layers,
            num_layers=self.num_layers,
        )

    @property
    def uri(self) -> str:
        """The ``hf://`` location of the lens (pinned to its commit when the registry pins it)."""
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://{prefix}{self.repo_id}{rev}" + (f"/{self.subfolder}" if self.subfolder else "")

    @property
    def mean_kl_tuned(self) -> float | None:
        """Mean over the evaluated layers of the tuned lens's KL (bits per byte), or None."""
        return statistics.fmean(self.kl_tuned) if self.kl_tuned else None

    @property
    def mean_kl_logit(self) -> float | None:
        """Mean over the evaluated layers of the logit lens's KL (bits per byte), or None."""
        return statistics.fmean(self.kl_logit) if self.kl_logit else None

    def to_dict(self) -> dict:
        """The record as plain JSON-ready values (tuples become lists; the means and ``uri`` are included)."""
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        data.update(uri=self.uri, mean_kl_tuned=self.mean_kl_tuned, mean_kl_logit=self.mean_kl_logit)
        data.update(quality=self.quality.summary(), quality_problems=list(self.quality.problems().values()))
        return data

    @classmethod
    def from_entry(cls, entry: RegistryEntry) -> LensRecord:
        """The record of an entry's default version."""
        v: LensVersion = entry.default_version
        ev = v.evaluation
        return cls(
            model=entry.model,
            aliases=tuple(entry.aliases),
            model_type=entry.facts.model_type,
            hidden_size=entry.facts.hidden_size,
            num_layers=entry.facts.num_layers,
            vocab_size=entry.facts.vocab_size,
            version=v.version,
            versions=tuple(x.version for x in entry.lenses),
            format=v.format,
            status=v.status,
            repo_id=v.location.repo_id,
            repo_type=v.location.repo_type,
            subfolder=v.location.subfolder,
            revision=v.location.revision,
            kl_layers=tuple(ev.layers) if ev is not None and ev.layers is not None else None,
            kl_tuned=tuple(ev.tuned.kl) if ev is not None and ev.tuned.kl else None,
            kl_logit=tuple(ev.logit.kl) if ev is not None and ev.logit.kl else None,
            eval_dataset=ev.dataset if ev is not None else None,
            tokens_seen=tokens_seen(v.training),
            untrained_layers=tuple(v.untrained_layers) if v.untrained_layers is not None else None,
        )

    def cells(self) -> tuple[str, ...]:
        """The record's table cells as plain text, in `_COLUMNS` order (``?``: unknown, ``—``: none)."""
        more = f" (+{len(self.versions) - 1})" if len(self.versions) > 1 else ""
        return (
            self.model,
            ", ".join(self.aliases) or "—",
            self.model_type or "?",
            _unknown(self.hidden_size),
            _unknown(self.num_layers),
            _unknown(self.vocab_size),
            f"v{self.version}{more}",
            self.format,
            self.status,
            self.quality.summary(),
            f"{self.tokens_seen:,}" if self.tokens_seen is not None else "?",
        )


def _unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


class LensList(list[LensRecord]):
    """A list of `LensRecord` that shows itself as a table: HTML in notebooks, rich in terminals, or JSON."""

    title = "Lens registry"

    def to_json(self, indent: int | None = 2) -> str:
        """The records as a JSON array of `LensRecord.to_dict` objects."""
        return json.dumps([r.to_dict() for r in self], indent=indent, ensure_ascii=False)

    def _repr_html_(self) -> str:
        """An HTML table; every value is escaped (registry files come from anyone who opens a pull request)."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in _COLUMNS)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell, quote=True)}</td>" for cell in r.cells()) + "</tr>" for r in self
        )
        caption = html.escape(f"{self.title} ({len(self)} models)")
        return f"<table><caption>{caption}</caption><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"

    def __rich__(self) -> Table:
        """A rich table; cells are `rich.text.Text`, so ``[bold]`` in a value is shown, never interpreted."""
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"{self.title} ({len(self)} models)")
        for column in _COLUMNS:
            # fold: a long id wraps onto the next line instead of being cut to '…' in a narrow terminal or a pipe
            numeric = column in ("d", "layers", "vocab", "tokens")
            table.add_column(column, justify="right" if numeric else "left", overflow="fold")
        for record in self:
            table.add_row(*(Text(cell) for cell in record.cells()))
        return table


def _registry(registry: Registry | str | os.PathLike[str] | None) -> Registry:
    return registry if isinstance(registry, Registry) else Registry.load(registry)


def list_pretrained(
    model: str | None = None,
    status: str | None = None,
    architecture: str | None = None,
    registry: Registry | str | os.PathLike[str] | None = None,
) -> LensList:
    """The registry's lenses, one record per base model (its default version), sorted by model id.

    Args:
        model: Keep models whose id or an alias contains this, case-insensitively (``"pythia"``, ``"GPT2"``).
        status: Keep default versions with exactly this status (``verified``, ``unverified``, ``deprecated``).
        architecture: Keep models of exactly this ``model_type`` (``llama``, ``gpt_neox``), case-insensitively.
        registry: A `Registry`, a registry directory, or None for ``$LENS_HUB_REGISTRY`` / the shipped one.

    Raises:
        RegistryError: The registry has an invalid file (every problem is listed).
    """
    reg = _registry(registry)
    needle = model.lower() if model else None
    records = LensList()
    for model_id in sorted(reg.entries, key=str.lower):
        entry = reg.entries[model_id]
        if needle is not None and not any(needle in n.lower() for n in (entry.model, *entry.aliases)):
            continue
        record = LensRecord.from_entry(entry)
        if status is not None and record.status != status:
            continue
        if architecture is not None and (record.model_type or "").lower() != architecture.lower():
            continue
        records.append(record)
    return records


def registry_entry(name: str, registry: Registry | str | os.PathLike[str] | None = None) -> RegistryEntry:
    """The full registry entry a model id or alias names (case-insensitive), with every version.

    Raises:
        LensNotFoundError: Unknown name (with close matches).
        RegistryError: The registry has an invalid file.
    """
    return _registry(registry).get(name)
