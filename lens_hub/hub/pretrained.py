"""``from_pretrained``: resolve a name to a lens, fetch it through the Hub cache, verify it, load it.

Name rules (ambiguity is refused, never guessed):

* ``hf://org/repo[@revision][/subfolder]`` (``hf://spaces/org/repo...`` for a Space): that Hub location.
* a path starting with ``/``, ``./``, ``../`` or ``~``: that local lens directory.
* otherwise a registry model id or alias (case-insensitive). If a local directory of the same name exists too, the
  name is ambiguous: write ``./name`` or ``hf://...``.
* otherwise an existing local directory, or ``org/repo`` naming a lens repo on the Hub.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

from ..core.config import CONFIG_NAME, WEIGHTS_NAME, LensConfig
from ..core.format import (
    MAX_CONFIG_BYTES,
    declared_shape,
    max_weights_bytes,
    nonfinite_tensors,
    parse_config,
    parse_json,
    read_config,
    read_tensors,
    tensors_from_bytes,
)
from ..core.ids import check_revision, check_subfolder, is_commit, semver_key, validate_repo_id
from ..errors import (
    AmbiguousNameError,
    IncompatibleLensError,
    LensFormatError,
    LensHubError,
    LensNotFoundError,
    NotPinnedError,
    UnknownVersionError,
    UnverifiedLensWarning,
)
from ..registry.schema import REQUIRED_FILES, LensFile, LensVersion, ModelFacts, RegistryEntry
from ..registry.store import Registry
from .files import (
    HubFile,
    evict,
    fetch_file,
    fetch_unverified,
    is_offline,
    read_verified,
    resolve_commit,
    verify_file,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..core.adapters import ArchitectureSpec


_HF_URI = re.compile(
    r"^hf://(?:(?P<type>spaces|datasets|models)/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?(?:/(?P<sub>.+?))?/?$"
)


_HF_FORM = "Write hf://org/repo[@revision][/subfolder]."


@dataclass(frozen=True)
class LensRef:
    """What a name resolved to."""

    kind: Literal["registry", "hub", "local"]
    name: str
    entry: RegistryEntry | None = None
    version: LensVersion | None = None
    repo_id: str | None = None
    repo_type: str = "model"
    subfolder: str = ""
    revision: str | None = None
    path: Path | None = None

    def describe(self) -> str:
        if self.kind == "registry":
            assert self.entry is not None
            assert self.version is not None
            return f"{self.entry.model} lens v{self.version.version}"
        if self.kind == "hub":
            return f"hf://{'' if self.repo_type == 'model' else self.repo_type + 's/'}{self.repo_id}"
        return str(self.path)


def _load_registry(registry: Registry | str | os.PathLike[str] | None) -> Registry:
    return registry if isinstance(registry, Registry) else Registry.load(registry)


def choose_version(entry: RegistryEntry, version: str | None) -> LensVersion:
    """The requested version of an entry's lens, or its default.

    Raises:
        UnknownVersionError: Naming the versions that exist.
    """
    if version is None:
        return entry.default_version
    chosen = entry.get_version(version.removeprefix("v"))
    if chosen is None:
        known = ", ".join(v.version for v in sorted(entry.lenses, key=lambda v: semver_key(v.version)))
        raise UnknownVersionError(f"{entry.model} has no lens version {version!r}; available: {known}.")
    if chosen.status == "deprecated":
        warnings.warn(
            f"{entry.model} lens v{chosen.version} is deprecated; the default is v{entry.default_version.version}.",
            UserWarning,
            stacklevel=3,
        )
    return chosen


def resolve(
    name: str, *, version: str | None = None, registry: Registry | str | os.PathLike[str] | None = None
) -> LensRef:
    """Resolve a lens name by the rules in this module's docstring.

    Raises:
        LensNotFoundError: Unknown name (with close matches from the registry).
        AmbiguousNameError: The name is both a registry name and a local directory.
        UnknownVersionError: ``version`` does not exist for the registry entry.
    """
    if name.startswith("hf://"):
        match = _HF_URI.match(name)
        if not match:
            raise LensNotFoundError(f"{name!r} is not a Hub location; write hf://org/repo[@revision][/subfolder].")
        if version is not None:
            raise UnknownVersionError("versions name registry lenses; for a Hub location pin hf://org/repo@revision")
        repo_type = {"spaces": "space", "datasets": "dataset"}.get(match["type"] or "", "model")
        # A tag with a slash (``sub/v1.0.0``) is written percent-encoded: hf://org/repo@sub%2Fv1.0.0/sub
        revision = unquote(match["rev"]) if match["rev"] else None
        # The revision and subfolder become parts of request URLs and of cache paths (refs/<revision>): a '..'
        # there would leave the repository, so both are checked before any request or file access.
        try:
            validate_repo_id(match["repo"])
            if revision is not None:
                check_revision(revision)
        except ValueError as exc:
            raise LensNotFoundError(f"{name!r} is not a safe Hub location: {exc}. {_HF_FORM}") from None
        try:
            subfolder = check_subfolder(match["sub"] or "")
        except ValueError as exc:
            raise LensNotFoundError(
                f"{name!r} is not a safe Hub location: subfolder {match['sub']!r} {exc}. {_HF_FORM}"
            ) from None
        return LensRef("hub", name, repo_id=match["repo"], repo_type=repo_type, subfolder=subfolder, revision=revision)
    if name.startswith(("/", "./", "../", "~")) or name in (".", ".."):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise LensNotFoundError(f"{path} is not a directory (a lens directory holds {CONFIG_NAME}).")
        return LensRef("local", name, path=path)

    reg = _load_registry(registry)
    entry = reg.find(name)
    local = Path(name)
    if entry is not None and local.is_dir():
        raise AmbiguousNameError(
            f"{name!r} is both a registry name ({entry.model}) and a local directory. Write ./{name} for the "
            f"directory, or {entry.model!r} for the registry lens."
        )
    if entry is not None:
        chosen = choose_version(entry, version)
        loc = chosen.location
        return LensRef(
            "registry",
            name,
            entry=entry,
            version=chosen,
            repo_id=loc.repo_id,
            repo_type=loc.repo_type,
            subfolder=loc.subfolder,
            revision=loc.revision,
        )
    if local.is_dir():
        return LensRef("local", name, path=local)
    if "/" in name:
        try:
            validate_repo_id(name)
        except ValueError:
            pass
        else:
            if version is not None:
                raise UnknownVersionError(
                    f"{name!r} is not in the registry, so it has no versions; "
                    f"pin a revision with hf://{name}@REVISION instead."
                )
            return LensRef("hub", name, repo_id=name)
    reg.get(name)  # raises LensNotFoundError with suggestions
    raise AssertionError("unreachable")


def _join(subfolder: str, path: str) -> str:
    return f"{subfolder}/{path}" if subfolder else path


def _hub_file(ref: LensRef, revision: str, record: LensFile) -> HubFile:
    """The Hub file of a registry record, at ``revision`` in the ref's subfolder."""
    assert ref.repo_id is not None
    return HubFile(ref.repo_id, ref.repo_type, revision, _join(ref.subfolder, record.path), record.size, record.sha256)


