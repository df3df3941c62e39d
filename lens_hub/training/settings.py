"""The settings of a training run, declared once: `TrainSettings` is what the trainer runs, what the command line
builds from its options (same names, same defaults) and what the lens's provenance records.

Free of torch, so that `lens-hub --help` can read the defaults without importing it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.options import DEFAULT_RIDGE, PAPER, POLISH, Init, Kernel, Loss, Optimizer
from ..errors import TrainSettingsError

LOGGERS = ("tensorboard", "wandb", "jsonl")


@dataclass
class TrainSettings:
    """Everything that defines a training run (recorded in the lens config and in checkpoints).

    ``steps``, ``tokens_per_step``, ``optimizer`` and ``lr`` left ``None`` take the recipe's value: `POLISH` after a
    closed-form fit (the default), `PAPER` with ``init="zero"`` or when fine-tuning a lens given in ``init_from``.

    Settings check themselves when built, before any model loads: contradictions raise here, not mid-run.

    Raises:
        TrainSettingsError: ``init`` and ``init_from`` both given (they are alternatives), an unknown logger,
            ``kernel="triton"`` with a loss it does not compute, or ``bias_only`` without biases.
    """

    init: Init | None = None  # "fit" (None: the default, unless init_from names a lens) or "zero" (the paper's)
    steps: int | None = None  # KL steps (after a fit: polish steps; 0 keeps the fit as it is)
    tokens_per_step: int | None = None
    seq_len: int = 2048
    batch_size: int = 8  # sequences per forward pass (per process)
    optimizer: Optimizer | None = None
    lr: float | None = None  # effective learning rate; None: the recipe's for the optimizer
    momentum: float = 0.9
    weight_decay: float = 1e-3
    warmup_steps: int = 0
    grad_clip: float = 1.0
    loss: Loss = "kl"
    layers: list[int] | None = None  # None: all
    bias_only: bool = False
    bias: bool = True
    init_from: str | None = None
    fit_tokens: int | None = None  # None: all the training data, up to DEFAULT_FIT_TOKENS
    fit_ridge: float = DEFAULT_RIDGE  # the fit's ridge, relative to the mean variance of a layer's states
    fit_memory: int | None = None  # bytes the fit's moments may use (None: half of what is free)
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    kernel: Kernel = "auto"  # softmax/KL implementation (lens_hub.training.losses)
    log: list[str] = field(default_factory=list)  # any of LOGGERS
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.init is not None and self.init_from is not None:
            raise TrainSettingsError(
                f"init={self.init!r} and init_from={self.init_from!r} are alternatives: a run starts from a fit, from "
                "zero, or from a lens; pass only one (init or init_from; --init or --init-from)."
            )
        recipe = self.recipe
        for name in ("steps", "tokens_per_step", "optimizer"):
            if getattr(self, name) is None:
                setattr(self, name, recipe[name])
        unknown = [kind for kind in self.log if kind not in LOGGERS]
        if unknown:
            raise TrainSettingsError(f"unknown logger {unknown[0]!r} (log, --log); use {', '.join(LOGGERS)}")
        if self.kernel == "triton" and self.loss != "kl":
            raise TrainSettingsError(
                f"kernel='triton' (--kernel triton) computes the KL loss only, not loss={self.loss!r}; use "
                "kernel='auto' or 'eager'"
            )
        if self.bias_only and not self.bias:
            raise TrainSettingsError("bias_only (--bias-only) trains the biases, but bias=False gives the lens none")

    def check_device(self, device: object) -> None:
        """Refuse settings that cannot run on ``device`` (run before loading a model, which takes the longest).

        Raises:
            TrainSettingsError: ``kernel="triton"`` off CUDA (unless Triton's interpreter is on, for tests).
        """
        kind = str(device).split(":")[0]
        if self.kernel == "triton" and kind != "cuda" and not (kind == "cpu" and os.environ.get("TRITON_INTERPRET")):
            raise TrainSettingsError(
                f"kernel='triton' (--kernel triton) runs on CUDA devices, not {device}; use kernel='auto' or 'eager'"
            )

    @property
    def initialisation(self) -> Literal["fit", "zero", "lens"]:
        """How the translators start: fitted in closed form, zero (the logit lens), or from the lens in init_from."""
        if self.init_from is not None:
            return "lens"
        return self.init or "fit"

    @property
    def recipe(self) -> dict[str, Any]:
        """The defaults this run's initialisation implies: `POLISH` after a fit, else `PAPER`."""
        return POLISH if self.initialisation == "fit" else PAPER

    @property
    def learning_rate(self) -> float:
        """``lr``, or the recipe's for the optimizer (after a fit: scaled down for polishes of few steps)."""
        if self.lr is not None:
            return self.lr
        recipe = self.recipe
        short = min(1.0, self.steps / recipe["full_lr_steps"]) if "full_lr_steps" in recipe else 1.0
        return recipe["lr"][self.optimizer] * short

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(TrainSettings) if f.default is not dataclasses.MISSING
}
"""Each setting's default (those with a plain default), for the command line's options."""
