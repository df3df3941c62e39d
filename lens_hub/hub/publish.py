"""Publish a lens to the Hugging Face Hub: one commit, one tag, one registry update (``lens-hub push``).

Publishing is split in two so that everything that can be refused is refused before anything is written:

`plan_push` (reads only) validates the lens directory and the base model id, checks the token (``whoami``) and
that it may write to the repo's namespace, reads the repo's tags and branch head, picks the version (next patch
after the newest ``v*`` tag of the subfolder, else ``1.0.0``) and refuses one whose tag or registry version already
exists, checks the lens against the registry entry of its base model, and builds the model card, the plot and the
new registry entry (validated by its schema and against the other entries' names). A dry run stops here; one that
cannot reach the Hub still shows all of this and says what it could not check (`PushPlan.note`).

What is published says how good the lens is, not only that its files are intact (``verified``): the held-out
evaluation, the tokens it was trained on and its untrained layers go into the card and the entry, and
`PushPlan.warnings` flags a lens barely better than the logit lens, one with untrained layers, or one with no
evaluation (`lens_hub.registry.quality`). A local dataset is recorded by its file name only, never its path.

`execute` then creates the repo if needed and commits ``config.json``, ``lens.safetensors``, the card ``README.md``
and ``eval.png`` (when the config holds metrics) in ONE commit whose parent is the head the plan read: if anyone
moved the branch meanwhile the Hub answers 412 and `ConcurrentUpdateError` is raised (nothing retried). It tags
the commit ``v{version}`` (``{subfolder}/v{version}``) and writes the registry entry, pinned to the commit, with
the size and sha256 of ``config.json`` and ``lens.safetensors``.

Nothing here prints: the CLI reports what a `PushResult` holds.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.config import CONFIG_NAME, WEIGHTS_NAME, LensConfig
from ..core.format import nonfinite_tensors, read_config, read_tensors
from ..core.ids import COMMIT_SHA, check_subfolder, check_version, is_semver, semver_key, validate_repo_id
from ..core.lens import untrained_translators
from ..errors import (
    AuthenticationError,
    ConcurrentUpdateError,
    HubUnreachableError,
    LensHubError,
    PublishError,
    RegistryError,
    VersionExistsError,
)
from ..registry.quality import Quality, assess
from ..registry.schema import HubLocation, LensFile, LensVersion, RegistryEntry, entry_with_version
from ..registry.store import Registry, default_registry_dir, entry_text, registry_filename, write_entry_file
from .card import CARD_NAME, PLOT_NAME, CardInfo, build_card, has_metrics, public_dataset
from .files import hub_api, hub_errors, sha256_of

DEFAULT_BRANCH = "main"
PLACEHOLDER_COMMIT = "0" * 40  # stands for the commit in the entry of a plan (the commit does not exist yet)
_LOGIN_HINT = "run `hf auth login` or set HF_TOKEN to a token with write access"


@dataclass(frozen=True)
class PlannedFile:
    """One file of the commit: a file on disk, or bytes made for the upload (card, plot, rewritten config)."""

    path_in_repo: str
    size: int
    source: Path | bytes

    def sha256(self) -> str:
        return hashlib.sha256(self.source).hexdigest() if isinstance(self.source, bytes) else sha256_of(self.source)


@dataclass
class PushResult:
    """What `execute` did (or, for a dry run, what it would do)."""

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
    private: bool = False
    base_model: str = ""
    warnings: list[str] = field(default_factory=list)  # what a reader of the lens should know (its quality)
    note: str | None = None  # what a dry run could not check
    hub_checked: bool = True  # False: a dry run that could not reach the Hub (repo, tag and token unchecked)

    @property
    def uri(self) -> str:
        """``hf://`` location of the published lens, pinned to its commit."""
        rev = f"@{self.commit}" if self.commit else ""
        return f"hf://{self.repo_id}{rev}" + (f"/{self.subfolder}" if self.subfolder else "")


