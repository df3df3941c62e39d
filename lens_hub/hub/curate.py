"""Curation: adopt a lens that is already on the Hub into the registry, or pin an unverified entry
(``lens-hub registry add`` / ``lens-hub registry pin``).

Both read the lens exactly as the loader will: the location's revision is resolved to one commit, the files are
listed at that commit, downloaded through the Hugging Face cache (verified against the Hub's ETag) and hashed, and
their contents are parsed with lens-hub's own safe readers: a lens-hub lens's ``lens.safetensors`` must hold
exactly the tensors its ``config.json`` describes (read from the header before any tensor), and a legacy
tuned-lens ``params.pt`` is read only with ``torch.load(weights_only=True)`` through `lens_hub.core.legacy`, its tensor
shapes cross-checked against ``d_model`` / ``num_hidden_layers``. What the registry then records (facts, pinned
commit, size and sha256 of every file) is what was read, never what a config merely claims.

An entry is written ``verified`` only because it is pinned with checksums; facts nobody could establish (the
model type, vocabulary and fingerprint of a legacy lens without ``model=``) stay ``None`` and are reported in
`AdoptResult.notes`. Nothing here prints: the CLI shows what an `AdoptResult` holds.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.config import CONFIG_NAME, WEIGHTS_NAME, LensConfig
from ..core.format import (
    MAX_CONFIG_BYTES,
    declared_shape,
    max_weights_bytes,
    nonfinite_tensors,
    parse_json,
    read_config,
    read_tensors,
    read_text_capped,
)
from ..core.ids import check_version, is_commit, validate_repo_id
from ..core.legacy import LEGACY_PARAMS, convert_legacy
from ..errors import (
    CurateError,
    HubResponseError,
    LensContentError,
    LensFormatError,
    LensHubError,
    LensNotFoundError,
    MissingLensFileError,
    PublishError,
    RegistryError,
)
from ..registry.schema import (
    REQUIRED_FILES,
    HubLocation,
    LensFile,
    LensVersion,
    ModelFacts,
    RegistryEntry,
    build_entry,
    entry_with_version,
)
from ..registry.store import Registry, default_registry_dir, entry_text, registry_filename, write_entry_file
from .files import (
    API_RESPONSE_BYTES,
    HubFile,
    evict,
    fetch_file,
    guarded,
    hub_api,
    hub_errors,
    resolve_commit,
    sha256_of,
)
from .pretrained import choose_version, resolve
from .publish import PushResult, check_license, next_version, push

if TYPE_CHECKING:
    from torch import nn

    from ..core.adapters import ModelParts

FACT_NAMES = ("model_type", "hidden_size", "num_layers", "vocab_size", "revision", "fingerprint")


@dataclass
class AdoptResult:
    """What `adopt` or `pin` did (or, for a dry run, would do) to the registry."""

    entry: RegistryEntry  # the entry after the change
    version: str  # the version added or pinned
    commit: str  # the 40-hex commit the files were read at
    format: str
    registry_file: Path
    diff: str  # unified diff of the registry file ('' when nothing changed)
    notes: list[str] = field(default_factory=list)  # facts left unknown and other remarks, one line each
    written: bool = False
    converted: PushResult | None = None  # the safetensors copy published by ``convert_to``

    @property
    def uri(self) -> str:
        """The ``hf://`` location of the adopted lens, pinned to the commit read."""
        loc = self.entry.get_version(self.version).location  # type: ignore[union-attr]
        prefix = "" if loc.repo_type == "model" else f"{loc.repo_type}s/"
        return f"hf://{prefix}{loc.repo_id}@{self.commit}" + (f"/{loc.subfolder}" if loc.subfolder else "")


@dataclass
class _Inspected:
    """A lens read at one commit: its format, its config (converted for a legacy lens), its file records."""

    format: str
    config: LensConfig
    files: list[LensFile]
    facts: dict[str, object]  # what was established about the base model (None: unknown)
    converted_dir: Path | None  # lens-hub copy of a legacy lens (inside the caller's temporary directory)
    notes: list[str]


# ------------------------------------------------------------------------------------------------ reading


def _join(subfolder: str, name: str) -> str:
    return f"{subfolder}/{name}" if subfolder else name


