"""The lens registry: loading, validating and resolving names.

A registry is a directory of YAML (or JSON) files, one per base model, each a
`lens_hub.registry.schema.RegistryEntry`. Names resolve case-insensitively to an entry by its canonical
model id or one of its aliases; an alias must be unique across the whole registry. The registry shipped with
lens-hub is used unless ``LENS_HUB_REGISTRY`` or an explicit directory says otherwise.

Registry files are read as hostile input: a file is at most `MAX_FILE_BYTES`, YAML aliases (``*name``, the
"billion laughs") and duplicate keys are refused, nesting deeper than `lens_hub.core.format.MAX_NESTING` levels is a
located error (never a ``RecursionError``), and every problem is reported for its file while the other files are
still checked. Files are read in case-insensitive name order, so when two files claim the same name (names are
case-insensitive), the one later in that order is blamed, whatever the file system lists first.

A parsed registry is kept per directory (`Registry.check`), keyed on the directory and each of its files' name, size,
modification time, change time and inode: a second ``resolve`` parses nothing, and any edit, added, removed or
replaced file (an atomic rename gives a new inode) is seen at the next call. A file modified in the last
`RACY_SECONDS` is not trusted to its signature (an edit of the same size within the file system's timestamp tick
would leave it unchanged), so a directory just written is parsed at each call until it settles. Each call gets a
registry of its own.
"""

from __future__ import annotations

import difflib
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..core.format import MAX_NESTING, atomic_write, echo_value, nesting_depth, parse_json, read_text_capped
from ..errors import LensNotFoundError, RegistryError
from .schema import RegistryEntry

REGISTRY_ENV = "LENS_HUB_REGISTRY"
SUFFIXES = (".yaml", ".yml", ".json")
# A registry file describes one base model: a few kB, tens of kB per version with per-layer metrics.
MAX_FILE_BYTES = 2**20
# Parsed registries kept (the shipped one, LENS_HUB_REGISTRY, a few of one's own): the least recently used goes.
CACHED_REGISTRIES = 8
# Timestamps are as coarse as a clock tick (ext4), a second (ext3, HFS+) or two (FAT): a file modified this recently
# may change again, same size, without its modification time moving ("racy git").
RACY_SECONDS = 2.0


def default_registry_dir() -> Path:
    """The registry used when none is given: ``$LENS_HUB_REGISTRY``, else the one shipped with lens-hub."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    package = Path(str(resources.files("lens_hub")))
    packaged = package / "_registry"  # inside an installed wheel
    if packaged.is_dir():
        return packaged
    return package.resolve().parent / "registry"  # a source checkout / editable install


def registry_filename(model_id: str) -> str:
    """The file name of a model's entry: ``org/name`` -> ``org--name.yaml``."""
    return model_id.replace("/", "--") + ".yaml"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader for files from strangers.

    It refuses duplicate keys (PyYAML silently keeps the last one), aliases (``*name``: a few lines of them expand
    to billions of nodes for whoever walks the result) and nesting deeper than `MAX_NESTING` (PyYAML composes
    recursively, so deep nesting would end in a ``RecursionError``), each with the line and column.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        """Compose one node, refusing aliases and collections nested more than `MAX_NESTING` deep."""
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in a registry file; write the value out",
                self.peek_event().start_mark,
            )
        collection = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if collection:
            self._depth += 1
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"lists or mappings nest more than {MAX_NESTING} levels deep",
                    self.peek_event().start_mark,
                )
        try:
            return super().compose_node(parent, index)
        finally:
            if collection:
                self._depth -= 1


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str | int | float | bool | None):  # a list or mapping as a key: unhashable
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a plain value, not a {type(key).__name__}", key_node.start_mark
            )
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


def _read_raw(path: Path) -> object:
    """The parsed contents of a registry file (JSON or YAML), read as hostile input.

    Raises:
        ValueError, OSError, UnicodeDecodeError, yaml.YAMLError: Naming what is wrong.
    """
    if path.is_symlink():  # a link could point at any file of the reader's (a token, a key) and echo its content
        raise ValueError("is a symbolic link; a registry holds regular files only (copy the file in instead)")
    if not path.is_file():
        raise ValueError("is not a regular file")
    text = read_text_capped(path, MAX_FILE_BYTES)
    if path.suffix == ".json":
        return parse_json(text)
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except RecursionError:  # not expected (the loader limits nesting), but never a traceback
        raise ValueError(f"lists or mappings nest more than {MAX_NESTING} levels deep") from None
    if nesting_depth(raw) > MAX_NESTING:
        raise ValueError(f"lists or mappings nest more than {MAX_NESTING} levels deep")
    return raw