@dataclass(frozen=True)
class PushPlan:
    """Everything `execute` will do, decided and validated by `plan_push` (which wrote nothing)."""

    repo_id: str
    subfolder: str
    version: str
    tag: str
    base_model: str  # the registry's canonical id
    config: LensConfig  # as uploaded (base model id filled in)
    files: tuple[PlannedFile, ...]
    card: str
    entry: RegistryEntry  # the registry entry after the push, pinned to PLACEHOLDER_COMMIT
    registry_file: Path
    registry_text: str  # the entry file's text before the push ('' if new)
    parent_commit: str | None  # head of main when the plan was made (None: the repo does not exist yet)
    repo_exists: bool
    private: bool
    token: str = field(repr=False)
    note: str | None = None  # what a dry run could not check (no token, or the Hub unreachable)
    warnings: tuple[str, ...] = ()  # the lens's quality problems, each with its fix (`quality_warnings`)
    hub_checked: bool = True  # False: planned without the Hub (a dry run only; `execute` refuses it)

    @property
    def message(self) -> str:
        return f"Publish tuned lens v{self.version} for {self.base_model}" + (
            f" ({self.subfolder})" if self.subfolder else ""
        )

    def diff(self, entry: RegistryEntry | None = None) -> str:
        """Unified diff of the registry file, for ``entry`` (default: the plan's, commit shown as a placeholder)."""
        new = entry_text(self.registry_file, entry or self.entry)
        if entry is None:
            new = new.replace(PLACEHOLDER_COMMIT, "<commit of the upload>")
        name = self.registry_file.name
        return "".join(
            difflib.unified_diff(
                self.registry_text.splitlines(keepends=True),
                new.splitlines(keepends=True),
                fromfile=f"a/{name}" if self.registry_text else "/dev/null",
                tofile=f"b/{name}",
            )
        )

    def result(self, commit: str | None = None, entry: RegistryEntry | None = None) -> PushResult:
        """The `PushResult` of this plan: a dry run's (no commit), or an executed one's."""
        return PushResult(
            repo_id=self.repo_id,
            commit=commit,
            tag=self.tag,
            version=self.version,
            registry_file=self.registry_file,
            card=self.card,
            diff=self.diff(entry),
            files=list(self.files),
            subfolder=self.subfolder,
            parent_commit=self.parent_commit,
            repo_created=not self.repo_exists,
            dry_run=commit is None,
            private=self.private,
            base_model=self.base_model,
            warnings=list(self.warnings),
            note=self.note,
            hub_checked=self.hub_checked,
        )


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
    try:
        return check_subfolder((subfolder or "").strip("/"))
    except ValueError as exc:
        raise PublishError(f"--subfolder {subfolder!r} {exc}.") from None


def _lens_config(lens_dir: Path, base_model: str | None) -> tuple[LensConfig, list[int]]:
    """Validate the lens directory; returns its config as it will be published (base model id set, datasets named
    as `public_dataset` names them) and its untrained layers.

    Raises:
        LensFormatError: The directory is not a readable lens.
        PublishError: A tensor holds NaN or infinite values, or no base model id is known.
    """
    config = read_config(lens_dir)
    tensors = read_tensors(lens_dir, config)
    untrained = untrained_translators(config, tensors)
    nonfinite = nonfinite_tensors(tensors)
    if nonfinite:
        # A registry entry would call this lens "verified": its checksums would hold, its predictions would be NaN.
        raise PublishError(
            f"{lens_dir / WEIGHTS_NAME}: {'tensor' if len(nonfinite) == 1 else 'tensors'} {', '.join(nonfinite)} "
            f"{'holds' if len(nonfinite) == 1 else 'hold'} non-finite values; a lens with NaN or "
            "infinite weights is not published (nothing was uploaded). Retrain it (a lower --lr, or resume from "
            "an earlier checkpoint)."
        )
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
    return _public_provenance(config), untrained


def _public_provenance(config: LensConfig) -> LensConfig:
    """``config`` with its datasets as a stranger may read them: a local path becomes its file name."""
    update: dict[str, Any] = {}
    if config.training is not None and config.training.dataset:
        update["training"] = config.training.model_copy(update={"dataset": public_dataset(config.training.dataset)})
    if config.evaluation is not None and config.evaluation.dataset:
        dataset = public_dataset(config.evaluation.dataset)
        update["evaluation"] = config.evaluation.model_copy(update={"dataset": dataset})
    return config.model_copy(update=update) if update else config


