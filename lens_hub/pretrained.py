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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

from .config import CONFIG_NAME, WEIGHTS_NAME, LensConfig
from .errors import (
    AmbiguousNameError,
    IncompatibleLensError,
    LensFormatError,
    LensHubError,
    LensNotFoundError,
    NotPinnedError,
    UnknownVersionError,
    UnverifiedLensWarning,
)
from .format import read_config
from .hub import HubFile, commit_of, fetch_file, is_offline, resolve_commit
from .ids import is_commit, semver_key, validate_repo_id
from .registry import Registry
from .registry_schema import LensVersion, ModelFacts, RegistryEntry

if TYPE_CHECKING:
    import torch
    from torch import nn


_HF_URI = re.compile(
    r"^hf://(?:(?P<type>spaces|datasets|models)/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?(?:/(?P<sub>.+?))?/?$"
)


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
        return LensRef(
            "hub", name, repo_id=match["repo"], repo_type=repo_type, subfolder=match["sub"] or "", revision=revision
        )
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


def converted_cache_dir(repo_type: str, repo_id: str, commit: str, subfolder: str) -> Path:
    """Where a legacy lens fetched at ``commit`` is kept after conversion to the lens-hub format."""
    from .models import cache_dir

    return cache_dir() / "converted" / f"{repo_type}s--{repo_id.replace('/', '--')}" / commit / (subfolder or "_root")


def _convert_into_cache(folder: Path, target: Path, base_model: str | None, facts: ModelFacts | None) -> Path:
    from .legacy import convert_legacy

    if (target / CONFIG_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    known = facts.model_dump(include={"model_type", "vocab_size", "fingerprint"}) if facts else None
    try:
        convert_legacy(folder, tmp, base_model=base_model, known_facts=known)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class FetchOptions:
    """How files are fetched (the usual huggingface_hub knobs, plus lens-hub's pinning policy)."""

    cache_dir: str | os.PathLike[str] | None = None
    token: str | bool | None = None
    local_files_only: bool = False
    pinned_only: bool = False


def fetch(ref: LensRef, options: FetchOptions | None = None) -> Path:
    """Make the lens available locally in the lens-hub format; returns its directory.

    Registry lenses are fetched at their pinned commit and verified (size + sha256); legacy lenses are then
    converted once into lens-hub's cache. Hub locations are resolved to one commit first so all files agree.
    """
    opts = options or FetchOptions()
    kw = dict(cache_dir=opts.cache_dir, token=opts.token, local_files_only=opts.local_files_only)
    if ref.kind == "local":
        assert ref.path is not None
        return ref.path
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
        files = [
            HubFile(ref.repo_id, ref.repo_type, revision or "main", _join(ref.subfolder, f.path), f.size, f.sha256)
            for f in version.files
        ]
        local = [fetch_file(f, **kw) for f in files]
        folder = local[0].parent
        if version.format == "tuned-lens-legacy":
            commit = commit_of(local[0]) or (revision or "main")
            target = converted_cache_dir(ref.repo_type, ref.repo_id, commit, ref.subfolder)
            return _convert_into_cache(folder, target, ref.entry.model, ref.entry.facts)
        return folder

    # An explicit Hub location: pin one commit, then fetch config.json and whichever weights it calls for.
    if opts.pinned_only and not is_commit(ref.revision):
        raise NotPinnedError(f"{ref.describe()} names no commit; write hf://{ref.repo_id}@<40-hex commit>.")
    revision = ref.revision or "main"
    if not (opts.local_files_only or is_offline()):
        revision = resolve_commit(ref.repo_id, ref.repo_type, revision, token=opts.token)
    config_path = fetch_file(HubFile(ref.repo_id, ref.repo_type, revision, _join(ref.subfolder, CONFIG_NAME)), **kw)
    raw = config_path.read_text(encoding="utf-8")
    if '"schema_version"' in raw:
        fetch_file(HubFile(ref.repo_id, ref.repo_type, revision, _join(ref.subfolder, WEIGHTS_NAME)), **kw)
        return config_path.parent
    if '"d_model"' in raw:
        warnings.warn(
            f"{ref.describe()} is an old tuned-lens lens; it is read with torch.load(weights_only=True) and converted.",
            UnverifiedLensWarning,
            stacklevel=4,
        )
        fetch_file(HubFile(ref.repo_id, ref.repo_type, revision, _join(ref.subfolder, "params.pt")), **kw)
        commit = commit_of(config_path) or revision
        target = converted_cache_dir(ref.repo_type, ref.repo_id, commit, ref.subfolder)
        return _convert_into_cache(config_path.parent, target, None, None)
    raise LensNotFoundError(
        f"{ref.describe()} holds no lens: its {CONFIG_NAME} is not a lens config (is it a model "
        "repo? lenses are listed by `lens-hub registry list`)."
    )


def check_against_entry(config: LensConfig, facts: ModelFacts, model_id: str) -> None:
    """Refuse a lens file that contradicts its registry entry (an integrity failure, never overridable)."""
    lines = facts.contradictions(config)
    if lines:
        raise IncompatibleLensError(
            lines,
            hint=f"The lens artifact contradicts the registry entry of {model_id}; it "
            "was not loaded. Report it, or audit with `lens-hub registry audit`.",
        )


def download(
    name: str,
    *,
    version: str | None = None,
    registry: Registry | str | os.PathLike[str] | None = None,
    options: FetchOptions | None = None,
) -> tuple[LensRef, Path, LensConfig]:
    """Resolve, fetch and verify a lens without loading a model; returns the ref, local directory and config."""
    ref = resolve(name, version=version, registry=registry)
    folder = fetch(ref, options)
    config = read_config(folder)
    if ref.entry is not None:
        check_against_entry(config, ref.entry.facts, ref.entry.model)
    return ref, folder, config


def load_base_model(ref: LensRef, config: LensConfig, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Load the base model a fetched lens names (the registry's id and revision first, else the lens config's)."""
    base = ref.entry.model if ref.entry else config.base_model
    if base is None:
        raise LensFormatError(f"{ref.describe()} does not name its base model; pass model=... explicitly.")
    revision = (ref.entry.facts.revision if ref.entry else None) or config.base_revision
    from .models import load_model

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