def parse_entry_file(path: Path) -> tuple[RegistryEntry | None, list[str]]:
    """Parse and validate one registry file; returns the entry (or None) and located problems."""
    try:
        raw = _read_raw(path)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        return None, [f"{path}: cannot parse: {' '.join(str(exc).split())}"]
    if not isinstance(raw, dict):
        return None, [f"{path}: must hold a mapping (model, aliases, facts, lenses), not {type(raw).__name__}"]
    try:
        entry = RegistryEntry.model_validate(raw)
    except ValidationError as exc:
        return None, [
            f"{path}: {_format_loc(e['loc'])}: {e['msg']} (got {echo_value(e['input'])})"
            if e["type"] not in ("missing", "model_type", "extra_forbidden") and not isinstance(e["input"], dict | list)
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

        Name resolution goes through here, and it refuses a registry with any invalid file rather than skipping
        it: the names a broken file claims are unknown, so skipping it could let another entry's alias answer
        for its model (the lens loaded would not be the one the registry's owner declared).

        Raises:
            RegistryError: If any file is invalid or two entries claim the same name; every problem is listed,
                located by file and field.
        """
        registry, problems = cls.check(directory)
        if problems:
            raise RegistryError(problems)
        return registry

    @classmethod
    def open_to_write(cls, directory: str | os.PathLike[str], doing: str) -> Registry:
        """The registry that `lens-hub push` or `registry add` writes into, validated first (a directory that does
        not exist yet is an empty registry).

        Raises:
            RegistryError: The registry has problems (each one located), with ``doing`` in the fix.
        """
        directory = Path(directory)
        if not directory.is_dir():
            return cls(directory)
        registry, problems = cls.check(directory)
        if problems:
            raise RegistryError([*problems, f"fix the registry before {doing} (`lens-hub registry validate`)"])
        return registry

    @classmethod
    def check(cls, directory: str | os.PathLike[str] | None = None) -> tuple[Registry, list[str]]:
        """Load what is valid and collect every problem (what ``lens-hub registry validate`` reports).

        The directory is parsed again only when one of its files changed since the last call (see the module doc);
        the registry returned is a fresh copy each time, so a caller that adds to it changes no other's.
        """
        root = Path(directory) if directory is not None else default_registry_dir()
        if not root.is_dir():
            return cls(root), [f"{root}: registry directory does not exist"]
        # Case-insensitive order (ties by exact name): who claimed a name first must not depend on file-name case.
        names = sorted((p for p in root.iterdir() if p.suffix in SUFFIXES and p.name != "schema.json"), key=_order)
        key = _cache_key(root)
        state, settled = _signature(names)  # taken before parsing: a file changed meanwhile is parsed again next time
        cached = _parsed.get(key, state) if settled else None
        if cached is None:
            registry, problems = cls(root), []
            for path in names:
                entry, file_problems = parse_entry_file(path)
                problems += file_problems
                if entry is not None:
                    problems += registry.add(entry, path)
            cached = (registry, tuple(problems))
            if settled:
                _parsed.put(key, state, cached)
        registry, problems = cached
        return registry._copy(cls, root), list(problems)

    def _copy(self, cls: type[Registry], directory: Path) -> Registry:
        """A registry of the same entries whose index and tables are its own (entries are immutable)."""
        return cls(directory, dict(self.entries), dict(self.files), dict(self._index))

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
                other = self.entries[owner]
                theirs = next(n for n in (other.model, *other.aliases) if n.lower() == name.lower())
                how = f"as {theirs!r}" + ("; names are case-insensitive" if theirs != name else "")
                problems.append(
                    f"{where}: {field_name}: {name!r} is already used by {owner} ({self.files.get(owner)}, {how}); "
                    "rename or remove it here"
                )
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


def _order(path: Path) -> tuple[str, str]:
    return (path.name.casefold(), path.name)


_Signature = tuple[tuple[str, int, int, int, int, int], ...]


def _cache_key(root: Path) -> tuple[str, str]:
    """The directory as given (messages name its files so) and as resolved (the same spelling elsewhere, or a link
    moved, is another directory)."""
    try:
        return str(root), str(root.resolve())
    except OSError:
        return str(root), str(root.absolute())


def _signature(paths: list[Path]) -> tuple[_Signature, bool]:
    """What identifies the contents of a registry's files without reading them: name, size, modification and change
    times, inode and file type of each (``lstat``: a link is itself, and is refused when parsed); and whether they
    have all settled (none modified in the last `RACY_SECONDS`, so the signature will move if they change)."""
    state = []
    settled = True
    racy = time.time_ns() - int(RACY_SECONDS * 1e9)
    for path in paths:
        try:
            st = path.lstat()
        except OSError:  # vanished while listed
            state.append((path.name, -1, -1, -1, -1, -1))
            settled = False
            continue
        state.append((path.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode))
        settled = settled and st.st_mtime_ns < racy  # a write sets both times: the modification time says when
    return tuple(state), settled


class _ParsedRegistries:
    """The last parse of each of a few registry directories, with the signature of its files then."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], tuple[_Signature, tuple[Registry, tuple[str, ...]]]] = OrderedDict()

    def get(self, key: tuple[str, str], state: _Signature) -> tuple[Registry, tuple[str, ...]] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] != state:
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: tuple[str, str], state: _Signature, parsed: tuple[Registry, tuple[str, ...]]) -> None:
        with self._lock:
            self._items[key] = (state, parsed)
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_parsed = _ParsedRegistries(CACHED_REGISTRIES)


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a repeated value out again instead of as an alias, which the registry's loader refuses."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def dump_entry(entry: RegistryEntry) -> str:
    """The YAML text of a registry entry, in the canonical layout (fields in schema order, defaults omitted)."""
    data = entry.model_dump(mode="json", exclude_defaults=True)
    data = {"schema_version": entry.schema_version, **data}
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=110)


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
    text = entry_text(path, entry)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def write_entry(directory: str | os.PathLike[str], entry: RegistryEntry) -> Path:
    """Write (or replace) a model's registry file, named after its model id, in ``directory``; returns its path."""
    return write_entry_file(Path(directory) / registry_filename(entry.model), entry)
