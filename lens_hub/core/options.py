"""The choices of training options, defined once: the trainer's settings and the CLI (which lists them in
``--help`` and refuses anything else) use these. No heavy imports, so ``lens-hub --help`` stays fast."""

from __future__ import annotations

from typing import Any, Literal, get_args

Loss = Literal["kl", "ce"]  # KL(final layer || lens), the paper's; or cross-entropy against the next token
Status = Literal["verified", "unverified", "deprecated"]  # of a registry lens version
Kernel = Literal["auto", "eager", "triton"]  # softmax/KL implementation; auto: Triton on CUDA where it applies
Optimizer = Literal["sgd", "adam"]  # SGD with Nesterov momentum (the paper's), or AdamW
Init = Literal[
    "fit", "zero"
]  # translators fitted in closed form (lens_hub.training.fit), or zero (the paper's: the logit lens)
DType = Literal["auto", "float32", "bfloat16", "float16"]  # dtype to load a base model in

# what a trajectory view colours by: entropy, KL to the final layer, CE against the next token, the target's rank,
# its probability and log-probability
Statistic = Literal["entropy", "kl", "ce", "rank", "prob", "log_prob"]

KERNELS: tuple[str, ...] = get_args(Kernel)
STATISTICS: tuple[str, ...] = get_args(Statistic)

# The two training recipes' defaults (lens_hub.training.settings.TrainSettings fills the settings left None from them).
# PAPER is tuned-lens's, kept for reproduction; POLISH follows the closed-form fit and was chosen by measurement
# (bench/RESULTS.md, "The polish"). Learning rates are per optimizer. A polish shorter than "full_lr_steps" scales its
# default learning rate down in proportion: AdamW moves every weight by about lr a step, which in a few steps
# overshoots the late layers, whose fit is already close (measured on SmolLM2).
PAPER: dict[str, Any] = {"steps": 250, "tokens_per_step": 1 << 18, "optimizer": "sgd", "lr": {"sgd": 0.1, "adam": 1e-3}}
POLISH: dict[str, Any] = {
    "steps": 40,
    "tokens_per_step": 1 << 16,
    "optimizer": "adam",
    "lr": {"sgd": 0.1, "adam": 1e-3},
    "full_lr_steps": 10,
}
# The closed-form fit (lens_hub.training.fit): its ridge, relative to the mean variance of a layer's hidden states,
# and the tokens it reads when not told (all the training data up to this many).
DEFAULT_RIDGE = 1e-3
DEFAULT_FIT_TOKENS = 1 << 20
