"""Workflows: the whole train -> evaluate -> publish loop as one library call.

``lens-hub train`` and ``lens-hub demo`` both call `train_evaluate_publish`; a script or notebook can too. Each step
is the library's own (`lens_hub.training.data`, `lens_hub.training.train`, `lens_hub.analysis.evaluate`,
`lens_hub.hub.publish`); this module only decides how they connect: how much data to read, what to hold out, and
what the published lens records.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..analysis.evaluate import EvalResult, evaluate, rich_progress
from ..core.ids import validate_repo_id
from ..core.models import quiet_progress
from ..errors import LensHubError
from ..hub.card import public_dataset
from ..hub.mixin import TunedLens
from ..hub.publish import PushResult, push
from ..training.data import TokenData, is_local, load_token_data
from ..training.settings import TrainSettings
from ..training.train import plan_for, restart, train_lens


@dataclass
class WorkflowResult:
    """What `train_evaluate_publish` produced."""

    lens: TunedLens
    out: Path
    data: TokenData  # the training sequences
    evaluation: EvalResult | None = None  # on the held-out sequences (None: nothing held out)
    pushed: PushResult | None = None  # None: not published


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun, only rank 0 evaluates, publishes and talks


def _starting_lens(
    model: nn.Module, settings: TrainSettings, base_model: str | None, allow_mismatch: bool
) -> TunedLens | None:
    """The lens training starts from: ``init_from``'s, or a fresh one when the base model id must be set (else
    `train_lens` builds it)."""
    if base_model is not None:
        try:
            validate_repo_id(base_model)
        except ValueError as exc:
            raise LensHubError(f"base_model: {exc}") from None
    if settings.init_from:
        lens = TunedLens.from_pretrained(settings.init_from, model=model, allow_mismatch=allow_mismatch)
        lens.adopt_model()  # before the id below: a lens of another model names that model until adopted
        if base_model is not None:
            lens.config = lens.config.model_copy(update={"base_model": base_model})
        return lens
    return None if base_model is None else TunedLens.from_model(model, bias=settings.bias, base_model=base_model)


def train_evaluate_publish(
    model: nn.Module,
    tokenizer: Any,
    data: str | os.PathLike[str],
    settings: TrainSettings,
    out: str | os.PathLike[str],
    *,
    base_model: str | None = None,
    text_column: str = "text",
    split: str = "train",
    data_revision: str | None = None,
    heldout: int = 0,
    push_to: str | None = None,
    version: str | None = None,
    registry: str | os.PathLike[str] | None = None,
    fresh: bool = False,
    allow_mismatch: bool = False,
    console: Any = None,
) -> WorkflowResult:
    """Train a tuned lens, evaluate it against the logit lens on held-out text, and optionally publish it.

    Args:
        model: The frozen base model (on the device to train on; sharded already for FSDP).
        tokenizer: Its tokenizer.
        data: Text files or folders, a ``.jsonl`` file, or a Hub dataset ``org/name[:config]`` (streamed and read
            only as far as the run needs).
        settings: The training run (``settings.seq_len`` should already respect the model's maximum).
        out: The lens directory (checkpoints in ``out/checkpoints``; rerunning resumes).
        base_model: Hub id to record as the base model (for a model loaded from a local directory).
        text_column: Text field of ``.jsonl`` files and datasets.
        split: Dataset split.
        data_revision: Branch, tag or commit of a Hub dataset (pinned to a commit and recorded).
        heldout: Sequences held out of training for the evaluation; with ``push_to`` and 0, 5% are held out,
            since a published lens carries its evaluation.
        push_to: Publish the evaluated lens to this Hub repo (``org/name``).
        version: Version to publish (default: the next one).
        registry: Registry directory the published version is recorded in.
        fresh: Discard ``out``'s checkpoints instead of resuming.
        allow_mismatch: Start from ``settings.init_from`` despite a model type, vocabulary or fingerprint mismatch
            (fine-tuning a lens of another model, e.g. a base model's lens for its chat variant; warns).
        console: A rich console for progress (``None``: silent but for the training progress bar's default).

    Raises:
        DataError: The data is missing or too little for the run (before training starts).
        CheckpointError: ``out`` holds checkpoints of a run with other settings.
        PublishError: Publishing was refused (nothing uploaded).
    """
    out = Path(out)
    start = _starting_lens(model, settings, base_model, allow_mismatch)
    if fresh:
        restart(out)
    limit = None
    if not is_local(data):  # a local corpus is read whole (the shuffle covers it); a Hub dataset only as needed
        world = int(os.environ.get("WORLD_SIZE", "1"))
        needed = settings.steps * plan_for(settings, settings.seq_len, world).sequences_per_step
        heldout = heldout or (max(1, needed // 19) if push_to else 0)
        limit = needed + heldout
    tokens = load_token_data(
        str(data),
        tokenizer,
        seq_len=settings.seq_len,
        text_column=text_column,
        split=split,
        revision=data_revision,
        max_sequences=limit,
    )
    main = _main_process()
    if main and console is not None:
        console.print(
            f"{len(tokens.sequences):,} sequences of {settings.seq_len} tokens from {tokens.source} "
            f"({tokens.tokens_per_byte:.3f} tokens/byte)"
        )
    if push_to and not heldout:
        heldout = max(1, len(tokens.sequences) // 20)
    train_tokens, held = tokens.split(heldout) if heldout else (tokens, None)
    # The config records the data by name, never by local path: it is what a published card and entry show.
    dataset = public_dataset(tokens.source)
    lens = train_lens(model, train_tokens, settings, out, lens=start, dataset_name=dataset, console=console)
    result = WorkflowResult(lens=lens, out=out, data=train_tokens)  # type: ignore[arg-type]
    if not main:
        return result
    if held is not None:
        result.evaluation = _evaluate_heldout(model, lens, held, settings, console)
        lens.config = lens.config.model_copy(update={"evaluation": result.evaluation.summary()})
        lens.save(out)
    if push_to:
        with _showing(console, f"Publishing to {push_to}..."):
            result.pushed = push(out, push_to, version=version, registry=registry)
    return result


@contextmanager
def _showing(console: Any, message: str) -> Iterator[None]:
    """One spinner on ``console`` for a long step, with the libraries' own progress bars silenced meanwhile."""
    if console is None:
        yield
        return
    with console.status(message), quiet_progress():
        yield


def _evaluate_heldout(
    model: nn.Module, lens: TunedLens, held: TokenData, settings: TrainSettings, console: Any
) -> EvalResult:
    """Evaluate the trained layers on the held-out sequences (progress on ``console``, if given)."""
    if console is None:
        result = evaluate(model, held, lens, layers=settings.layers)
    else:
        with rich_progress(console, f"evaluating {len(held.sequences)} held-out sequences") as progress:
            result = evaluate(model, held, lens, layers=settings.layers, progress=progress)
    result.dataset = public_dataset(held.source)
    return result
