"""Schema of the lens registry: one YAML file per base model, validated by these pydantic models.

Every model is strict (a YAML ``0`` is not accepted where a string is expected, and ``1.0`` is not a version) and
forbids unknown keys, so a typo or a pasted block fails validation instead of being dropped. The JSON Schema
exported from these models lives in ``registry/schema.json`` for editors and other tools.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from .config import EvaluationInfo, LensConfig, TrainingInfo, check_fingerprint
from .ids import COMMIT_SHA, SEMVER, check_subfolder, semver_key, validate_repo_id

REGISTRY_SCHEMA_VERSION = 1

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
CommitSha = Annotated[str, StringConstraints(pattern=COMMIT_SHA.pattern)]
SemVer = Annotated[str, StringConstraints(pattern=SEMVER.pattern)]
RepoId = Annotated[str, StringConstraints(min_length=1, max_length=96)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelFacts(_Strict):
    """Facts about the base model that every lens of it must match (``None``: not known for certain)."""

    model_type: str | None = None
    hidden_size: int | None = Field(default=None, gt=0)
    num_layers: int | None = Field(default=None, gt=0)
    vocab_size: int | None = Field(default=None, gt=0)
    revision: CommitSha | None = Field(default=None, description="Commit of the base model the lenses were made on.")
    fingerprint: str | None = Field(default=None, description="Unembedding fingerprint (see lens_hub.fingerprint).")

    _fingerprint = field_validator("fingerprint")(check_fingerprint)

    def contradictions(self, config: LensConfig, *, revision: bool = False) -> list[str]:
        """What a lens config says that these facts contradict, one line each (facts left ``None`` are skipped).

        Args:
            config: The lens's config.
            revision: Also compare the base model's commit (publishing does; loading does not, since a lens fits
                any revision with the same unembedding, which the fingerprint checks).
        """
        from .fingerprint import compare_fingerprints  # torch: only when there is something to compare

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

    path: str = Field(min_length=1, description="Path relative to the subfolder.")
    size: int | None = Field(default=None, ge=0)
    sha256: Sha256 | None = None


Format = Literal["safetensors", "tuned-lens-legacy"]
Status = Literal["verified", "unverified", "deprecated"]

REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "safetensors": ("config.json", "lens.safetensors"),
    "tuned-lens-legacy": ("config.json", "params.pt"),
}


class LensVersion(_Strict):
    """One published version of a lens for a base model."""

    version: SemVer
    default: bool = False
    format: Format
    status: Status = Field(
        description="verified: pinned commit and checksums checked against the Hub; unverified: files not checked "
        "by anyone here (the loader warns); deprecated: kept for reproducibility, never the default."
    )
    location: HubLocation
    files: list[LensFile] = Field(min_length=1)
    license: str | None = None
    training: TrainingInfo | None = None
    evaluation: EvaluationInfo | None = None
    notes: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> LensVersion:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"files lists a path twice: {paths}")
        missing = [p for p in REQUIRED_FILES[self.format] if p not in paths]
        if missing:
            raise ValueError(f"a {self.format} lens needs files {list(REQUIRED_FILES[self.format])}; missing {missing}")
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
    aliases: list[str] = Field(default_factory=list, description="Other names (case-insensitive), e.g. 'gpt2'.")
    facts: ModelFacts
    lenses: list[LensVersion] = Field(min_length=1)

    @field_validator("model")
    @classmethod
    def _model_id(cls, value: str) -> str:
        return validate_repo_id(value)

    # Field validators rather than a model validator, so that problems are located at `aliases` / `lenses`
    # (a model validator's errors have no location) and are reported even when another field is invalid.
    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str], info: ValidationInfo) -> list[str]:
        lowered = [a.lower() for a in value]
        if len(set(lowered)) != len(lowered):
            raise ValueError(f"aliases repeat (case-insensitively): {value}")
        for alias in value:
            if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", alias):
                raise ValueError(f"alias {alias!r} must look like a model id ('name' or 'org/name')")
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


def registry_json_schema() -> dict:
    """The JSON Schema of a registry file (written to ``registry/schema.json``)."""
    schema = RegistryEntry.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lens-hub registry entry"
    return schema
