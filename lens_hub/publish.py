"""Publish a lens to the Hugging Face Hub: one commit, one tag, one registry update (``lens-hub push``).

What `push` does, in order, refusing before anything is uploaded whenever it can:

1. validates the lens directory (config and tensors) and the base model id (a config made from a local path
   needs ``base_model=``, which is then written into the uploaded ``config.json``);
2. checks the token (``whoami``) and that it may write to the repo's namespace;
3. reads the repo's tags and branch head, picks the version (next patch after the newest ``v*`` tag of the
   subfolder, else ``1.0.0``) and refuses one whose tag or registry version already exists;
4. checks the lens against the registry entry of its base model and validates the updated entry (with the
   registry's own loader, in a scratch copy of the registry);
5. creates the repo if needed and commits ``config.json``, ``lens.safetensors``, the model card ``README.md`` and
   ``eval.png`` (when the config holds metrics) in ONE commit whose parent is the head read in step 3: if anyone
   moved the branch meanwhile the Hub answers 412 and `ConcurrentUpdateError` is raised (nothing retried);
6. tags the commit ``v{version}`` (``{subfolder}/v{version}``) and writes the registry entry, pinned to the
   commit, with the size and sha256 of ``config.json`` and ``lens.safetensors``.

``dry_run=True`` does steps 1-4 (reads only) and reports the rest.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .card import CARD_NAME, PLOT_NAME, CardInfo, build_card, has_metrics
from .config import CONFIG_NAME, WEIGHTS_NAME, LensConfig, validate_repo_id
from .errors import LensHubError, RegistryError
from .format import read_config, read_tensors
from .hub import hub_errors, sha256_of
from .registry import SUFFIXES, Registry, default_registry_dir, dump_entry, registry_filename
from .registry_schema import RegistryEntry, semver_key

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_BRANCH = "main"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_PLACEHOLDER = "0" * 40  # stands for the commit in entries validated before the commit exists
_LOGIN_HINT = "run `hf auth login` or set HF_TOKEN to a token with write access"


class PublishError(LensHubError):
    """A lens could not be published (invalid input, registry conflict, or a Hub failure while publishing)."""


class VersionExistsError(PublishError):
    """The version (its tag on the Hub or its entry in the registry) already exists; nothing was uploaded."""


class ConcurrentUpdateError(PublishError):
    """The branch moved between reading its head and committing (HTTP 412); nothing was committed."""


class AuthenticationError(PublishError):
    """No token, or a token the Hub rejects or that may not write to the repo's namespace."""


@dataclass(frozen=True)
class PlannedFile:
    """One file of the commit."""

    path_in_repo: str
    size: int
    source: Path


@dataclass
class PushResult:
    """What `push` did (or, with ``dry_run``, would do)."""

    repo_id: str
    commit: str | None  # 40-hex commit of the upload (None for a dry run)
    tag: str
    version: str
    registry_file: Path
    card: str
    diff: str
    files: list[PlannedFile] = field(default_factory=list)
    subfolder: str = ""
    parent_commit: str | None = None
    repo_created: bool = False
    dry_run: bool = False

    @property
    def uri(self) -> str:
        """``hf://`` location of the published lens, pinned to its commit."""
        rev = f"@{self.commit}" if self.commit else ""
        return f"hf://{self.repo_id}{rev}" + (f"/{self.subfolder}" if self.subfolder else "")


# ------------------------------------------------------------------------------------------------ validation


def _check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except ValueError:
        raise PublishError(f"{repo_id!r} is not a Hub repo id; pass --repo ORG/NAME.") from None
    if "/" not in repo_id:
        raise PublishError(f"{repo_id!r} names no namespace; pass --repo ORG/NAME (your user name or an org).")
    return repo_id


def _check_subfolder(subfolder: str | None) -> str:
    sub = (subfolder or "").strip("/")
    if sub and ("\\" in sub or any(part in ("", ".", "..") for part in sub.split("/"))):
        raise PublishError(f"--subfolder {subfolder!r} must be a relative folder like 'lens/gpt2' (no '..').")
    return sub