def quality_warnings(quality: Quality, evaluate_hint: str) -> list[str]:
    """What `Quality.problems` flags, each with what to do about it, for the publisher to read before a push.

    ``evaluate_hint`` says how this publisher evaluates the lens (a command for a lens directory, Python for a lens
    in memory: its temporary directory is gone by the time anyone reads the warning).
    """
    fixes = {
        "unevaluated": f"evaluate it on held-out text before publishing: {evaluate_hint}",
        "barely": "train it longer (more --steps or tokens) before publishing it",
        "untrained": "the card and the registry entry say so; train them (lens-hub train --layers) if they matter",
    }
    return [f"{problem}; {fixes[key]}." for key, problem in quality.problems().items()]


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


def _read_refs(api: Any, repo_id: str, token: str | bool) -> _Refs:
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
    return [t[len(prefix) :] for t in tags if t.startswith(prefix) and is_semver(t[len(prefix) :])]


def next_version(existing: Sequence[str]) -> str:
    """The next patch after the newest of ``existing`` (``1.0.0`` if none)."""
    if not existing:
        return "1.0.0"
    major, minor, patch = (int(x) for x in max(existing, key=semver_key).partition("-")[0].split("."))
    return f"{major}.{minor}.{patch + 1}"


# ------------------------------------------------------------------------------------------------ registry


def _lens_version(
    config: LensConfig,
    version: str,
    location: HubLocation,
    files: Sequence[PlannedFile],
    license: str | None,
    untrained: Sequence[int],
) -> LensVersion:
    artifact = [f for f in files if f.path_in_repo.rpartition("/")[2] in (CONFIG_NAME, WEIGHTS_NAME)]
    training = config.training
    if training is not None and training.lens_hub_version is None:
        training = training.model_copy(update={"lens_hub_version": config.lens_hub_version})
    return LensVersion(
        version=version,
        default=True,
        format="safetensors",
        status="verified",
        location=location,
        files=[LensFile(path=f.path_in_repo.rpartition("/")[2], size=f.size, sha256=f.sha256()) for f in artifact],
        license=license,
        training=training,
        evaluation=config.evaluation,
        untrained_layers=list(untrained),
    )


def _facts(config: LensConfig) -> dict[str, object]:
    """A new entry's facts: what the lens config records of its base model."""
    names = ("model_type", "hidden_size", "num_layers", "vocab_size", "fingerprint")
    return {name: getattr(config, name) for name in names} | {"revision": config.base_revision}


# ------------------------------------------------------------------------------------------------ push