def _remote_files(
    repo_id: str, repo_type: str, subfolder: str, commit: str, token: str | bool | None
) -> dict[str, int]:
    """Which of the files any lens format uses exist at ``commit`` in the subfolder, with the sizes the Hub announces
    (one request)."""

    names = sorted({n for files in REQUIRED_FILES.values() for n in files})
    where = f"{repo_id}@{commit[:12]}"
    with hub_errors(where), guarded(where, API_RESPONSE_BYTES):
        infos = hub_api().get_paths_info(
            repo_id, [_join(subfolder, n) for n in names], revision=commit, repo_type=repo_type, token=token
        )
    # get_paths_info also answers for folders; a lens file must be a file (it has a size)
    return {i.path.rpartition("/")[2]: int(i.size) for i in infos if isinstance(getattr(i, "size", None), int)}


def _detect_format(present: set[str], where: str) -> str:
    """The lens format the files present imply (lens-hub's safetensors wins over a pickle next to it)."""
    if CONFIG_NAME not in present:
        raise MissingLensFileError(
            f"{where} has no {CONFIG_NAME}: a lens is config.json + lens.safetensors (lens-hub) or config.json + "
            "params.pt (tuned-lens). Check the repo, revision and subfolder (hf://ORG/REPO@REV/SUBFOLDER)."
        )
    if WEIGHTS_NAME in present:
        return "safetensors"
    if LEGACY_PARAMS in present:
        return "tuned-lens-legacy"
    raise MissingLensFileError(
        f"{where} has {CONFIG_NAME} but neither {WEIGHTS_NAME} (lens-hub) nor {LEGACY_PARAMS} (tuned-lens): the "
        "weights are missing. Upload them, or point at the folder that holds them."
    )


def _model_facts(parts: ModelParts) -> dict[str, object]:
    return {"model_type": parts.model_type, "vocab_size": parts.vocab_size, "fingerprint": parts.fingerprint}


def _base_model_id(config_name: str | None, base_model: str | None, where: str) -> str:
    """The Hub id of the base model: ``base_model`` if given, else the lens config's (never a local path)."""
    if base_model is not None:
        try:
            return validate_repo_id(base_model)
        except ValueError as exc:
            raise CurateError(f"--base-model {base_model!r} is not a Hub model id like 'org/name' ({exc}).") from None
    if config_name is None:
        raise CurateError(f"{where} does not name its base model; pass --base-model ORG/NAME (base_model=...).")
    if os.path.isabs(config_name) or config_name.startswith((".", "~")) or "\\" in config_name:
        raise CurateError(
            f"{where}: the lens config names a local path ({config_name!r}) as its base model; pass --base-model "
            "ORG/NAME, the Hub id of the model it was trained on."
        )
    try:
        return validate_repo_id(config_name)
    except ValueError as exc:
        raise CurateError(
            f"{where}: the lens config's base model {config_name!r} is not a Hub model id ({exc}); pass "
            "--base-model ORG/NAME."
        ) from None


def _inspect(
    repo_id: str,
    repo_type: str,
    subfolder: str,
    commit: str,
    workdir: Path,
    *,
    expect_format: str | None,
    base_model: str | None,
    model: nn.Module | None,
    token: str | bool | None,
    recorded: dict[str, int] | None = None,
) -> tuple[_Inspected, str]:
    """Read the lens at ``commit``; returns what was read and the base model id.

    ``recorded``: sizes an entry already records; a file announced or sent larger is refused before it is read.
    """
    recorded = recorded or {}
    where = f"hf://{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}@{commit[:12]}" + (
        f"/{subfolder}" if subfolder else ""
    )
    present = _remote_files(repo_id, repo_type, subfolder, commit, token)
    fmt = expect_format or _detect_format(present, where)
    missing = [n for n in REQUIRED_FILES[fmt] if n not in present]
    if missing:
        raise MissingLensFileError(
            f"{where} lacks {', '.join(missing)}, which a {fmt} lens needs ({', '.join(REQUIRED_FILES[fmt])}); "
            "nothing was written. Upload the file or fix the location."
        )
    # Through the cache (verified against the Hub's ETag), so a later load at this commit needs no download. Each
    # download is bounded: the config by the format's cap, the weights by the shape the config declares.
    config_name, weights_name = REQUIRED_FILES[fmt]
    config_bound = min(MAX_CONFIG_BYTES, recorded.get(config_name, MAX_CONFIG_BYTES))
    local = {
        config_name: _fetch_bounded(repo_id, repo_type, subfolder, commit, config_name, config_bound, present, token)
    }
    try:
        raw = parse_json(read_text_capped(local[config_name], MAX_CONFIG_BYTES))
        if not isinstance(raw, dict):
            raise LensFormatError(f"{CONFIG_NAME} holds a JSON {type(raw).__name__}, not an object")
        bound = max_weights_bytes(*declared_shape(raw, f"{where}/{CONFIG_NAME}"))
    except (LensHubError, ValueError) as exc:
        evict(local[config_name])  # a file that does not parse stays in nobody's cache
        raise LensContentError(f"{where} was not adopted: {exc}") from None
    bound = min(bound, recorded.get(weights_name, bound))
    local[weights_name] = _fetch_bounded(repo_id, repo_type, subfolder, commit, weights_name, bound, present, token)
    try:
        return _read_fetched(local, fmt, where, workdir, base_model=base_model, model=model)
    except LensContentError:
        for path in local.values():
            evict(path)
        raise


