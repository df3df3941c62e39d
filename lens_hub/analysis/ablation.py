"""Whole-layer ablation: run the model with one block's contribution to the residual stream removed or replaced.

A transformer block adds a residual ``r = block(x) - x`` to its input ``x``. `ablate_layer` replaces that residual
while the context is open, so the block's output becomes:

- ``"zero"``: ``x`` (the block adds nothing);
- ``"mean"``: ``x + mean(r)``, the residual averaged over the batch (``mode="batch"``, per position) or over every
  token of the batch (``mode="token"``): what the block adds on average, without what it adds for this input;
- ``"resample"``: ``x + r'``, where ``r'`` is the residual of another sequence of the batch at the same position
  (``mode="batch"``) or of another token anywhere in the batch (``mode="token"``), by a derangement (every item
  takes another's).

Layer ``i`` is ``hidden_states[i] -> hidden_states[i + 1]``: the block whose *input* a lens reads at layer ``i``.
Ablating it changes ``hidden_states[i + 1]`` (as the model reports it too) and everything after; ``hidden_states[i]``
is untouched. The original
tuned-lens package numbers layers the same way here (its hook sits on the block's output), unlike its subspace
ablation (see docs/coming-from-tuned-lens.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn

from ..core.adapters import find_model_parts
from ..errors import AblationError
from .causal import derangement

METHODS: tuple[str, ...] = ("zero", "mean", "resample")
ABLATION_MODES: tuple[str, ...] = ("batch", "token")


def _replace_residual(
    x: torch.Tensor, y: torch.Tensor, method: str, mode: str, generator: torch.Generator | None
) -> torch.Tensor:
    """The ablated output of a block whose input is ``x`` and output ``y`` (both [batch, seq, d])."""
    if method == "zero":
        return x.clone()
    residual = y - x
    flat = residual.flatten(0, 1) if mode == "token" else residual  # token mode: every token is an item
    if flat.shape[0] < 2:
        what = "tokens" if mode == "token" else "sequences (use mode='token' for one sequence)"
        raise AblationError(f"{method} ablation needs at least two {what} to average or resample; got 1")
    if method == "mean":
        replaced = flat.mean(0, keepdim=True).expand_as(flat)
    else:
        replaced = flat[derangement(flat.shape[0], generator=generator, device=flat.device)]
    return x + replaced.reshape(residual.shape)


@contextmanager
def ablate_layer(
    model: nn.Module,
    layer: int,
    method: Literal["zero", "mean", "resample"] = "resample",
    *,
    mode: Literal["batch", "token"] = "batch",
    generator: torch.Generator | None = None,
) -> Iterator[nn.Module]:
    """Ablate block ``layer`` of ``model`` while the context is open (a forward hook, removed on exit).

    Args:
        model: A Hugging Face causal LM.
        layer: ``0 .. num_layers - 1``: the block from ``hidden_states[layer]`` to ``hidden_states[layer + 1]``.
        method: ``"zero"``, ``"mean"`` or ``"resample"`` (see the module docstring).
        mode: What ``mean`` and ``resample`` range over: ``"batch"`` (other sequences, same position) or ``"token"``
            (every token of the batch).
        generator: Randomness of ``resample`` (default: torch's global generator).

    Yields:
        The model, ablated.

    Raises:
        AblationError: An unknown method or mode, a layer out of range, or a batch too small for ``mean`` or
            ``resample`` (raised by the forward pass).

    Example:
        >>> with ablate_layer(model, 3, "mean"):
        ...     ablated_logits = model(ids).logits
    """
    if method not in METHODS:
        raise AblationError(f"unknown ablation method {method!r}; use one of {', '.join(METHODS)}")
    if mode not in ABLATION_MODES:
        raise AblationError(f"unknown ablation mode {mode!r}; use one of {', '.join(ABLATION_MODES)}")
    blocks = find_model_parts(model).layers
    if not 0 <= layer < len(blocks):
        raise AblationError(f"layer {layer} is out of range: the model has blocks 0..{len(blocks) - 1}")

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        y = output[0] if isinstance(output, tuple) else output
        ablated = _replace_residual(x, y, method, mode, generator)
        return (ablated, *output[1:]) if isinstance(output, tuple) else ablated

    # prepend: transformers records output_hidden_states with its own hooks on the blocks, which must see the
    # ablated output (appended, they would record the clean hidden_states[layer + 1] while later blocks read the other)
    handle = blocks[layer].register_forward_hook(hook, with_kwargs=True, prepend=True)
    try:
        yield model
    finally:
        handle.remove()