def _check_shape_against_facts(shape: tuple[int, int], facts: ModelFacts | None, ref: LensRef) -> None:
    """Refuse a config whose declared shape contradicts the registry's facts, before its weights are downloaded."""
    if facts is None:
        return
    lines = [
        f"the registry says {name} {known} but the lens's {CONFIG_NAME} declares {value}"
        for name, value, known in (
            ("hidden_size", shape[0], facts.hidden_size),
            ("num_layers", shape[1], facts.num_layers),
        )
        if known is not None and value != known
    ]
    if lines:
        raise IncompatibleLensError(
            lines, hint=f"{ref.describe()}: the files contradict the registry entry; nothing more was downloaded."
        )


def _convert_into(folder: Path, base_model: str | None, facts: ModelFacts | None) -> Path:
    """Convert a verified legacy lens into a new private temporary directory (a fresh one per load).

    Nothing converted is cached: a planted converted copy can never be picked up, and loads in parallel never
    share a directory. Converting costs one ``torch.load`` of the verified ``params.pt``.
    """
    from ..core.legacy import convert_legacy

    known = (
        facts.model_dump(include={"model_type", "vocab_size", "fingerprint", "hidden_size", "num_layers"})
        if facts
        else None
    )
    target = Path(tempfile.mkdtemp(prefix="lens-hub-converted-"))
    try:
        convert_legacy(folder, target, base_model=base_model, known_facts=known)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