def _fetch_bounded(
    repo_id: str,
    repo_type: str,
    subfolder: str,
    commit: str,
    name: str,
    bound: int,
    announced: dict[str, int],
    token: str | bool | None,
) -> Path:
    """Fetch one lens file, refusing it before the download when the Hub announces more than ``bound`` bytes."""
    file = HubFile(repo_id, repo_type, commit, _join(subfolder, name))
    if announced.get(name, 0) > bound:
        raise LensContentError(
            f"{file.url}: the Hub announces {announced[name]:,} bytes, more than the {bound:,} such a file may have; "
            "nothing was downloaded and nothing was adopted."
        )
    try:
        return fetch_file(file, limit=bound, token=token)
    except HubResponseError as exc:
        raise LensContentError(f"{exc} Nothing was adopted.") from None


def _read_fetched(
    local: dict[str, Path],
    fmt: str,
    where: str,
    workdir: Path,
    *,
    base_model: str | None,
    model: nn.Module | None,
) -> tuple[_Inspected, str]:
    """Parse the fetched lens files; a failure is a `LensContentError` (the caller evicts the files)."""
    from ..core.adapters import find_model_parts
    from ..core.compat import check_compatibility

    records = [LensFile(path=n, size=p.stat().st_size, sha256=sha256_of(p)) for n, p in local.items()]
    folder = local[CONFIG_NAME].parent
    parts = find_model_parts(model) if model is not None else None
    notes: list[str] = []
    try:
        if fmt == "safetensors":
            config = read_config(folder)
            tensors = read_tensors(folder, config)  # shapes from the header, against the config, before any read
            bad = nonfinite_tensors(tensors)
            if bad:
                raise LensContentError(f"{where}: {WEIGHTS_NAME} holds non-finite values ({bad[0]}); not adopted.")
            name = _base_model_id(config.base_model, base_model, where)
            if config.base_model is not None and config.base_model != name:
                notes.append(f"the lens config names base model {config.base_model}; it is registered under {name}")
            if parts is not None:
                check_compatibility(config, parts)
            converted = None
        else:
            raw = parse_json(read_text_capped(folder / CONFIG_NAME, MAX_CONFIG_BYTES))
            old_name = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
            name = _base_model_id(old_name if isinstance(old_name, str) else None, base_model, where)
            converted = workdir / "converted"
            # The safe reader: torch.load(weights_only=True), shapes checked against d_model / num_hidden_layers.
            config = convert_legacy(folder, converted, model=model, base_model=name)
    except (LensHubError, ValueError) as exc:
        if isinstance(exc, CurateError):
            raise
        raise LensContentError(f"{where} was not adopted: {exc}") from None
    facts: dict[str, object] = {
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "vocab_size": config.vocab_size,
        # a branch name is no fact about the weights: only a commit is recorded
        "revision": config.base_revision if is_commit(config.base_revision) else None,
        "fingerprint": config.fingerprint,
    }
    if parts is not None:
        facts.update(_model_facts(parts))
    unknown = [k for k in ("model_type", "vocab_size", "fingerprint") if facts[k] is None]
    if unknown:
        notes.append(
            f"unknown: {', '.join(unknown)} (the lens does not record them); pass --model {name} to load the base "
            "model and record them, so that loads check the lens against the model fully"
        )
    return _Inspected(fmt, config, records, facts, converted, notes), name


