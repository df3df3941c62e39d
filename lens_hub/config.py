"""The lens configuration file (``config.json``), as a pydantic model.

It records what the lens is (layers, width, dtype), which model it belongs to (Hub id, revision and the facts the
loader checks: model_type, hidden size, layer count, vocabulary size, unembedding fingerprint), and optionally how
it was trained and how well it does. Unknown keys are refused so a typo cannot silently drop a field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._version import __version__
from .ids import validate_repo_id

SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "lens.safetensors"

DType = Literal["float32", "float16", "bfloat16"]


def check_fingerprint(value: str | None) -> str | None:
    """Pydantic validator: a fingerprint must parse (see `lens_hub.fingerprint`)."""
    if value is not None:
        from .fingerprint import parse_fingerprint

        parse_fingerprint(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingInfo(_Strict):
    """How the lens was trained (provenance): the data, the objective and every hyperparameter, each a field.

    Written by the trainer into the lens config and copied as is into the registry entry and the model card.
    ``hyperparameters`` only holds values of older lens-hub versions, which recorded them as a free mapping.
    """

    dataset: str | None = None
    num_tokens: int | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=0)
    loss: str | None = Field(default=None, description="Training objective, e.g. 'kl' or 'ce'.")
    layers: list[int] | None = Field(default=None, description="Layers that were trained (None: all).")
    optimizer: str | None = Field(default=None, description="'sgd' (Nesterov) or 'adam' (AdamW).")
    learning_rate: float | None = Field(default=None, ge=0)
    momentum: float | None = Field(default=None, ge=0)
    weight_decay: float | None = Field(default=None, ge=0)
    warmup_steps: int | None = Field(default=None, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    tokens_per_step: int | None = Field(default=None, gt=0)
    seq_len: int | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0, description="Sequences per forward pass and process.")
    world_size: int | None = Field(default=None, gt=0)
    seed: int | None = None
    bias_only: bool | None = None
    init_from: str | None = Field(
        default=None, description="The Hub lens training started from (a local directory is not recorded)."
    )
    kernel: str | None = Field(default=None, description="Softmax/KL implementation: 'eager' or 'triton'.")
    tokens_per_byte: float | None = Field(default=None, gt=0)
    lens_hub_version: str | None = None
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form values recorded by earlier lens-hub versions (new runs use the fields).",
    )


class LayerMetrics(_Strict):
    """Per-layer metrics in bits per byte (index i = translator i)."""

    kl: list[float] | None = None
    cross_entropy: list[float] | None = None
    entropy: list[float] | None = None


class EvaluationInfo(_Strict):
    """Evaluation summary of the lens against the logit lens on held-out text."""

    dataset: str | None = None
    num_tokens: int | None = Field(default=None, ge=0)
    unit: Literal["bits_per_byte"] = "bits_per_byte"
    layers: list[int] | None = Field(default=None, description="Layers the lists refer to (None: all, in order).")
    tuned: LayerMetrics
    logit: LayerMetrics
    model_cross_entropy: float | None = None


class LensConfig(_Strict):
    """Contents of a lens directory's ``config.json``.

    ``model_type``, ``vocab_size`` and ``fingerprint`` may be ``None`` only for a lens converted from the old
    format without its model at hand; the loader then skips those checks and says so.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    lens_type: Literal["tuned"] = "tuned"
    base_model: str | None = Field(description="Hub id of the base model (never a local path).")
    base_revision: str | None = Field(default=None, description="Commit of the base model the lens fits.")
    model_type: str | None
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0, description="Number of translators = number of transformer layers.")
    vocab_size: int | None = Field(gt=0)
    bias: bool = True
    dtype: DType = "float32"
    fingerprint: str | None = Field(description="Fingerprint of the base model's unembedding.")
    lens_hub_version: str = __version__
    training: TrainingInfo | None = None
    evaluation: EvaluationInfo | None = None

    @field_validator("base_model")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_repo_id(value)

    _fingerprint = field_validator("fingerprint")(check_fingerprint)