def _check_version(version: str | None) -> str | None:
    if version is None:
        return None
    v = version.removeprefix("v")
    if not _SEMVER.match(v):
        raise PublishError(f"--version {version!r} is not a semantic version like 1.2.0 (or 1.2.0-rc.1).")
    return v


def _lens_config(lens_dir: Path, base_model: str | None) -> LensConfig:
    """Validate the lens directory; returns its config with the base model id it will be published under."""
    config = read_config(lens_dir)
    read_tensors(lens_dir, config)
    if base_model is not None:
        try:
            validate_repo_id(base_model)
        except ValueError:
            raise PublishError(f"--base-model {base_model!r} is not a Hub model id like 'org/name'.") from None
        config = config.model_copy(update={"base_model": base_model})
    if config.base_model is None:
        raise PublishError(
            f"{lens_dir / CONFIG_NAME} records no base model id (the lens was made from a local directory). "
            "Pass --base-model ORG/NAME (base_model='org/name'), the Hub id of the model it was trained on; it is "
            "written into the published config.json."
        )
    return config


# ------------------------------------------------------------------------------------------------ Hub access


def _status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


@contextmanager
def _hub(what: str) -> Iterator[None]:
    """Hub failures while publishing as lens-hub errors: 401/403 -> `AuthenticationError`, 412 ->
    `ConcurrentUpdateError`, other refusals -> `PublishError`, the rest as `hub_errors` does."""
    from huggingface_hub import errors as hf

    with hub_errors(what):
        try:
            yield
        except (hf.RepositoryNotFoundError, hf.RevisionNotFoundError, hf.EntryNotFoundError):
            raise
        except hf.HfHubHTTPError as exc:
            status = _status(exc)
            if status in (401, 403):
                raise AuthenticationError(
                    f"the Hub refused {what} (HTTP {status}): the token may not write there; {_LOGIN_HINT}."
                ) from None
            if status == 412:
                raise ConcurrentUpdateError(f"the Hub refused {what} (HTTP 412): the branch moved.") from None
            if status is not None and 400 <= status < 500:
                detail = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
                raise PublishError(f"the Hub refused {what} (HTTP {status}): {detail}") from None
            raise


def _authenticate(api: Any, token: str | bool | None, namespace: str) -> str:
    """The token to use, after checking it with ``whoami``; returns it."""
    from huggingface_hub import errors as hf
    from huggingface_hub import get_token

    resolved = get_token() if token is None or token is True else (token or None)
    if not resolved:
        raise AuthenticationError(f"publishing needs a Hugging Face token and none was found: {_LOGIN_HINT}.")
    with hub_errors("whoami"):
        try:
            me = api.whoami(token=resolved)
        except hf.HfHubHTTPError as exc:
            if _status(exc) in (401, 403):
                raise AuthenticationError(f"the Hub rejected the token (HTTP {_status(exc)}): {_LOGIN_HINT}.") from None
            raise
    names = {me.get("name")} | {o.get("name") for o in me.get("orgs") or []}
    if namespace not in names:
        raise AuthenticationError(
            f"the token belongs to {me.get('name')!r}, who may not write to the namespace {namespace!r} "
            f"(allowed: {', '.join(sorted(n for n in names if n))}); {_LOGIN_HINT}."
        )
    return resolved


@dataclass(frozen=True)
class _Refs:
    exists: bool
    head: str | None
    tags: dict[str, str]


def _read_refs(api: Any, repo_id: str, token: str) -> _Refs:
    from huggingface_hub import errors as hf

    with _hub(f"reading the refs of {repo_id}"):
        try:
            refs = api.list_repo_refs(repo_id, token=token)
        except hf.RepositoryNotFoundError:
            return _Refs(False, None, {})
    head = next((b.target_commit for b in refs.branches if b.name == DEFAULT_BRANCH), None)
    return _Refs(True, head, {t.name: t.target_commit for t in refs.tags})