# ------------------------------------------------------------------------------------------------ registry


def _merged_facts(existing: ModelFacts | None, found: dict[str, object], model_id: str) -> ModelFacts:
    """The entry's facts with what was read filled in; a contradiction of a known fact is refused."""
    known = existing.model_dump() if existing is not None else dict.fromkeys(FACT_NAMES)
    clashes = [
        f"the registry says {k} {known[k]!r} but the lens says {found[k]!r}"
        for k in ("model_type", "hidden_size", "num_layers", "vocab_size")
        if known[k] is not None and found.get(k) is not None and known[k] != found[k]
    ]
    if existing is not None and existing.fingerprint and found.get("fingerprint"):
        from ..core.fingerprint import compare_fingerprints

        clashes += [f"fingerprint: {p}" for p in compare_fingerprints(existing.fingerprint, found["fingerprint"])]
    if clashes:
        raise LensContentError(
            f"the lens does not fit the registry entry of {model_id}; nothing was written:\n"
            + "\n".join(f"  - {c}" for c in clashes)
        )
    merged = {k: known[k] if known[k] is not None else found.get(k) for k in FACT_NAMES}
    return ModelFacts(**{k: v for k, v in merged.items() if v is not None})  # type: ignore[arg-type]


def _diff(path: Path, old: str, new: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/{path.name}" if old else "/dev/null",
            tofile=f"b/{path.name}",
        )
    )


def _write(reg: Registry, entry: RegistryEntry, path: Path, old_text: str, *, dry_run: bool) -> tuple[str, bool]:
    clashes = reg.clashes(entry, path)
    if clashes:
        raise RegistryError(clashes)
    diff = _diff(path, old_text, entry_text(path, entry))
    if not dry_run:
        write_entry_file(path, entry)
    return diff, not dry_run


def _parse_location(location: str) -> tuple[str, str, str, str]:
    """``hf://[spaces/]ORG/REPO[@REV][/SUBFOLDER]`` -> repo_id, repo_type, subfolder, revision (default main)."""
    if not location.startswith("hf://"):
        raise CurateError(f"{location!r} is not a Hub location; write hf://ORG/REPO[@REVISION][/SUBFOLDER].")
    ref = resolve(location)  # lens_hub.hub.pretrained's parser: the same safety checks as loading
    assert ref.repo_id is not None
    return ref.repo_id, ref.repo_type, ref.subfolder, ref.revision or "main"


def _load_model(model: str | nn.Module | None) -> nn.Module | None:
    if model is None or not isinstance(model, str):
        return model
    from ..core.models import load_model

    try:
        return load_model(model)
    except OSError as exc:
        raise CurateError(
            f"could not load --model {model!r}: {exc}. Pass a Hub id or a local model directory."
        ) from None


# ------------------------------------------------------------------------------------------------ adopt / pin


