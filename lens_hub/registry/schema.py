"""Schema of the lens registry: one YAML file per base model, validated by these pydantic models.

Every model is strict (a YAML ``0`` is not accepted where a string is expected, and ``1.0`` is not a version) and
forbids unknown keys, so a typo or a pasted block fails validation instead of being dropped. The JSON Schema
exported from these models lives in ``registry/schema.json`` for editors and other tools.

A registry entry decides what gets downloaded and loaded, so it is checked as hostile input: ids, aliases and
subfolders follow the Hub's ASCII rules (`lens_hub.core.ids`), a file is a plain name in the lens's folder and an entry
lists exactly the files its format loads (`REQUIRED_FILES`: no decoy copies, no pickle in a safetensors lens),
declared sizes are capped like a lens config's, and every free-text field has a length limit.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ..core.config import (
    MAX_HIDDEN_SIZE,
    MAX_LAYERS,
    MAX_VOCAB_SIZE,
    NOTES_MAX,
    EvaluationInfo,
    FingerprintText,
    LayerIndex,
    LensConfig,
    ShortText,
    TrainingInfo,
    check_fingerprint,
    no_bool,
    text,
)
from ..core.format import short_repr
from ..core.ids import (
    COMMIT_SHA,
    SEMVER,
    SEMVER_MAX,
    check_subfolder,
    is_semver,
    repo_id_problem,
    semver_key,
    validate_repo_id,
)
from ..core.options import Status

REGISTRY_SCHEMA_VERSION = 1

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
CommitSha = Annotated[str, StringConstraints(pattern=COMMIT_SHA.pattern)]


def _check_semver(value: str) -> str:
    if not is_semver(value):
        raise ValueError(
            f"{short_repr(value)} is not a semantic version like 1.2.0 or 1.2.0-rc.1 (numbers without leading zeros; "
            "pre-release identifiers non-empty, dot-separated, of [0-9A-Za-z-])"
        )
    return value


# Checked in Python for a readable message; the pattern is still published in the JSON Schema for editors.
SemVer = Annotated[
    str,
    StringConstraints(max_length=SEMVER_MAX),
    AfterValidator(_check_semver),
    WithJsonSchema({"type": "string", "pattern": SEMVER.pattern, "maxLength": SEMVER_MAX}),
]
RepoId = Annotated[str, StringConstraints(min_length=1, max_length=96)]
FILE_NAME_MAX = 100
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_ALIASES = 64
MAX_VERSIONS = 1_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelFacts(_Strict):
    """Facts about the base model that every lens of it must match (``None``: not known for certain)."""

    model_type: ShortText | None = None
    hidden_size: int | None = Field(default=None, gt=0, le=MAX_HIDDEN_SIZE)
    num_layers: int | None = Field(default=None, gt=0, le=MAX_LAYERS)
    vocab_size: int | None = Field(default=None, gt=0, le=MAX_VOCAB_SIZE)
    revision: CommitSha | None = Field(default=None, description="Commit of the base model the lenses were made on.")
    fingerprint: FingerprintText | None = Field(
        default=None, description="Unembedding fingerprint (see lens_hub.core.fingerprint)."
    )

    _fingerprint = field_validator("fingerprint")(check_fingerprint)

    def contradictions(self, config: LensConfig, *, revision: bool = False) -> list[str]:
        """What a lens config says that these facts contradict, one line each (facts left ``None`` are skipped).

        Args:
            config: The lens's config.
            revision: Also compare the base model's commit (publishing does; loading does not, since a lens fits
                any revision with the same unembedding, which the fingerprint checks).
        """
        from ..core.fingerprint import compare_fingerprints  # torch: only when there is something to compare

        lines = []
        for name in ("model_type", "hidden_size", "num_layers", "vocab_size"):
            want, have = getattr(self, name), getattr(config, name)
            if want is not None and have is not None and want != have:
                lines.append(f"the registry says {name} {want!r} but the lens says {have!r}")
        if revision and self.revision and config.base_revision and self.revision != config.base_revision:
            lines.append(f"the registry says base revision {self.revision} but the lens says {config.base_revision}")
        if self.fingerprint and config.fingerprint:
            lines += [f"fingerprint: {p}" for p in compare_fingerprints(self.fingerprint, config.fingerprint)]
        return lines


class HubLocation(_Strict):
    """Where a lens lives on the Hub."""

    repo_id: RepoId
    repo_type: Literal["model", "space", "dataset"] = "model"
    subfolder: str = Field(default="", description="Folder inside the repo ('' for the root).")
    revision: CommitSha | None = Field(description="40-hex commit the files are pinned to (None: unpinned).")

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        if "/" not in value:
            raise ValueError("must be 'namespace/name'")
        return validate_repo_id(value)

    _subfolder = field_validator("subfolder")(check_subfolder)


class LensFile(_Strict):
    """One file of a lens artifact, with what it must hash to."""

    path: str = Field(
        min_length=1,
        max_length=FILE_NAME_MAX,
        description="File name inside the subfolder (a plain name: no folder part, no '..').",
        json_schema_extra={"pattern": _FILE_NAME.pattern},  # checked by _plain_name, with a readable message
    )
    size: int | None = Field(default=None, ge=0)
    sha256: Sha256 | None = None

    @field_validator("path")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # The loader joins this to the subfolder, downloads it and reads the lens from its folder: a folder part
        # or '..' would make it fetch (and load) something other than the lens the entry describes.
        if not _FILE_NAME.fullmatch(value) or ".." in value:
            raise ValueError(
                f"{value[:60]!r} is not a plain file name: write just the name, like 'config.json' (ASCII letters, "
                "digits, '-', '_', '.'; no '/', '\\', '..', spaces or control characters)"
            )
        return value


Format = Literal["safetensors", "tuned-lens-legacy"]

# The files each format loads; an entry lists exactly these (the card and plot a push uploads are not part of the
# artifact: nothing loads them, so the registry does not make anyone download them).
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "safetensors": ("config.json", "lens.safetensors"),
    "tuned-lens-legacy": ("config.json", "params.pt"),
}
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class LensVersion(_Strict):
    """One published version of a lens for a base model.

    ``files`` lists exactly the files of `REQUIRED_FILES` for its format, each a plain name inside
    ``location.subfolder``: what is listed is what is downloaded, verified and loaded.
    """

    version: SemVer
    default: bool = False
    format: Format
    status: Status = Field(
        description="verified: pinned commit and checksums checked against the Hub; unverified: files not checked "
        "by anyone here (the loader warns); deprecated: kept for reproducibility, never the default."
    )
    location: HubLocation
    files: list[LensFile] = Field(
        min_length=1,
        max_length=16,  # only bounds the work: the exact list is checked below, with a message that says which
        description="Exactly the files the format loads (see REQUIRED_FILES), each with its size and sha256.",
    )
    license: ShortText | None = None
    training: TrainingInfo | None = None
    evaluation: EvaluationInfo | None = None
    untrained_layers: list[LayerIndex] | None = Field(
        default=None,
        max_length=MAX_LAYERS,
        description="Layers whose translator is the identity (there the lens is the logit lens), found from the "
        "weights when the lens was published; None: not checked. With `training` (tokens seen) and `evaluation` "
        "(held-out KL, tuned vs logit lens) this is what a reader judges the lens's quality by: `verified` is only "
        "about the files' integrity.",
    )
    notes: text(NOTES_MAX) | None = Field(default=None, description=f"Free text, at most {NOTES_MAX:,} characters.")

    @model_validator(mode="after")
    def _consistent(self) -> LensVersion:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"files lists a path twice: {paths}")
        required = REQUIRED_FILES[self.format]
        missing = [p for p in required if p not in paths]
        if missing:
            raise ValueError(f"a {self.format} lens needs files {list(required)}; missing {missing}")
        # Exactly the loaded files: anything else is at best downloaded for nothing, at worst loaded instead.
        unexpected = [p for p in paths if p not in required]
        if unexpected:
            pickles = self.format == "safetensors" and any(p.endswith(PICKLE_SUFFIXES) for p in unexpected)
            raise ValueError(
                f"a {self.format} lens lists exactly the files {list(required)}; remove {unexpected}"
                + (" (a pickle is never part of a safetensors lens)" if pickles else "")
            )
        if self.status == "verified":
            if self.location.revision is None:
                raise ValueError("a verified lens must be pinned: set location.revision to a 40-hex commit")
            unhashed = [f.path for f in self.files if f.size is None or f.sha256 is None]
            if unhashed:
                raise ValueError(f"a verified lens needs size and sha256 for every file; missing for {unhashed}")
        if self.format == "safetensors" and self.location.revision is None:
            raise ValueError("safetensors lenses must be pinned: set location.revision to a 40-hex commit")
        if self.default and self.status == "deprecated":
            raise ValueError("a deprecated version cannot be the default")
        return self

    @property
    def pinned(self) -> bool:
        return self.location.revision is not None


class RegistryEntry(_Strict):
    """A registry file: one base model, its aliases, its facts and its lens versions (oldest first)."""

    schema_version: Literal[1] = REGISTRY_SCHEMA_VERSION
    model: RepoId = Field(description="Canonical Hub id of the base model, e.g. 'openai-community/gpt2'.")
    aliases: list[RepoId] = Field(
        default_factory=list,
        max_length=MAX_ALIASES,
        description="Other names (case-insensitive, ASCII, each a Hub id like 'gpt2' or 'org/name').",
    )
    facts: ModelFacts
    lenses: list[LensVersion] = Field(min_length=1, max_length=MAX_VERSIONS)

    _schema_version = field_validator("schema_version", mode="before")(no_bool)

    @field_validator("model")
    @classmethod
    def _model_id(cls, value: str) -> str:
        return validate_repo_id(value)

    # Field validators rather than a model validator, so that problems are located at `aliases` / `lenses`
    # (a model validator's errors have no location) and are reported even when another field is invalid.
    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for alias in value:
            # ASCII only, like a model id: an alias that merely looks like another name ('gрt2' with a Cyrillic
            # 'р') would otherwise be a second, different name for a reader who cannot tell them apart.
            why = repo_id_problem(alias)
            if why is not None:
                raise ValueError(f"an alias is a Hub id like 'gpt2' or 'org/name', but {why}")
        lowered = [a.lower() for a in value]
        if len(set(lowered)) != len(lowered):
            raise ValueError(f"aliases repeat (case-insensitively): {value}")
        model = info.data.get("model")  # validated before aliases (declared first); absent if it was invalid
        if model is not None and model.lower() in lowered:
            raise ValueError(f"aliases must not repeat the canonical id {model!r} (it always resolves to itself)")
        return value

    @field_validator("lenses")
    @classmethod
    def _versions(cls, lenses: list[LensVersion]) -> list[LensVersion]:
        versions = [v.version for v in lenses]
        if len(set(versions)) != len(versions):
            raise ValueError(f"lens versions repeat: {versions}")
        if [semver_key(v) for v in versions] != sorted(semver_key(v) for v in versions):
            raise ValueError(f"lens versions must be listed oldest first: {versions}")
        defaults = [v.version for v in lenses if v.default]
        if len(defaults) != 1:
            raise ValueError(f"exactly one lens version must be the default, found {len(defaults)}: {defaults}")
        return lenses

    @property
    def default_version(self) -> LensVersion:
        return next(v for v in self.lenses if v.default)

    def get_version(self, version: str) -> LensVersion | None:
        return next((v for v in self.lenses if v.version == version), None)


def entry_with_version(
    existing: RegistryEntry | None,
    model: str,
    facts: dict[str, object],
    version: LensVersion,
    aliases: list[str] | tuple[str, ...] = (),
) -> RegistryEntry:
    """An entry with ``version`` added as the default: ``existing``'s (its other versions no longer default, all kept
    oldest first, its facts replaced by ``facts``), or a new one for ``model``. Aliases not yet known (compared
    case-insensitively, the model id excluded) are appended. What `lens-hub push` and `registry add` both write.

    Raises:
        RegistryError: The entry would be invalid (the schema's problems, located).
    """
    canonical = existing.model if existing is not None else model
    known = {a.lower() for a in existing.aliases} if existing is not None else set()
    new_aliases = [a for a in dict.fromkeys(aliases) if a.lower() not in known and a.lower() != canonical.lower()]
    others = [v.model_copy(update={"default": False}) for v in (existing.lenses if existing is not None else [])]
    lenses = sorted([*others, version.model_copy(update={"default": True})], key=lambda v: semver_key(v.version))
    aliases = [*(existing.aliases if existing is not None else []), *new_aliases]
    return build_entry(canonical, aliases, facts, lenses)


def build_entry(model: str, aliases: list[str], facts: dict[str, object], lenses: list[LensVersion]) -> RegistryEntry:
    """A registry entry, validated as a registry file is (facts left None are dropped).

    Raises:
        RegistryError: The entry would be invalid (the schema's problems).
    """
    from ..errors import RegistryError

    data = {"model": model, "aliases": aliases, "facts": {k: v for k, v in facts.items() if v is not None}}
    try:
        return RegistryEntry.model_validate(data | {"lenses": [v.model_dump() for v in lenses]})
    except ValidationError as exc:
        raise RegistryError([f"the registry entry for {model} would be invalid: {exc}"]) from None


def registry_json_schema() -> dict:
    """The JSON Schema of a registry file (written to ``registry/schema.json``)."""
    schema = RegistryEntry.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lens-hub registry entry"
    return schema
