"""The lens configuration file (``config.json``), as a pydantic model.

It records what the lens is (layers, width, dtype), which model it belongs to (Hub id, revision and the facts the
loader checks: model_type, hidden size, layer count, vocabulary size, unembedding fingerprint), and optionally how
it was trained and how well it does. Unknown keys are refused so a typo cannot silently drop a field.

A config is read from files made by others, so every model here is strict (``"32"`` is not an integer, ``"yes"``
not a boolean, ``true`` not a number; JSON's own types are kept: an integer where a float is expected is fine) and
what it may declare is capped with wide headroom over the largest real models, so that a few bytes cannot make
lens-hub allocate gigabytes: `MAX_HIDDEN_SIZE`, `MAX_LAYERS`, `MAX_VOCAB_SIZE`, and a length limit on every string.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from .._version import __version__
from .ids import check_revision, validate_repo_id

SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "lens.safetensors"

DType = Literal["float32", "float16", "bfloat16"]

# Limits on what a config (or a registry entry, or an old tuned-lens config) may declare. The largest published
# models have hidden sizes of about 20k (PaLM 540B: 18432), 126 layers (Llama 3.1 405B) and vocabularies of 262k
# tokens (Gemma 3); these leave 3.5x, 8x and 16x headroom, while keeping every structure built from a config
# (tensor names, expected shapes) small.
MAX_HIDDEN_SIZE = 65_536
MAX_LAYERS = 1_024
MAX_VOCAB_SIZE = 2**22
# Limits on free text: long enough for any real value, short enough that a hostile file is refused at once.
SHORT_TEXT_MAX = 100  # model_type, loss, optimizer, kernel, versions
DATASET_MAX = 1_000  # a dataset name, or a local path with "(held out)"
NOTES_MAX = 2_000
FINGERPRINT_MAX = 8_192
HYPERPARAMETERS_MAX = 256

# Bidirectional overrides and isolates reorder how text is displayed (the "trojan source" trick).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_text(value: str) -> str:
    """Pydantic validator: free text holds no control characters (but newline and tab) and no bidi overrides.

    Such characters would be replayed into terminals (escape sequences) and pages (reordered text) that show it.
    """
    for i, c in enumerate(value):
        if (unicodedata.category(c) == "Cc" and c not in "\n\t") or c in _BIDI_CONTROLS:
            raise ValueError(f"contains the control character U+{ord(c):04X} at position {i}; remove it")
    return value


def text(max_length: int) -> Any:
    """A free-text string type of at most ``max_length`` characters, checked by `check_text`."""
    return Annotated[str, StringConstraints(max_length=max_length), AfterValidator(check_text)]


def no_bool(value: object) -> object:
    """Pydantic before-validator: ``true`` is not the number 1 (``Literal[1]`` alone would take it, even strict)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


def check_base_revision(value: str | None) -> str | None:
    """Pydantic validator: a base model revision is a safe git ref (it goes into Hub URLs), see `check_revision`."""
    return None if value is None else check_revision(value)


ShortText = text(SHORT_TEXT_MAX)
DatasetText = text(DATASET_MAX)
HubNameText = text(SHORT_TEXT_MAX + 2 * 96)  # "hf://org/name@revision/subfolder" and the like
FingerprintText = text(FINGERPRINT_MAX)
LayerIndex = Annotated[int, Field(ge=0, lt=MAX_LAYERS)]


def check_fingerprint(value: str | None) -> str | None:
    """Pydantic validator: a fingerprint must parse (see `lens_hub.core.fingerprint`)."""
    if value is not None:
        from .fingerprint import parse_fingerprint

        parse_fingerprint(value)
    return value


class _Strict(BaseModel):
    # strict: a config comes from a file, and "32" or "yes" there is a mistake (or an attack), never a number.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TrainingInfo(_Strict):
    """How the lens was trained (provenance): the data, the objective and every hyperparameter, each a field.

    Written by the trainer into the lens config and copied as is into the registry entry and the model card.
    ``hyperparameters`` only holds values of older lens-hub versions, which recorded them as a free mapping.
    """

    dataset: DatasetText | None = None
    init: Literal["fit", "zero", "lens"] | None = Field(
        default=None,
        description="How the translators started: 'fit' (closed-form ridge fit, then `steps` KL steps), 'zero' (the "
        "paper's: the logit lens) or 'lens' (the lens named in `init_from`, or a local one).",
    )
    fit_tokens: int | None = Field(default=None, ge=0, description="Tokens the closed-form fit summarised.")
    fit_ridge: float | None = Field(
        default=None, ge=0, description="Ridge strength of the fit, relative to the mean variance of a layer's states."
    )
    num_tokens: int | None = Field(default=None, ge=0, description="Tokens of the KL (or CE) steps.")
    steps: int | None = Field(default=None, ge=0)
    loss: ShortText | None = Field(default=None, description="Training objective, e.g. 'kl' or 'ce'.")
    layers: list[LayerIndex] | None = Field(
        default=None, max_length=MAX_LAYERS, description="Layers that were trained (None: all)."
    )
    optimizer: ShortText | None = Field(default=None, description="'sgd' (Nesterov) or 'adam' (AdamW).")
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
    init_from: HubNameText | None = Field(
        default=None, description="The Hub lens training started from (a local directory is not recorded)."
    )
    kernel: ShortText | None = Field(default=None, description="Softmax/KL implementation: 'eager' or 'triton'.")
    tokens_per_byte: float | None = Field(default=None, gt=0)
    lens_hub_version: ShortText | None = None
    hyperparameters: dict[ShortText, Any] = Field(
        default_factory=dict,
        max_length=HYPERPARAMETERS_MAX,
        description="Free-form values recorded by earlier lens-hub versions (new runs use the fields).",
    )


class LayerMetrics(_Strict):
    """Per-layer metrics in bits per byte (index i = translator i)."""

    kl: list[float] | None = Field(default=None, max_length=MAX_LAYERS + 1)
    cross_entropy: list[float] | None = Field(default=None, max_length=MAX_LAYERS + 1)
    entropy: list[float] | None = Field(default=None, max_length=MAX_LAYERS + 1)


class EvaluationInfo(_Strict):
    """Evaluation summary of the lens against the logit lens on held-out text."""

    dataset: DatasetText | None = None
    num_tokens: int | None = Field(default=None, ge=0)
    unit: Literal["bits_per_byte"] = "bits_per_byte"
    layers: list[LayerIndex] | None = Field(
        default=None, max_length=MAX_LAYERS, description="Layers the lists refer to (None: all, in order)."
    )
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
    model_type: ShortText | None
    hidden_size: int = Field(gt=0, le=MAX_HIDDEN_SIZE)
    num_layers: int = Field(gt=0, le=MAX_LAYERS, description="Number of translators = number of transformer layers.")
    vocab_size: int | None = Field(gt=0, le=MAX_VOCAB_SIZE)
    bias: bool = True
    dtype: DType = "float32"
    fingerprint: FingerprintText | None = Field(description="Fingerprint of the base model's unembedding.")
    lens_hub_version: ShortText = __version__
    training: TrainingInfo | None = None
    evaluation: EvaluationInfo | None = None

    @field_validator("base_model")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        return None if value is None else validate_repo_id(value)

    _fingerprint = field_validator("fingerprint")(check_fingerprint)
    _base_revision = field_validator("base_revision")(check_base_revision)
    _schema_version = field_validator("schema_version", mode="before")(no_bool)