def adopt(
    location: str,
    *,
    base_model: str | None = None,
    model: str | nn.Module | None = None,
    registry: str | os.PathLike[str] | None = None,
    version: str | None = None,
    aliases: Sequence[str] = (),
    license: str | None = None,
    convert_to: str | None = None,
    dry_run: bool = False,
    token: str | bool | None = None,
) -> AdoptResult:
    """Add a lens already on the Hub to the registry as a new, verified version of its base model's entry.

    Args:
        location: ``hf://ORG/REPO[@REVISION][/SUBFOLDER]`` (``hf://spaces/...`` for a Space); a branch or tag is
            resolved to its commit once, and the entry pins that commit.
        base_model: Hub id of the base model, when the lens config names none or a local path (or to replace it).
        model: The base model (a loaded module, or a Hub id / directory to load): its model type, vocabulary and
            fingerprint are recorded and the lens is checked against it. Without it, what the lens does not record
            stays unknown (see `AdoptResult.notes`).
        registry: Registry directory (default: ``$LENS_HUB_REGISTRY`` or the shipped one).
        version: Version ``X.Y.Z`` (default: next patch after the entry's newest, else ``1.0.0``).
        aliases: Extra registry names for the base model.
        license: License id to record.
        convert_to: For a legacy lens: convert it to safetensors and publish it to this repo (`lens_hub.hub.publish`),
            which adds the safe copy as the next, default version.
        dry_run: Compute the entry and the diff; write and publish nothing.
        token: Hub token.

    Raises:
        MissingLensFileError: A file the lens format needs is not at the location.
        LensContentError: The files contradict each other (a config that lies about its tensors), are unsafe,
            or contradict the registry entry.
        CurateError: Bad arguments, or the lens is already registered.
        RegistryError: The registry is, or would become, invalid.
    """
    repo_id, repo_type, subfolder, revision = _parse_location(location)
    wanted = check_version(version)
    try:
        license = check_license(license)
    except PublishError as exc:
        raise CurateError(str(exc)) from None
    if base_model is not None:
        _base_model_id(None, base_model, "--base-model")
    commit = resolve_commit(repo_id, repo_type, revision, token=token)
    loaded = _load_model(model)
    reg = Registry.open_to_write(Path(registry) if registry is not None else default_registry_dir(), "adding to it")
    with tempfile.TemporaryDirectory(prefix="lens-hub-adopt-") as work:
        found, name = _inspect(
            repo_id,
            repo_type,
            subfolder,
            commit,
            Path(work),
            expect_format=None,
            base_model=base_model,
            model=loaded,
            token=token,
        )
        existing = reg.find(name)
        canonical = existing.model if existing is not None else name
        path = reg.files[canonical] if existing is not None else reg.directory / registry_filename(canonical)  # type: ignore[operator]
        old_text = path.read_text(encoding="utf-8") if existing is not None else ""
        versions = [v.version for v in existing.lenses] if existing is not None else []
        for v in existing.lenses if existing is not None else []:
            loc = v.location
            if (loc.repo_id, loc.repo_type, loc.subfolder, loc.revision) == (repo_id, repo_type, subfolder, commit):
                raise CurateError(f"{canonical} v{v.version} ({path}) already pins this lens at {commit[:12]}.")
        chosen = wanted or next_version(versions)
        if chosen in versions:
            raise CurateError(
                f"the registry entry of {canonical} ({path}) already has version {chosen}; pass another --version "
                f"(next: {next_version(versions)})."
            )
        facts = _merged_facts(existing.facts if existing else None, found.facts, canonical)
        new_version = _version_record(found, chosen, repo_id, repo_type, subfolder, commit, license)
        entry = entry_with_version(existing, canonical, facts.model_dump(), new_version, aliases)
        diff, written = _write(reg, entry, path, old_text, dry_run=dry_run)
        result = AdoptResult(entry, chosen, commit, found.format, path, diff, found.notes, written)
        if convert_to is not None:
            result.converted = _convert_and_push(found, convert_to, canonical, path.parent, license, dry_run)
    return result


def _version_record(
    found: _Inspected,
    version: str,
    repo_id: str,
    repo_type: str,
    subfolder: str,
    commit: str,
    license: str | None,
    *,
    default: bool = True,
    notes: str | None = None,
) -> LensVersion:
    location = HubLocation(repo_id=repo_id, repo_type=repo_type, subfolder=subfolder, revision=commit)  # type: ignore[arg-type]
    record = LensVersion(
        version=version,
        default=default,
        format=found.format,  # type: ignore[arg-type]
        status="verified",  # pinned to the commit read, with the size and sha256 of every file
        location=location,
        files=found.files,
        license=license,
        training=found.config.training,
        evaluation=found.config.evaluation,
        notes=notes,
    )
    return record