def _tag_prefix(subfolder: str) -> str:
    return f"{subfolder}/v" if subfolder else "v"


def _tag_versions(tags: dict[str, str], subfolder: str) -> list[str]:
    prefix = _tag_prefix(subfolder)
    return [t[len(prefix) :] for t in tags if t.startswith(prefix) and _SEMVER.match(t[len(prefix) :])]


def next_version(existing: Sequence[str]) -> str:
    """The next patch after the newest of ``existing`` (``1.0.0`` if none)."""
    if not existing:
        return "1.0.0"
    major, minor, patch = (int(x) for x in max(existing, key=semver_key).partition("-")[0].split("."))
    return f"{major}.{minor}.{patch + 1}"


# ------------------------------------------------------------------------------------------------ registry


@dataclass
class _RegistryPlan:
    directory: Path
    path: Path  # the entry's file (existing or to be created)
    old_text: str
    existing: RegistryEntry | None
    canonical: str


def _plan_registry(directory: Path, base_model: str) -> _RegistryPlan:
    if directory.is_dir():
        registry, problems = Registry.check(directory)
        if problems:
            raise RegistryError([*problems, "fix the registry before publishing into it"])
    else:
        registry = Registry(directory)
    entry = registry.find(base_model)
    if entry is None:
        path = directory / registry_filename(base_model)
        return _RegistryPlan(directory, path, "", None, base_model)
    path = registry.files[entry.model]
    return _RegistryPlan(directory, path, path.read_text(encoding="utf-8"), entry, entry.model)


def _facts_mismatches(entry: RegistryEntry, config: LensConfig) -> list[str]:
    from .fingerprint import compare_fingerprints

    facts, lines = entry.facts, []
    for name in ("model_type", "hidden_size", "num_layers", "vocab_size"):
        want, have = getattr(facts, name), getattr(config, name)
        if want is not None and have is not None and want != have:
            lines.append(f"the registry says {name} {want!r} but the lens says {have!r}")
    if facts.revision and config.base_revision and facts.revision != config.base_revision:
        lines.append(f"the registry says base revision {facts.revision} but the lens says {config.base_revision}")
    if facts.fingerprint and config.fingerprint:
        lines += [f"fingerprint: {p}" for p in compare_fingerprints(facts.fingerprint, config.fingerprint)]
    return lines


def _lens_version(
    config: LensConfig,
    version: str,
    repo_id: str,
    subfolder: str,
    revision: str,
    hashed: dict[str, tuple[int, str]],
    license: str | None,
) -> dict:
    training = None
    if config.training is not None:
        t = config.training
        notes = [f"loss {t.loss}"] if t.loss else []
        if t.layers is not None:
            notes.append(f"layers {t.layers}")
        notes += [f"{k}={json.dumps(v)}" for k, v in sorted(t.hyperparameters.items())]
        training = {
            "dataset": t.dataset,
            "num_tokens": t.num_tokens,
            "steps": t.steps,
            "lens_hub_version": t.lens_hub_version or config.lens_hub_version,
            "notes": ", ".join(notes) or None,
        }
        training = {k: v for k, v in training.items() if v is not None}
    data: dict[str, Any] = {
        "version": version,
        "default": True,
        "format": "safetensors",
        "status": "verified",
        "location": {"repo_id": repo_id, "subfolder": subfolder, "revision": revision},
        "files": [{"path": name, "size": size, "sha256": sha} for name, (size, sha) in hashed.items()],
    }
    if license:
        data["license"] = license
    if training:
        data["training"] = training
    if config.evaluation is not None:
        data["evaluation"] = config.evaluation.model_dump(mode="json")
    return data