@dataclass(frozen=True)
class FetchOptions:
    """How files are fetched (the usual huggingface_hub knobs, plus lens-hub's pinning policy)."""

    cache_dir: str | os.PathLike[str] | None = None
    token: str | bool | None = None
    local_files_only: bool = False
    pinned_only: bool = False


@dataclass(frozen=True)
class _Pending:
    """A file in the Hub cache not hashed yet: `read_verified` reads it once and hashes the bytes it returns."""

    path: Path
    file: HubFile
    limit: int  # the most bytes it may have when no size is recorded

    def read(self) -> bytes:
        return read_verified(self.path, self.file, limit=self.limit)


@dataclass(frozen=True)
class _Fetched:
    """A fetched lens: its lens-hub directory, the files taken from the Hub cache, and lens-hub's converted copy.

    A lens in lens-hub's format from the Hub comes with its config's bytes, as read and verified while fetching
    (never read again), and its weights still to be read and verified (once, when they are loaded).
    """

    folder: Path
    downloaded: tuple[Path, ...] = ()  # snapshot paths in the huggingface_hub cache (empty for a local lens)
    converted: Path | None = None  # a legacy lens's conversion, in a temporary directory of its own
    config: bytes | None = None  # the verified bytes of config.json, for a lens-hub lens from the Hub
    weights: _Pending | None = None  # its lens.safetensors, verified as it is read


def _removal_note(fetched: _Fetched, bad: list[Path]) -> str:
    """Remove ``bad`` (downloaded files that failed to parse) and any converted copy; say what was removed.

    A file that fails to parse after download may have been damaged in transit, or may be bad on the Hub: either
    way no later call may use it, and a retry downloads it afresh.
    """
    for path in bad:
        evict(path)
    if fetched.converted is not None:
        shutil.rmtree(fetched.converted, ignore_errors=True)
    if not bad:
        return ""
    names = ", ".join(p.name for p in bad)
    return (
        f" The downloaded file{'s' if len(bad) > 1 else ''} ({names}) may have been corrupted and "
        f"{'were' if len(bad) > 1 else 'was'} removed from the cache; retry (if it fails again, the file on the Hub "
        "is bad: report it)."
    )


def _required_files(ref: LensRef) -> list[LensFile]:
    """The file records of exactly the files the version's format is loaded from, in the format's order.

    The lens is read from these names at the root of the location's subfolder, whatever else the entry lists and
    in whatever order, so an entry cannot make the loader take another folder's files.

    Raises:
        LensFormatError: A required file is not listed, or is listed twice (naming the entry and the fix).
    """
    assert ref.version is not None
    assert ref.entry is not None
    version = ref.version
    required = REQUIRED_FILES[version.format]
    where = f"registry entry {ref.entry.model} lens v{version.version}"
    chosen = []
    for name in required:
        records = [f for f in version.files if f.path == name]
        if len(records) != 1:
            problem = "does not list" if not records else "lists twice"
            raise LensFormatError(
                f"{where} {problem} {name}: a {version.format} lens is loaded from exactly {list(required)} at the "
                f"root of its location ({ref.describe()}{'/' + ref.subfolder if ref.subfolder else ''}). Fix the "
                "entry's files (`lens-hub registry validate` checks it)."
            )
        chosen.append(records[0])
    return chosen


