"""The lens registry: loading, validating and resolving names.

A registry is a directory of YAML (or JSON) files, one per base model, each a
`lens_hub.registry_schema.RegistryEntry`. Names resolve case-insensitively to an entry by its canonical
model id or one of its aliases; an alias must be unique across the whole registry. The registry shipped with
lens-hub is used unless ``LENS_HUB_REGISTRY`` or an explicit directory says otherwise.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from .errors import LensNotFoundError, RegistryError
from .registry_schema import RegistryEntry

REGISTRY_ENV = "LENS_HUB_REGISTRY"
SUFFIXES = (".yaml", ".yml", ".json")


def default_registry_dir() -> Path:
    """The registry used when none is given: ``$LENS_HUB_REGISTRY``, else the one shipped with lens-hub."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    packaged = Path(__file__).parent / "_registry"  # inside an installed wheel
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "registry"  # a source checkout / editable install


def registry_filename(model_id: str) -> str:
    """The file name of a model's entry: ``org/name`` -> ``org--name.yaml``."""
    return model_id.replace("/", "--") + ".yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def parse_entry_file(path: Path) -> tuple[RegistryEntry | None, list[str]]:
    """Parse and validate one registry file; returns the entry (or None) and located problems."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        return None, [f"{path}: cannot parse: {' '.join(str(exc).split())}"]
    if not isinstance(raw, dict):
        return None, [f"{path}: must hold a mapping (model, aliases, facts, lenses), not {type(raw).__name__}"]
    try:
        entry = RegistryEntry.model_validate(raw)
    except ValidationError as exc:
        return None, [
            f"{path}: {_format_loc(e['loc'])}: {e['msg']} (got {e['input']!r})"
            if e["type"] not in ("missing", "model_type") and not isinstance(e["input"], (dict, list))
            else f"{path}: {_format_loc(e['loc'])}: {e['msg']}"
            for e in exc.errors()
        ]
    problems = []
    if path.stem != registry_filename(entry.model).removesuffix(".yaml"):
        problems.append(f"{path}: model: file for {entry.model!r} must be named {registry_filename(entry.model)}")
    return entry, problems


@dataclass
class Registry:
    """A loaded, validated registry with its name index."""

    directory: Path | None
    entries: dict[str, RegistryEntry] = field(default_factory=dict)  # canonical id -> entry
    files: dict[str, Path] = field(default_factory=dict)  # canonical id -> file
    _index: dict[str, str] = field(default_factory=dict)  # lower-cased id or alias -> canonical id

    @classmethod
    def load(cls, directory: str | os.PathLike[str] | None = None) -> Registry:
        """Load and validate every file of a registry directory.

        Raises:
            RegistryError: If any file is invalid or two entries claim the same name; every problem is listed,
                located by file and field.
        """
        registry, problems = cls.check(directory)
        if problems:
            raise RegistryError(problems)
        return registry

    @classmethod
    def check(cls, directory: str | os.PathLike[str] | None = None) -> tuple[Registry, list[str]]:
        """Load what is valid and collect every problem (what ``lens-hub registry validate`` reports)."""
        root = Path(directory) if directory is not None else default_registry_dir()
        if not root.is_dir():
            return cls(root), [f"{root}: registry directory does not exist"]
        registry, problems = cls(root), []
        for path in sorted(p for p in root.iterdir() if p.suffix in SUFFIXES and p.name != "schema.json"):
            entry, file_problems = parse_entry_file(path)
            problems += file_problems
            if entry is not None:
                problems += registry.add(entry, path)
        return registry, problems

    def add(self, entry: RegistryEntry, path: Path | None = None) -> list[str]:
        """Add an entry to the index; returns the name clashes it would cause (and then does not add it)."""
        clashes = self.clashes(entry, path)
        if entry.model in self.entries:  # the same model in two files
            clashes.insert(
                0,
                f"{path or entry.model}: model: {entry.model!r} is already used by {entry.model} "
                f"({self.files.get(entry.model)})",
            )
        if clashes:
            return clashes
        self.entries[entry.model] = entry
        if path is not None:
            self.files[entry.model] = path
        for name in [entry.model, *entry.aliases]:
            self._index[name.lower()] = entry.model
        return []

    def clashes(self, entry: RegistryEntry, path: Path | None = None) -> list[str]:
        """The names of ``entry`` that another entry already uses (its own current version is ignored)."""
        where = str(path) if path else entry.model
        problems = []
        for i, name in enumerate([entry.model, *entry.aliases]):
            owner = self._index.get(name.lower())
            if owner is not None and owner != entry.model:
                field_name = "model" if i == 0 else f"aliases[{i - 1}]"
                problems.append(f"{where}: {field_name}: {name!r} is already used by {owner} ({self.files.get(owner)})")
        return problems

    def find(self, name: str) -> RegistryEntry | None:
        """The entry a model id or alias names (case-insensitive), or None."""
        canonical = self._index.get(name.lower())
        return self.entries[canonical] if canonical else None

    def names(self) -> list[str]:
        """Every canonical id and alias."""
        return [n for e in self.entries.values() for n in (e.model, *e.aliases)]

    def suggestions(self, name: str, n: int = 3) -> list[str]:
        """Close matches for a misspelt name (a few, not the whole catalogue)."""
        lowered = {x.lower(): x for x in self.names()}
        tail = {x.lower().rsplit("/", 1)[-1]: x for x in self.names()}
        hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
        hits += [tail[t] for t in difflib.get_close_matches(name.lower().rsplit("/", 1)[-1], list(tail), n=n)]
        return list(dict.fromkeys(lowered.get(h, h) for h in hits))[:n]

    def get(self, name: str) -> RegistryEntry:
        """Like `find`, but raises `LensNotFoundError` with suggestions."""
        entry = self.find(name)
        if entry is None:
            close = self.suggestions(name)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise LensNotFoundError(
                f"{name!r} is not in the lens registry ({self.directory}).{hint} "
                "`lens-hub registry list` shows every lens."
            )
        return entry


def dump_entry(entry: RegistryEntry) -> str:
    """The YAML text of a registry entry, in the canonical layout (fields in schema order, defaults omitted)."""
    data = entry.model_dump(mode="json", exclude_defaults=True)
    data = {"schema_version": entry.schema_version, **data}
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)


def entry_text(path: Path, entry: RegistryEntry) -> str:
    """The text of ``entry`` for the file ``path``: JSON for ``.json`` files, the canonical YAML otherwise."""
    if path.suffix == ".json":
        data = {"schema_version": entry.schema_version, **entry.model_dump(mode="json", exclude_defaults=True)}
        return json.dumps(data, indent=2) + "\n"
    return dump_entry(entry)


def write_entry_file(path: str | os.PathLike[str], entry: RegistryEntry) -> Path:
    """Write (or replace) a registry file atomically: a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(entry_text(path, entry), encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_entry(directory: str | os.PathLike[str], entry: RegistryEntry) -> Path:
    """Write (or replace) a model's registry file, named after its model id, in ``directory``; returns its path."""
    return write_entry_file(Path(directory) / registry_filename(entry.model), entry)