def plan_push(
    lens_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    version: str | None = None,
    subfolder: str = "",
    private: bool = False,
    registry: str | os.PathLike[str] | None = None,
    base_model: str | None = None,
    license: str | None = None,
    aliases: Sequence[str] | str | None = None,
    token: str | bool | None = None,
    dry_run: bool = False,
    evaluate_hint: str | None = None,
) -> PushPlan:
    """Decide and validate everything a push will do, reading only (the Hub's refs, the registry, the lens).

    Args:
        lens_dir: A lens directory (``config.json`` + ``lens.safetensors``).
        repo_id: The Hub model repo, ``org/name`` (created by `execute` if missing).
        version: Semantic version ``X.Y.Z``; default: next patch after the newest ``v*`` tag (of the subfolder),
            or of the registry's versions for the base model, else ``1.0.0``.
        subfolder: Folder inside the repo; the tag is then ``{subfolder}/v{version}`` and the card is
            ``{subfolder}/README.md`` (the repo-level README is left alone).
        private: Create the repo as private (an existing repo keeps its visibility).
        registry: Registry directory to update (default: ``$LENS_HUB_REGISTRY`` or the shipped one).
        base_model: Hub id of the base model, when the config holds none (or to replace it); written into the
            uploaded ``config.json``.
        license: License id for the card and the registry (``mit``, ``apache-2.0``, ...).
        aliases: Extra registry names for the base model (a list, or ``"a,b"``).
        token: Hub token (default: ``HF_TOKEN`` or the stored login).
        dry_run: Plan for a dry run: without any token, the token check is skipped and the repo's refs are read
            anonymously (a private or missing repo then reads as new; `PushPlan.note` says so). With the Hub
            unreachable the plan is still made (``hub_checked`` False: repo, tag and token unchecked, the version
            picked from the registry alone), and `execute` refuses it.
        evaluate_hint: How to evaluate the lens, in the warning for a lens without a held-out evaluation; default:
            the ``lens-hub eval ... --store`` command for ``lens_dir``.

    Raises:
        LensFormatError: The lens directory is invalid.
        PublishError: Bad arguments or a registry conflict; subclasses `VersionExistsError`,
            `AuthenticationError`.
        RegistryError: The registry is, or would become, invalid.
        HubUnreachableError: The Hub failed (not for a dry run).
    """

    lens_dir = Path(lens_dir)
    repo_id = _check_repo_id(repo_id)
    sub = _check_subfolder(subfolder)
    wanted = check_version(version)
    license = check_license(license)
    alias_list = [a.strip() for a in (aliases.split(",") if isinstance(aliases, str) else aliases or []) if a.strip()]

    config, untrained = _lens_config(lens_dir, base_model)
    reg = Registry.open_to_write(registry if registry is not None else default_registry_dir(), "publishing into it")
    existing = reg.find(config.base_model)  # type: ignore[arg-type]
    canonical = existing.model if existing else config.base_model
    config = config.model_copy(update={"base_model": canonical})
    registry_file = reg.files[canonical] if existing else reg.directory / registry_filename(canonical)  # type: ignore[operator]
    if existing is not None:
        mismatches = existing.facts.contradictions(config, revision=True)
        if mismatches:
            raise PublishError(
                f"the lens does not fit the registry entry of {canonical} ({registry_file}); nothing was uploaded:\n"
                + "\n".join(f"  - {m}" for m in mismatches)
            )

    api = hub_api()
    note = None
    tokenless = dry_run and _find_token(token) is None
    unreachable: HubUnreachableError | None = None
    try:
        if tokenless:
            # A dry run uploads nothing, so it needs no token: read what anyone may read, and say what stays unknown.
            token_str, refs = "", _read_refs(api, repo_id, False)
            note = "no Hugging Face token: the token check was skipped and the refs were read anonymously"
            if not refs.exists:
                note += f"; {repo_id} is missing or private (its visibility could not be checked)"
            note += f". A real push needs a token with write access: {_LOGIN_HINT}."
        else:
            token_str = _authenticate(api, token, repo_id.split("/")[0])
            refs = _read_refs(api, repo_id, token_str)
    except HubUnreachableError as exc:
        if not dry_run:
            raise
        # Offline, a dry run still shows everything made here (files, card, entry); it says what stayed unchecked.
        token_str, refs, unreachable = "", _Refs(False, None, {}), exc
    registry_versions = [v.version for v in existing.lenses] if existing else []
    chosen = wanted or next_version(_tag_versions(refs.tags, sub) + registry_versions)
    tag = f"{_tag_prefix(sub)}{chosen}"
    if unreachable is not None:
        note = (
            f"offline dry run: {unreachable}. Not checked: whether {repo_id} exists (and who may see it), whether the "
            f"tag {tag} is free, whether {'a' if tokenless else 'your'} token may write to {repo_id.split('/')[0]}; "
            f"version {chosen} was picked from the registry alone. Run the dry run again online before pushing"
            + (f" (a real push also needs a token with write access: {_LOGIN_HINT})." if tokenless else ".")
        )
    if tag in refs.tags:
        raise VersionExistsError(
            f"{repo_id} already has the tag {tag} (commit {refs.tags[tag][:12]}); nothing was uploaded. "
            f"Pick another --version (the next free one is {next_version(_tag_versions(refs.tags, sub))})."
        )
    if chosen in registry_versions:
        raise VersionExistsError(
            f"the registry entry of {canonical} ({registry_file}) already has version {chosen}; nothing was "
            f"uploaded. Pick another --version (next: {next_version(registry_versions)})."
        )

    has_plot = has_metrics(config)
    info = CardInfo(canonical, repo_id, chosen, tag, sub, license, has_plot, tuple(untrained))  # type: ignore[arg-type]
    files = _files(lens_dir, config, sub, info)
    location = HubLocation(repo_id=repo_id, subfolder=sub, revision=PLACEHOLDER_COMMIT)
    facts = existing.facts.model_dump() if existing is not None else _facts(config)
    version_record = _lens_version(config, chosen, location, files, license, untrained)
    quality = assess(config.evaluation, config.training, untrained, config.num_layers)
    entry = entry_with_version(existing, canonical, facts, version_record, alias_list)
    clashes = reg.clashes(entry, registry_file)
    if clashes:
        raise RegistryError(clashes)
    return PushPlan(
        repo_id=repo_id,
        subfolder=sub,
        version=chosen,
        tag=tag,
        base_model=canonical,  # type: ignore[arg-type]
        config=config,
        files=tuple(files),
        card=files[2].source.decode(),  # type: ignore[union-attr]
        entry=entry,
        registry_file=registry_file,
        registry_text=registry_file.read_text(encoding="utf-8") if existing else "",
        parent_commit=refs.head,
        repo_exists=refs.exists,
        private=private,
        token=token_str,
        note=note,
        warnings=tuple(
            quality_warnings(
                quality, evaluate_hint or f"lens-hub eval {lens_dir} --model {canonical} --data HELDOUT_TEXT --store"
            )
        ),
        hub_checked=unreachable is None,
    )