def _new_entry(plan: _RegistryPlan, config: LensConfig, version_data: dict, aliases: Sequence[str]) -> RegistryEntry:
    if plan.existing is None:
        facts = {
            "model_type": config.model_type,
            "hidden_size": config.hidden_size,
            "num_layers": config.num_layers,
            "vocab_size": config.vocab_size,
            "revision": config.base_revision,
            "fingerprint": config.fingerprint,
        }
        data: dict[str, Any] = {
            "model": plan.canonical,
            "aliases": list(dict.fromkeys(aliases)),
            "facts": {k: v for k, v in facts.items() if v is not None},
            "lenses": [],
        }
    else:
        data = plan.existing.model_dump(mode="json")
        known = {a.lower() for a in data["aliases"]} | {plan.canonical.lower()}
        data["aliases"] += [a for a in dict.fromkeys(aliases) if a.lower() not in known]
        for lens in data["lenses"]:
            lens["default"] = False
    data["lenses"] = sorted([*data["lenses"], version_data], key=lambda v: semver_key(v["version"]))
    try:
        return RegistryEntry.model_validate(data)
    except Exception as exc:  # pydantic's ValidationError: name the fields
        raise PublishError(f"the registry entry for {plan.canonical} would be invalid: {exc}") from None


def _entry_text(path: Path, entry: RegistryEntry) -> str:
    if path.suffix == ".json":
        data = {"schema_version": entry.schema_version, **entry.model_dump(mode="json", exclude_defaults=True)}
        return json.dumps(data, indent=2) + "\n"
    return dump_entry(entry)


def _validate_in_scratch(plan: _RegistryPlan, text: str) -> None:
    """Validate the registry as it would be with ``text`` as the entry's file, without touching the real one."""
    with tempfile.TemporaryDirectory(prefix="lens-hub-registry-") as scratch:
        root = Path(scratch)
        if plan.directory.is_dir():
            for p in plan.directory.iterdir():
                if p.is_file() and p.suffix in SUFFIXES:
                    shutil.copy2(p, root / p.name)
        (root / plan.path.name).write_text(text, encoding="utf-8")
        _, problems = Registry.check(root)
    if problems:
        raise RegistryError([p.replace(str(root), str(plan.directory)) for p in problems])


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _diff(plan: _RegistryPlan, new_text: str) -> str:
    name = plan.path.name
    return "".join(
        difflib.unified_diff(
            plan.old_text.splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile=f"a/{name}" if plan.old_text else "/dev/null",
            tofile=f"b/{name}",
        )
    )


# ------------------------------------------------------------------------------------------------ push