def _fetch_config(file: HubFile, kw: dict) -> tuple[Path, bytes]:
    """Download (or find in the cache) a ``config.json``; its path and its bytes, read once and verified."""
    path = fetch_unverified(file, limit=MAX_CONFIG_BYTES, **kw)
    return path, read_verified(path, file, limit=MAX_CONFIG_BYTES)


def _read_hub_config(data: bytes, path: Path, ref: LensRef) -> dict:
    """The JSON of a downloaded ``config.json`` (its verified bytes); a file that does not parse is evicted.

    Raises:
        LensFormatError: Not UTF-8 JSON (the file was removed from the cache).
        LensNotFoundError: Valid JSON but not an object (no lens config).
    """
    try:
        # The same caps as any lens config (size, nesting, duplicate keys): the file is a stranger's.
        if len(data) > MAX_CONFIG_BYTES:
            raise ValueError(f"is {len(data):,} bytes, more than the {MAX_CONFIG_BYTES:,} bytes such a file may have")
        raw = parse_json(data.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        evict(path)
        raise LensFormatError(
            f"{ref.describe()}: the downloaded {CONFIG_NAME} is not a lens config ({exc}). The downloaded file may "
            "have been corrupted and was removed from the cache; retry (if it fails again, the file on the Hub is "
            "bad: report it)."
        ) from None
    if not isinstance(raw, dict):
        raise LensNotFoundError(f"{ref.describe()} holds no lens: its {CONFIG_NAME} is not a JSON object.")
    return raw


def fetch(ref: LensRef, options: FetchOptions | None = None) -> Path:
    """Make the lens available locally in the lens-hub format; returns its directory.

    Registry lenses are fetched at their pinned commit and verified (size + sha256); legacy lenses are then
    converted into a new temporary directory (the caller's to delete). Hub locations are resolved to one commit
    first so all files agree.

    The files are verified on disk here, so whoever reads them afterwards reads them again; `download` reads each
    file once and checks the very bytes it parses.
    """
    fetched = _fetch(ref, options or FetchOptions())
    if fetched.weights is not None:
        verify_file(fetched.weights.path, fetched.weights.file)
    return fetched.folder


def _fetch(ref: LensRef, opts: FetchOptions) -> _Fetched:
    """`fetch`, also returning which cached files the lens came from (to evict them if they turn out bad)."""
    kw = dict(cache_dir=opts.cache_dir, token=opts.token, local_files_only=opts.local_files_only)
    online = not (opts.local_files_only or is_offline())
    if ref.kind == "local":
        assert ref.path is not None
        return _Fetched(ref.path)
    assert ref.repo_id is not None
    if ref.kind == "registry":
        assert ref.version is not None
        assert ref.entry is not None
        version = ref.version
        revision = version.location.revision
        if revision is None or version.status == "unverified":
            if revision is None and opts.pinned_only:
                raise NotPinnedError(
                    f"{ref.describe()} is not pinned to a commit, and pinned-only loading was "
                    "requested (pinned_only=True / --pinned-only)."
                )
            warnings.warn(
                f"{ref.describe()} is unverified: nobody has checked its files against a pinned commit and "
                f"checksums{'' if revision else '; it is fetched from main'}. It is read only with "
                "torch.load(weights_only=True) and checked against the registry's facts.",
                UnverifiedLensWarning,
                stacklevel=4,
            )
        records = _required_files(ref)
        if revision is None and online:  # one commit for all files, even if main moves while they download
            revision = resolve_commit(ref.repo_id, ref.repo_type, "main", token=opts.token)
        config_record, weights_record = records
        config_path, config = _fetch_config(_hub_file(ref, revision or "main", config_record), kw)
        # The declared shape bounds the weights' download, and must agree with the entry before it starts.
        shape = declared_shape(_read_hub_config(config, config_path, ref), f"{ref.describe()} {CONFIG_NAME}")
        _check_shape_against_facts(shape, ref.entry.facts, ref)
        weights_file, bound = _hub_file(ref, revision or "main", weights_record), max_weights_bytes(*shape)
        legacy = version.format == "tuned-lens-legacy"
        # A legacy params.pt is converted from the file, so it is hashed on disk first; lens-hub's weights are
        # hashed as they are read for loading (once).
        weights = (fetch_file if legacy else fetch_unverified)(weights_file, limit=bound, **kw)
        local = (config_path, weights)
        folder = config_path.parent
        if weights.parent != folder:
            raise LensFormatError(
                f"{ref.describe()}: the files came from different snapshots ({', '.join(str(p) for p in local)}); "
                "the branch moved while downloading. Retry."
            )
        if legacy:
            return _convert_fetched(_Fetched(folder, local), ref.entry.model, ref.entry.facts)
        return _Fetched(folder, local, config=config, weights=_Pending(weights, weights_file, bound))

    # An explicit Hub location: pin one commit, then fetch config.json and whichever weights it calls for.
    if opts.pinned_only and not is_commit(ref.revision):
        raise NotPinnedError(f"{ref.describe()} names no commit; write hf://{ref.repo_id}@<40-hex commit>.")
    revision = ref.revision or "main"
    if online:
        revision = resolve_commit(ref.repo_id, ref.repo_type, revision, token=opts.token)
    config_file = HubFile(ref.repo_id, ref.repo_type, revision, _join(ref.subfolder, CONFIG_NAME))
    config_path, config = _fetch_config(config_file, kw)
    raw = _read_hub_config(config, config_path, ref)
    if "schema_version" in raw or "d_model" in raw:
        bound = max_weights_bytes(*declared_shape(raw, f"{ref.describe()} {CONFIG_NAME}"))
    if "schema_version" in raw:
        weights_file = HubFile(ref.repo_id, ref.repo_type, revision, _join(ref.subfolder, WEIGHTS_NAME))
        weights = fetch_unverified(weights_file, limit=bound, **kw)  # hashed as it is read for loading (once)
        pending = _Pending(weights, weights_file, bound)
        return _Fetched(config_path.parent, (config_path, weights), config=config, weights=pending)
    if "d_model" in raw:
        warnings.warn(
            f"{ref.describe()} is an old tuned-lens lens; it is read with torch.load(weights_only=True) and converted.",
            UnverifiedLensWarning,
            stacklevel=4,
        )
        params_file = HubFile(ref.repo_id, ref.repo_type, revision, _join(ref.subfolder, "params.pt"))
        params = fetch_file(params_file, limit=bound, **kw)
        return _convert_fetched(_Fetched(config_path.parent, (config_path, params)), None, None)
    raise LensNotFoundError(
        f"{ref.describe()} holds no lens: its {CONFIG_NAME} is not a lens config (is it a model "
        "repo? lenses are listed by `lens-hub registry list`)."
    )


def _convert_fetched(fetched: _Fetched, base_model: str | None, facts: ModelFacts | None) -> _Fetched:
    """Convert a downloaded legacy lens into a temporary directory; the lens is then read from the converted copy.

    Raises:
        LegacyFormatError: The old files do not parse (they are removed from the cache, so a retry refetches).
    """
    try:
        folder = _convert_into(fetched.folder, base_model, facts)
    except LensFormatError as exc:  # LegacyFormatError included: a damaged download must not stay cached
        raise type(exc)(f"{exc}{_removal_note(fetched, list(fetched.downloaded))}") from None
    return _Fetched(folder, fetched.downloaded, folder)


def _check_lens_files(fetched: _Fetched) -> tuple[LensConfig, dict[str, torch.Tensor]]:
    """Parse the fetched lens's config and tensors before any lens is built; refuse non-finite weights.

    Each file is read once: the config's bytes were read and verified while fetching; the weights of a lens from the
    Hub are read here, hashed, and parsed from the same bytes, and the tensors returned (views of those bytes) are
    the ones checked for NaN and inf, and the ones the lens is built from. A file from the Hub cache that fails is
    evicted (with lens-hub's converted copy, for a legacy lens), so no later call trusts it; a local directory is
    never touched.

    Raises:
        ChecksumMismatchError: The weights read differ from their record or the Hub's ETag (they were evicted).
        LensFormatError: The config or the tensors do not parse, do not match, or hold NaN / inf.
    """
    folder = fetched.folder
    cached = {p.name: p for p in fetched.downloaded}

    def culprits(name: str) -> list[Path]:
        """The cached files to blame when ``name`` fails (none for a local directory)."""
        if fetched.converted is not None:  # a converted legacy lens: both downloaded originals
            return list(fetched.downloaded)
        return [cached[name]] if name in cached else []

    try:
        config = read_config(folder) if fetched.config is None else parse_config(fetched.config, folder / CONFIG_NAME)
    except LensFormatError as exc:
        raise LensFormatError(f"{exc}{_removal_note(fetched, culprits(CONFIG_NAME))}") from None
    data = fetched.weights.read() if fetched.weights is not None else None  # evicted if it fails its checksum
    try:
        if data is None:  # a local directory, or a legacy lens's fresh conversion: read once here
            tensors = read_tensors(folder, config)
        else:
            tensors = tensors_from_bytes(data, config, folder / WEIGHTS_NAME)  # views of the bytes verified
    except LensFormatError as exc:
        raise LensFormatError(f"{exc}{_removal_note(fetched, culprits(WEIGHTS_NAME))}") from None
    nonfinite = nonfinite_tensors(tensors)
    if nonfinite:
        more = f" (and {len(nonfinite) - 1} more tensors)" if len(nonfinite) > 1 else ""
        raise LensFormatError(
            f"{folder / WEIGHTS_NAME}: tensor {nonfinite[0]} holds non-finite values{more}; a lens with NaN or "
            "infinite weights gives NaN predictions, so it is not loaded. Retrain it, or report it if it was "
            f"published.{_removal_note(fetched, culprits(WEIGHTS_NAME))}"
        )
    return config, tensors


def check_entry_fits_model(
    entry: RegistryEntry,
    model: nn.Module,
    *,
    allow_mismatch: bool = False,
    architecture: ArchitectureSpec | None = None,
) -> None:
    """Refuse a registry lens whose recorded facts already rule out ``model``, before anything is downloaded.

    The same rules as loading (`lens_hub.core.compat`): a hidden size or layer count that differs always refuses; a
    model type, vocabulary size or fingerprint that differs refuses unless ``allow_mismatch`` (the load then
    warns). Facts the entry does not record are not compared.

    Raises:
        IncompatibleLensError: Naming each differing fact with both values; no request was made.
    """
    from ..core.adapters import find_model_parts
    from ..core.compat import find_mismatches

    structural, other = find_mismatches(entry.facts, find_model_parts(model, architecture))
    if structural or (other and not allow_mismatch):
        hint = f"The registry's lens is for {entry.model}; nothing was downloaded. Load it with that model"
        if not structural:
            hint += ", or pass allow_mismatch=True (--allow-mismatch on the command line) if the difference is harmless"
        hint += "."
        raise IncompatibleLensError(structural + other, hint=hint)


def check_against_entry(config: LensConfig, facts: ModelFacts, model_id: str) -> None:
    """Refuse a lens file that contradicts its registry entry (an integrity failure, never overridable)."""
    lines = facts.contradictions(config)
    if lines:
        raise IncompatibleLensError(
            lines,
            hint=f"The lens artifact contradicts the registry entry of {model_id}; it "
            "was not loaded. Report it, or audit with `lens-hub registry audit`.",
        )


@dataclass(frozen=True)
class Downloaded:
    """A fetched, verified lens.

    Attributes:
        ref: What the name resolved to.
        folder: The lens in lens-hub's format: the Hub cache's snapshot, a local directory, or, for a legacy lens,
            a fresh conversion in a temporary directory (``temporary``), which the caller should delete when done.
        config: Its parsed config.
        source: Where the files came from (the Hub cache's snapshot folder, or the local directory).
        temporary: ``folder`` is a temporary conversion.
        tensors: The lens's tensors, checked against ``config`` and for NaN / inf: parsed from the very bytes that
            were verified, so a lens built from them is the verified one (reading ``folder`` again would not be).
    """

    ref: LensRef
    folder: Path
    config: LensConfig
    source: Path
    temporary: bool = False
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def cleanup(self) -> None:
        """Delete a temporary conversion (nothing else)."""
        if self.temporary:
            shutil.rmtree(self.folder, ignore_errors=True)


def download(
    name: str,
    *,
    version: str | None = None,
    registry: Registry | str | os.PathLike[str] | None = None,
    options: FetchOptions | None = None,
    ref: LensRef | None = None,
) -> Downloaded:
    """Resolve, fetch and verify a lens without loading a model.

    ``ref``: an already resolved ``name`` (`resolve`), so a caller that checked it first does not resolve twice.

    Besides the checksums, the config and every tensor are parsed here, before any lens is built: a downloaded file
    that does not parse is removed from the cache (a retry downloads it again), and a lens holding NaN or infinite
    weights is refused. Downloads are bounded by the recorded sizes, or by the config's declared shape. Each file is
    read once, for its checksum and its parsing alike, even from the cache (which is never trusted); the tensors are
    returned (``Downloaded.tensors``) so that a lens is built from exactly what was checked.

    Raises:
        LensFormatError: The files do not parse, do not match each other, or hold non-finite weights.
        HubResponseError: The Hub's answers break a bound or a format (nothing of them is kept).
    """
    ref = resolve(name, version=version, registry=registry) if ref is None else ref
    fetched = _fetch(ref, options or FetchOptions())
    config, tensors = _check_lens_files(fetched)
    done = Downloaded(
        ref,
        fetched.folder,
        config,
        fetched.downloaded[0].parent if fetched.downloaded else fetched.folder,
        temporary=fetched.converted is not None,
        tensors=tensors,
    )
    try:
        if ref.entry is not None:
            check_against_entry(done.config, ref.entry.facts, ref.entry.model)
    except BaseException:
        done.cleanup()
        raise
    return done


def load_base_model(ref: LensRef, config: LensConfig, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Load the base model a fetched lens names (the registry's id and revision first, else the lens config's)."""
    base = ref.entry.model if ref.entry else config.base_model
    if base is None:
        raise LensFormatError(f"{ref.describe()} does not name its base model; pass model=... explicitly.")
    revision = (ref.entry.facts.revision if ref.entry else None) or config.base_revision
    from ..core.models import load_model

    try:
        return load_model(base, revision=revision, dtype=dtype)
    except OSError as exc:
        raise LensHubError(
            f"could not load the base model {base!r} for {ref.describe()}: {exc}. Load it yourself and pass model=..."
        ) from None


def entry_for_model(model: nn.Module, registry: Registry | str | os.PathLike[str] | None = None) -> RegistryEntry:
    """The registry entry of the model's own Hub id (its config's ``_name_or_path``).

    Raises:
        LensNotFoundError: The model records no id, or no lens is registered for it (with close matches).
    """
    name = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if not name:
        raise LensNotFoundError("the model does not record the id it was loaded from; use from_pretrained(name).")
    return _load_registry(registry).get(str(name))