def _find_token(token: str | bool | None) -> str | None:
    """The token `_authenticate` would use, without checking it (None: there is none)."""
    from huggingface_hub import get_token

    return get_token() if token is None or token is True else (token or None)


def _files(lens_dir: Path, config: LensConfig, sub: str, info: CardInfo) -> list[PlannedFile]:
    """The commit's files, in order: config, weights, card, then the plot (when the config holds metrics)."""
    from ..core.plots import evaluation_png

    def planned(name: str, source: Path | bytes) -> PlannedFile:
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        return PlannedFile(f"{sub}/{name}" if sub else name, size, source)

    config_source: Path | bytes = lens_dir / CONFIG_NAME
    if config != read_config(lens_dir):  # the base model id changed: upload the rewritten config
        config_source = (config.model_dump_json(indent=2) + "\n").encode()
    files = [
        planned(CONFIG_NAME, config_source),
        planned(WEIGHTS_NAME, lens_dir / WEIGHTS_NAME),
        planned(CARD_NAME, build_card(config, info).encode()),
    ]
    if info.has_plot:
        title = f"Tuned lens for {info.base_model} v{info.version}"
        untrained = set(info.untrained_layers or ())
        trained = [i for i in range(config.num_layers) if i not in untrained] if untrained else None
        png = evaluation_png(config.evaluation, title=title, trained=trained)  # type: ignore[arg-type]
        files.append(planned(PLOT_NAME, png))
    return files


_LICENSE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}")


def check_license(license: str | None) -> str | None:
    """``license`` if it is a license id like the Hub's (``mit``, ``apache-2.0``, ``cc-by-4.0``, ``other``).

    Raises:
        PublishError: Anything else, before anything is built or uploaded.
    """
    if license is None or _LICENSE_ID.fullmatch(license):
        return license
    raise PublishError(
        f"--license {license[:40]!r}{'...' if len(license) > 40 else ''} is not a license id: use one like mit, "
        "apache-2.0 or cc-by-4.0 (letters, digits, '.', '+' and '-', at most 64 characters); nothing was uploaded."
    )