def push(
    lens_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    version: str | None = None,
    subfolder: str = "",
    private: bool = False,
    dry_run: bool = False,
    registry: str | os.PathLike[str] | None = None,
    base_model: str | None = None,
    license: str | None = None,
    aliases: Sequence[str] | str | None = None,
    token: str | bool | None = None,
    console: Console | None = None,
) -> PushResult:
    """Publish a lens directory to the Hub as a tagged version and record it in the registry.

    Args:
        lens_dir: A lens directory (``config.json`` + ``lens.safetensors``).
        repo_id: The Hub model repo, ``org/name`` (created if missing).
        version: Semantic version ``X.Y.Z``; default: next patch after the newest ``v*`` tag (of the subfolder),
            or of the registry's versions for the base model, else ``1.0.0``.
        subfolder: Folder inside the repo; the tag is then ``{subfolder}/v{version}`` and the card is
            ``{subfolder}/README.md`` (the repo-level README is left alone).
        private: Create the repo as private (an existing repo keeps its visibility).
        dry_run: Validate and report what would be done; upload nothing, write nothing.
        registry: Registry directory to update (default: ``$LENS_HUB_REGISTRY`` or the shipped one).
        base_model: Hub id of the base model, when the config holds none (or to replace it); written into the
            uploaded ``config.json``.
        license: License id for the card and the registry (``mit``, ``apache-2.0``, ...).
        aliases: Extra registry names for the base model (a list, or ``"a,b"``).
        token: Hub token (default: ``HF_TOKEN`` or the stored login).
        console: Where progress and the report go (default: a new rich console on stdout).

    Raises:
        LensFormatError: The lens directory is invalid.
        PublishError: Bad arguments or a registry conflict; subclasses `VersionExistsError`,
            `ConcurrentUpdateError`, `AuthenticationError`.
        RegistryError: The registry is, or would become, invalid.
        HubUnreachableError: The Hub failed.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from rich.console import Console

    out = console if console is not None else Console()
    lens_dir = Path(lens_dir)
    repo_id = _check_repo_id(repo_id)
    sub = _check_subfolder(subfolder)
    wanted = _check_version(version)
    alias_list = [a.strip() for a in (aliases.split(",") if isinstance(aliases, str) else aliases or []) if a.strip()]

    config = _lens_config(lens_dir, base_model)
    reg_dir = Path(registry) if registry is not None else default_registry_dir()
    plan = _plan_registry(reg_dir, config.base_model)  # type: ignore[arg-type]
    if plan.canonical != config.base_model:
        out.print(f"note: {config.base_model} is {plan.canonical} in the registry; publishing under that id")
        config = config.model_copy(update={"base_model": plan.canonical})
    if plan.existing is not None:
        mismatches = _facts_mismatches(plan.existing, config)
        if mismatches:
            raise PublishError(
                f"the lens does not fit the registry entry of {plan.canonical} ({plan.path}); nothing was uploaded:\n"
                + "\n".join(f"  - {m}" for m in mismatches)
            )

    api = HfApi()
    token_str = _authenticate(api, token, repo_id.split("/")[0])
    refs = _read_refs(api, repo_id, token_str)
    registry_versions = [v.version for v in plan.existing.lenses] if plan.existing else []
    chosen = wanted or next_version(_tag_versions(refs.tags, sub) + registry_versions)
    tag = f"{_tag_prefix(sub)}{chosen}"
    if tag in refs.tags:
        raise VersionExistsError(
            f"{repo_id} already has the tag {tag} (commit {refs.tags[tag][:12]}); nothing was uploaded. "
            f"Pick another --version (the next free one is {next_version(_tag_versions(refs.tags, sub))})."
        )
    if chosen in registry_versions:
        raise VersionExistsError(
            f"the registry entry of {plan.canonical} ({plan.path}) already has version {chosen}; nothing was "
            f"uploaded. Pick another --version (next: {next_version(registry_versions)})."
        )

    with tempfile.TemporaryDirectory(prefix="lens-hub-push-") as staging:
        stage = Path(staging)
        original = read_config(lens_dir)
        config_file = lens_dir / CONFIG_NAME
        if config != original:  # the base model id changed: upload the rewritten config
            config_file = stage / CONFIG_NAME
            config_file.write_text(config.model_dump_json(indent=2) + "\n", encoding="utf-8")
        sources = {CONFIG_NAME: config_file, WEIGHTS_NAME: lens_dir / WEIGHTS_NAME}
        hashed = {name: (p.stat().st_size, sha256_of(p)) for name, p in sources.items()}

        plot = has_metrics(config)
        info = CardInfo(plan.canonical, repo_id, chosen, tag, sub, license, has_plot=plot)
        card = build_card(config, info)
        (stage / CARD_NAME).write_text(card, encoding="utf-8")
        sources[CARD_NAME] = stage / CARD_NAME
        if plot:
            from .evaluate import plot as plot_metrics

            plot_metrics(config.evaluation, stage / PLOT_NAME, title=f"Tuned lens for {plan.canonical} v{chosen}")  # type: ignore[arg-type]
            sources[PLOT_NAME] = stage / PLOT_NAME
        files = [PlannedFile(f"{sub}/{name}" if sub else name, p.stat().st_size, p) for name, p in sources.items()]

        draft = _new_entry(
            plan, config, _lens_version(config, chosen, repo_id, sub, _PLACEHOLDER, hashed, license), alias_list
        )
        _validate_in_scratch(plan, _entry_text(plan.path, draft))

        result = PushResult(
            repo_id=repo_id,
            commit=None,
            tag=tag,
            version=chosen,
            registry_file=plan.path,
            card=card,
            diff="",
            files=files,
            subfolder=sub,
            parent_commit=refs.head,
            repo_created=not refs.exists,
            dry_run=dry_run,
        )
        if dry_run:
            result.diff = _diff(plan, _entry_text(plan.path, draft)).replace(_PLACEHOLDER, "<commit of the upload>")
            _report_dry_run(out, result, private)
            return result

        with _hub(f"creating {repo_id}"):
            api.create_repo(repo_id, private=private, exist_ok=True, token=token_str)
        if not refs.exists:  # a new repo has an initial commit: that is the parent
            refs = _read_refs(api, repo_id, token_str)
            result.parent_commit = refs.head
            if tag in refs.tags:
                raise VersionExistsError(f"{repo_id} got the tag {tag} meanwhile; nothing was uploaded.")
        operations = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(f.source)) for f in files]
        message = f"Publish tuned lens v{chosen} for {plan.canonical}" + (f" ({sub})" if sub else "")
        try:
            with _hub(f"committing to {repo_id}"):
                info_ = api.create_commit(
                    repo_id,
                    operations,
                    commit_message=message,
                    commit_description=f"lens-hub push: {', '.join(f.path_in_repo for f in files)}",
                    revision=DEFAULT_BRANCH,
                    parent_commit=refs.head,
                    token=token_str,
                )
        except ConcurrentUpdateError:
            now = _read_refs(api, repo_id, token_str).head
            raise ConcurrentUpdateError(
                f"{repo_id}@{DEFAULT_BRANCH} moved while publishing (read {str(refs.head)[:12]}, now "
                f"{str(now)[:12]}): someone else committed in between. Nothing was committed, tagged or written to "
                "the registry; look at the new commit, then push again."
            ) from None
    commit = info_.oid
    if not commit or not _COMMIT.match(commit):
        raise PublishError(f"the Hub did not return a commit id for the upload to {repo_id} (got {commit!r})")
    result.commit = commit
    out.print(f"[green]✓[/] committed {len(files)} files to {repo_id} ({commit[:12]})", highlight=False)

    try:
        with _hub(f"tagging {repo_id}"):
            api.create_tag(repo_id, tag=tag, revision=commit, tag_message=message, token=token_str)
    except LensHubError as exc:
        raise PublishError(
            f"commit {commit} is on {repo_id}@{DEFAULT_BRANCH}, but tagging it {tag} failed ({exc}), so it is not a "
            "release: the registry was not updated. To keep it, tag it yourself "
            f"(HfApi().create_tag({repo_id!r}, tag={tag!r}, revision={commit!r})); otherwise push again."
        ) from None
    out.print(f"[green]✓[/] tagged {tag}", highlight=False)

    final = _new_entry(plan, config, _lens_version(config, chosen, repo_id, sub, commit, hashed, license), alias_list)
    text = _entry_text(plan.path, final)
    _validate_in_scratch(plan, text)
    _write_atomic(plan.path, text)
    _, problems = Registry.check(plan.directory)
    if problems:
        raise RegistryError(problems)
    result.diff = _diff(plan, text)
    out.print(f"[green]✓[/] registry: {plan.path}", highlight=False)
    out.print(result.diff, markup=False, highlight=False, soft_wrap=True, end="")
    out.print(f"Load it with TunedLens.from_pretrained({plan.canonical!r}, registry=...) or {result.uri}")
    return result


def _report_dry_run(out: Console, result: PushResult, private: bool) -> None:
    from rich.table import Table

    what = "create the repo" if result.repo_created else "use the existing repo"
    out.print(
        f"[bold]Dry run[/]: would {what} {result.repo_id}{' (private)' if private and result.repo_created else ''}, "
        f"commit these files on {DEFAULT_BRANCH} in one commit (parent {result.parent_commit or 'the initial commit'}"
        f") and tag it {result.tag}:",
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
    out.print(f"[bold]Registry[/] {result.registry_file}:")
    out.print(result.diff, markup=False, highlight=False, soft_wrap=True, end="")
    out.print("Nothing was uploaded or written (dry run).")