def pin(
    name: str,
    *,
    version: str | None = None,
    model: str | nn.Module | None = None,
    registry: str | os.PathLike[str] | None = None,
    convert_to: str | None = None,
    dry_run: bool = False,
    token: str | bool | None = None,
) -> AdoptResult:
    """Verify an ``unverified`` registry version against the Hub and mark it verified, pinned with checksums.

    The version's location is resolved to a commit (its recorded revision, else the head of main), its files are
    read as `adopt` reads them, and everything the entry already claims (the facts, any recorded size or sha256)
    must still hold.

    Args:
        name: Model id or alias of the entry.
        version: The version to pin (default: the entry's default).
        model: The base model (module, or Hub id / directory to load), to record its facts and check the lens.
        registry: Registry directory (default: ``$LENS_HUB_REGISTRY`` or the shipped one).
        convert_to: For a legacy lens: also convert and publish it to this repo (see `adopt`).
        dry_run: Compute the entry and the diff; write and publish nothing.
        token: Hub token.

    Raises:
        CurateError: The version is already verified, or deprecated.
        LensContentError: The files no longer match what the entry claims (nothing was written).
        MissingLensFileError: A file is missing at the location.
    """
    reg = Registry.open_to_write(Path(registry) if registry is not None else default_registry_dir(), "adding to it")
    entry = reg.get(name)
    chosen = choose_version(entry, version)
    path = reg.files.get(entry.model) or reg.directory / registry_filename(entry.model)  # type: ignore[operator]
    if chosen.status != "unverified":
        raise CurateError(
            f"{entry.model} v{chosen.version} is {chosen.status}, not unverified: nothing to pin. Check a verified "
            "entry against the Hub with `lens-hub registry audit --remote`."
        )
    loc = chosen.location
    commit = resolve_commit(loc.repo_id, loc.repo_type, loc.revision or "main", token=token)
    loaded = _load_model(model)
    base = entry.model
    with tempfile.TemporaryDirectory(prefix="lens-hub-pin-") as work:
        try:
            found, _ = _inspect(
                loc.repo_id,
                loc.repo_type,
                loc.subfolder,
                commit,
                Path(work),
                expect_format=chosen.format,
                base_model=base,  # the entry names the base model, whatever an old config says
                model=loaded,
                token=token,
                recorded={f.path: f.size for f in chosen.files if f.size is not None},
            )
        except LensNotFoundError as exc:
            raise MissingLensFileError(f"{entry.model} v{chosen.version}: {exc}") from None
        recorded = {f.path: f for f in chosen.files}
        changed = [
            f"{f.path}: {what} {have} at {commit[:12]}, the entry records {want}"
            for f in found.files
            for what, have, want in (
                ("size", f.size, recorded[f.path].size),
                ("sha256", f.sha256, recorded[f.path].sha256),
            )
            if want is not None and have != want
        ]
        if changed:
            raise LensContentError(
                f"{entry.model} v{chosen.version} no longer matches its registry entry ({path}); nothing was "
                "written:\n" + "\n".join(f"  - {c}" for c in changed) + "\nFind out why the files changed; if the "
                "new files are right, add them as a new version with `lens-hub registry add`."
            )
        facts = _merged_facts(entry.facts, found.facts, entry.model)
        pinned = _version_record(
            found,
            chosen.version,
            loc.repo_id,
            loc.repo_type,
            loc.subfolder,
            commit,
            chosen.license,
            default=chosen.default,
            notes=None,  # the old notes said it was unverified
        )
        # what the entry recorded about training or evaluation stays, unless the files record more
        pinned = pinned.model_copy(
            update={
                "training": pinned.training or chosen.training,
                "evaluation": pinned.evaluation or chosen.evaluation,
            }
        )
        lenses = [pinned if v.version == chosen.version else v for v in entry.lenses]
        new_entry = build_entry(entry.model, list(entry.aliases), facts.model_dump(), lenses)
        old_text = path.read_text(encoding="utf-8") if path.is_file() else ""
        diff, written = _write(reg, new_entry, path, old_text, dry_run=dry_run)
        result = AdoptResult(new_entry, chosen.version, commit, found.format, path, diff, found.notes, written)
        if convert_to is not None:
            result.converted = _convert_and_push(found, convert_to, entry.model, path.parent, chosen.license, dry_run)
    return result


def _convert_and_push(
    found: _Inspected, repo_id: str, base_model: str, registry: Path, license: str | None, dry_run: bool
) -> PushResult:
    """Publish the safetensors conversion of a legacy lens (the registry entry gains it as the default)."""
    if found.converted_dir is None:
        raise CurateError(f"--convert-to converts legacy tuned-lens lenses; this one is already {found.format}.")
    # push() validates the converted directory again and writes the registry entry itself
    staged = Path(tempfile.mkdtemp(prefix="lens-hub-convert-"))
    try:
        shutil.copytree(found.converted_dir, staged, dirs_exist_ok=True)
        return push(staged, repo_id, registry=registry, base_model=base_model, license=license, dry_run=dry_run)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