def execute(plan: PushPlan) -> PushResult:
    """Carry out a plan: create the repo if needed, one commit, one tag, then the registry entry.

    Raises:
        ConcurrentUpdateError: The branch moved since the plan read it; nothing was committed.
        VersionExistsError: The tag appeared since the plan was made; nothing was committed.
        PublishError: The Hub refused a step (the message says what exists and how to finish by hand).
        HubUnreachableError: The Hub failed.
    """
    from huggingface_hub import CommitOperationAdd

    if not plan.hub_checked:
        raise PublishError(
            f"this plan for {plan.repo_id} was made without reaching the Hub (repo, tag and token unchecked); nothing "
            "was uploaded. Plan again online (plan_push without dry_run) and execute that plan."
        )
    api, repo_id, token = hub_api(), plan.repo_id, plan.token
    parent = plan.parent_commit
    if not plan.repo_exists:
        with _hub(f"creating {repo_id}"):
            api.create_repo(repo_id, private=plan.private, exist_ok=True, token=token)
        refs = _read_refs(api, repo_id, token)  # a new repo has an initial commit: that is the parent
        parent = refs.head
        if plan.tag in refs.tags:
            raise VersionExistsError(f"{repo_id} got the tag {plan.tag} meanwhile; nothing was uploaded.")
    else:  # the tag may have appeared since the plan read the refs: a commit now would be left untagged
        refs = _read_refs(api, repo_id, token)
        if plan.tag in refs.tags:
            raise VersionExistsError(
                f"{repo_id} got the tag {plan.tag} (commit {refs.tags[plan.tag][:12]}) since the plan was made; "
                "nothing was uploaded. Plan again to pick the next free version."
            )
    operations = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=f.source) for f in plan.files]
    try:
        with _hub(f"committing to {repo_id}"):
            info = api.create_commit(
                repo_id,
                operations,
                commit_message=plan.message,
                commit_description=f"lens-hub push: {', '.join(f.path_in_repo for f in plan.files)}",
                revision=DEFAULT_BRANCH,
                parent_commit=parent,
                token=token,
            )
    except ConcurrentUpdateError:
        now = _read_refs(api, repo_id, token).head
        raise ConcurrentUpdateError(
            f"{repo_id}@{DEFAULT_BRANCH} moved while publishing (read {str(parent)[:12]}, now {str(now)[:12]}): "
            "someone else committed in between. Nothing was committed, tagged or written to the registry; look at "
            "the new commit, then push again."
        ) from None
    commit = info.oid
    if not commit or not COMMIT_SHA.match(commit):
        raise PublishError(f"the Hub did not return a commit id for the upload to {repo_id} (got {commit!r})")
    try:
        with _hub(f"tagging {repo_id}"):
            api.create_tag(repo_id, tag=plan.tag, revision=commit, tag_message=plan.message, token=token)
    except LensHubError as exc:
        raise PublishError(
            f"commit {commit} is on {repo_id}@{DEFAULT_BRANCH}, but tagging it {plan.tag} failed ({exc}), so it is "
            "not a release: the registry was not updated. To keep it, tag it yourself "
            f"(HfApi().create_tag({repo_id!r}, tag={plan.tag!r}, revision={commit!r})); otherwise push again."
        ) from None
    entry = _pin(plan.entry, plan.version, commit)
    write_entry_file(plan.registry_file, entry)
    return replace(plan.result(commit, entry), parent_commit=parent)


def _pin(entry: RegistryEntry, version: str, commit: str) -> RegistryEntry:
    """``entry`` with ``version`` pinned to ``commit`` (a valid commit replaces a valid placeholder)."""
    lenses = [
        v.model_copy(update={"location": v.location.model_copy(update={"revision": commit})})
        if v.version == version
        else v
        for v in entry.lenses
    ]
    return entry.model_copy(update={"lenses": lenses})


def push(lens_dir: str | os.PathLike[str], repo_id: str, *, dry_run: bool = False, **options: Any) -> PushResult:
    """Publish a lens directory as a tagged version and record it in the registry: `plan_push` then `execute`.

    Takes `plan_push`'s keyword arguments; with ``dry_run=True`` only the plan is made and its result returned.
    """
    plan = plan_push(lens_dir, repo_id, dry_run=dry_run, **options)
    return plan.result() if dry_run else execute(plan)
