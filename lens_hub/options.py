"""The choices of training options, defined once: the trainer's settings and the CLI (which lists them in
``--help`` and refuses anything else) use these. No heavy imports, so ``lens-hub --help`` stays fast."""

from __future__ import annotations

from typing import Literal, get_args

Loss = Literal["kl", "ce"]  # KL(final layer || lens), the paper's; or cross-entropy against the next token
Kernel = Literal["auto", "eager", "triton"]  # softmax/KL implementation; auto: Triton on CUDA where it applies
Optimizer = Literal["sgd", "adam"]  # SGD with Nesterov momentum (the paper's), or AdamW
DType = Literal["auto", "float32", "bfloat16", "float16"]  # dtype to load a base model in

# what a trajectory view colours by: entropy, KL to the final layer, CE against the next token, the target's rank,
# its probability and log-probability
Statistic = Literal["entropy", "kl", "ce", "rank", "prob", "log_prob"]

KERNELS: tuple[str, ...] = get_args(Kernel)
STATISTICS: tuple[str, ...] = get_args(Statistic)
