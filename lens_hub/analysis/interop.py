"""Lenses on activations recorded by other interpretability libraries: TransformerLens caches and nnsight traces.

A lens reads the Hugging Face residual stream: layer ``i`` reads ``hidden_states[i]``, the stream *before* block
``i`` (``i = 0`` is the embedding output), and the last hidden state is already final-normed. This module turns
what the other libraries record into that convention, and refuses activations that would give silently different
numbers.

TransformerLens (``pip install "lens-hub[transformer-lens]"``, version 4 or later): ``hidden_states[i]`` is
``blocks.{i}.hook_resid_pre`` of a `TransformerBridge` cache, and the final-normed last state is the lens's own
final norm applied to the last block's ``hook_resid_post``. That holds only while the bridge keeps the Hugging
Face weights: ``enable_compatibility_mode()`` (without ``no_processing=True``) and ``process_weights()`` fold layer
norms into the next weights and centre the writing weights and the unembedding, which moves the residual stream.
TransformerLens does not record which of these ran, so `check_transformer_bridge` refuses every processed bridge.

nnsight (``pip install "lens-hub[nnsight]"``): save ``model.output.hidden_states`` in a trace run with
``output_hidden_states=True`` and apply the lens to the saved tensors after the trace, where the lens's weights
are. Only tensors cross the trace boundary, so the same code runs on a remote backend (``remote=True``, NDIF).
`check_saved_hidden_states` checks what came back; `trace_hidden_states` does the whole trace in one call.

Neither library is imported by ``import lens_hub`` or by this module: only the functions that need one import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.lens import Lens
from ..errors import IncompatibleLensError, InteropError, MissingExtraError, ProcessedWeightsError

# The per-block activations a trajectory can read, as TransformerLens names them (hook ``blocks.{i}.hook_<name>``).
RESIDUAL_COMPONENTS: tuple[str, ...] = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")

TRANSFORMER_LENS_INSTALL = 'pip install "lens-hub[transformer-lens]"'
NNSIGHT_INSTALL = 'pip install "lens-hub[nnsight]"'

# Named in every refusal of processed weights: how to get a bridge whose residual stream is Hugging Face's.
_UNPROCESSED_HINT = (
    "Boot a fresh bridge and do not process its weights: TransformerBridge.boot_transformers(name, hf_model=model) "
    "keeps the raw Hugging Face weights (the default), and enable_compatibility_mode(no_processing=True) adds the "
    "legacy hook names without changing them. Do not call enable_compatibility_mode() with its defaults "
    "(fold_ln=True, center_writing_weights=True, center_unembed=True) nor process_weights(). (With TransformerLens "
    "before 4.0 the equivalent was HookedTransformer.from_pretrained_no_processing, or from_pretrained with "
    "fold_ln=False, center_writing_weights=False, center_unembed=False; lens-hub reads TransformerBridge caches.)"
)


def _transformer_bridge_class() -> type:
    """The ``TransformerBridge`` class, imported on first use.

    Raises:
        MissingExtraError: If TransformerLens (4.0 or later, which has ``TransformerBridge``) is not installed.
    """
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as exc:
        raise MissingExtraError(
            f"Reading TransformerLens activations needs TransformerLens 4.0 or later (its TransformerBridge), "
            f"which could not be imported ({exc}). Install it with: {TRANSFORMER_LENS_INSTALL}"
        ) from exc
    return TransformerBridge


def _lens_facts(lens: Lens) -> tuple[int, int, int, str | None]:
    """Hidden size, layer count, vocabulary size and model type of the lens's model (its config for a tuned
    lens, the model itself for the logit lens)."""
    parts = lens.unembed.parts
    config = getattr(lens, "config", None)
    if config is not None:
        vocab = config.vocab_size if config.vocab_size is not None else parts.vocab_size
        return config.hidden_size, config.num_layers, vocab, config.model_type
    return parts.hidden_size, parts.num_layers, parts.vocab_size, parts.model_type


def check_transformer_bridge(bridge: Any, lens: Lens) -> None:
    """Check that a TransformerLens bridge's residual stream is the one ``lens`` was built for.

    The bridge must keep the raw Hugging Face weights (see the module docstring: any weight processing is
    refused, since TransformerLens does not record which transformations ran) and its ``d_model``, ``n_layers``,
    vocabulary and model type must match the lens's.

    Args:
        bridge: The ``transformer_lens.model_bridge.TransformerBridge`` whose cache will be read.
        lens: The lens that will read it.

    Raises:
        MissingExtraError: If TransformerLens 4 is not installed.
        InteropError: If ``bridge`` is missing or not a ``TransformerBridge``, or it does not say whether its
            weights were processed.
        ProcessedWeightsError: If the bridge's weights were processed; the message names the loading options
            that keep them as they are.
        IncompatibleLensError: If the bridge's model does not fit the lens (each mismatch named with both values).
    """
    bridge_class = _transformer_bridge_class()
    if bridge is None:
        raise InteropError(
            "No TransformerBridge to check the activations against: pass model=<the bridge whose run_with_cache "
            "made them> (a plain mapping of activations does not say which model made it)."
        )
    if not isinstance(bridge, bridge_class):
        raise InteropError(
            f"Expected the TransformerLens TransformerBridge that produced the cache, got {type(bridge).__name__}. "
            "Boot one on the lens's model with TransformerBridge.boot_transformers(name, hf_model=model) "
            "(TransformerLens 4.0 replaced HookedTransformer with TransformerBridge)."
        )
    # TransformerLens's own raw-basis analyses (jacobian lens) read this private flag too: it is the only record.
    if not hasattr(bridge, "_weights_processed"):
        raise InteropError(
            f"This TransformerBridge ({type(bridge).__module__}) does not record whether its weights were "
            "processed (no _weights_processed attribute), so lens-hub cannot tell whether its residual stream is "
            "the Hugging Face one. Use a TransformerLens version between 4.0 and the one lens-hub was tested with "
            "(4.3)."
        )
    if bridge._weights_processed:
        raise ProcessedWeightsError(
            [
                "the TransformerBridge's weights were processed (enable_compatibility_mode() or process_weights()): "
                "fold_ln, center_writing_weights and center_unembed change the residual stream the lens reads, and "
                "TransformerLens does not record which of them ran, so every processed bridge is refused"
            ],
            hint=_UNPROCESSED_HINT,
        )
    hidden, layers, vocab, model_type = _lens_facts(lens)
    cfg = bridge.cfg
    bridge_vocab = cfg.d_vocab_out if getattr(cfg, "d_vocab_out", -1) > 0 else cfg.d_vocab
    mismatches = []
    if cfg.d_model != hidden:
        mismatches.append(f"lens expects hidden_size {hidden} but the bridge has d_model {cfg.d_model}")
    if cfg.n_layers != layers:
        mismatches.append(f"lens expects {layers} layers but the bridge has n_layers {cfg.n_layers}")
    if bridge_vocab != vocab:
        mismatches.append(f"lens expects vocab_size {vocab} but the bridge has d_vocab {bridge_vocab}")
    try:
        bridge_type = getattr(bridge.original_model.config, "model_type", None)
    except AttributeError:  # bridges over non-torch drivers expose no Hugging Face model
        bridge_type = None
    if model_type is not None and bridge_type is not None and bridge_type != model_type:
        mismatches.append(f"lens expects model_type {model_type!r} but the bridge wraps a {bridge_type!r} model")
    if mismatches:
        raise IncompatibleLensError(mismatches, hint="Boot the bridge on the Hugging Face model the lens belongs to.")


def hidden_states_from_cache(cache: Any, lens: Lens, *, component: str = "resid_pre") -> tuple[torch.Tensor, ...]:
    """A TransformerLens activation cache as Hugging Face-style hidden states for ``lens``.

    Entry ``i < num_layers`` is ``blocks.{i}.hook_{component}`` (for ``resid_pre`` exactly Hugging Face's
    ``hidden_states[i]``); the last entry is the lens's final norm applied to ``blocks.{num_layers - 1}
    .hook_resid_post``, which is Hugging Face's final-normed last hidden state. The cache is not checked against
    its model here: `check_transformer_bridge` does that (``PredictionTrajectory.from_cache`` calls both).

    Args:
        cache: An ``ActivationCache`` from ``bridge.run_with_cache``, or a mapping of hook names to tensors
            ([batch, positions, d_model], or [positions, d_model] once the batch dimension was removed).
        lens: The lens whose layer count and final norm apply.
        component: Which activation of each block to read, one of `RESIDUAL_COMPONENTS`.

    Returns:
        ``lens.num_layers + 1`` tensors of shape [batch, positions, d_model].

    Raises:
        InteropError: If ``component`` is unknown, a hook is missing from the cache, or the cache has more blocks
            than the lens has layers.
    """
    if component not in RESIDUAL_COMPONENTS:
        raise InteropError(f"unknown residual component {component!r}: choose from {', '.join(RESIDUAL_COMPONENTS)}")
    keys = set(cache.keys())
    n = lens.num_layers

    def get(name: str) -> torch.Tensor:
        if name not in keys:
            raise InteropError(
                f"The cache has no {name!r}: run bridge.run_with_cache(input_ids) without names_filter, or with one "
                f"that keeps the blocks' hook_{component} and the last block's hook_resid_post."
            )
        value = cache[name]
        return value[None] if value.dim() == 2 else value

    if f"blocks.{n}.hook_resid_pre" in keys:
        raise InteropError(
            f"The cache has more blocks than the lens has layers ({n}): read it with a lens of the cached model."
        )
    states = [get(f"blocks.{i}.hook_{component}") for i in range(n)]
    with torch.no_grad():
        states.append(lens.unembed.normalize(get(f"blocks.{n - 1}.hook_resid_post")))
    return tuple(states)


def check_saved_hidden_states(saved: Any, lens: Lens) -> tuple[torch.Tensor, ...]:
    """Check the hidden states saved in an nnsight trace (``model.output.hidden_states.save()``) for ``lens``.

    Args:
        saved: What the saved variable holds after the trace has exited.
        lens: The lens that will read the hidden states.

    Returns:
        The hidden states as a tuple of ``lens.num_layers + 1`` tensors (Hugging Face's convention), ready for
        ``lens(hidden[i], i)`` or ``PredictionTrajectory.from_hidden_states``.

    Raises:
        InteropError: If nothing was saved (the trace ran without ``output_hidden_states=True``), the value is not
            a sequence of tensors, or the count or width does not fit the lens; each message says what to change.
    """
    if saved is None:
        raise InteropError(
            "The saved hidden states are None: pass output_hidden_states=True to model.trace(...), so that the "
            "model's output holds them."
        )
    if isinstance(saved, torch.Tensor) or not isinstance(saved, Sequence):
        raise InteropError(
            f"Expected the tuple saved from model.output.hidden_states, got a {type(saved).__name__}: save "
            "model.output.hidden_states (all layers), not one layer's output."
        )
    states = tuple(saved)
    hidden, layers, _, _ = _lens_facts(lens)
    if len(states) != layers + 1:
        raise InteropError(
            f"{len(states)} hidden states were saved but the lens reads {layers + 1} (the embedding output and "
            f"{layers} layers): trace the model the lens belongs to."
        )
    for i, h in enumerate(states):
        if not isinstance(h, torch.Tensor):
            raise InteropError(
                f"Saved hidden state {i} is a {type(h).__name__}, not a tensor: save it with .save() inside the "
                "trace and read it after the trace has exited."
            )
        if h.shape[-1] != hidden:
            raise InteropError(
                f"Saved hidden state {i} has width {h.shape[-1]} but the lens expects hidden_size {hidden}: trace "
                "the model the lens belongs to."
            )
    return states


def trace_hidden_states(
    traced_model: Any, inputs: Any, lens: Lens, *, remote: bool = False, **trace_kwargs: Any
) -> tuple[torch.Tensor, ...]:
    """Run one nnsight trace that saves every hidden state, and check them for ``lens``.

    The trace only saves ``model.output.hidden_states``; the lens is applied by the caller, locally, to the
    tensors returned. So ``remote=True`` (NDIF) sends nothing of the lens to the server.

    Args:
        traced_model: An nnsight model wrapping the lens's base model (e.g. ``nnsight.TransformersModel(model,
            tokenizer=tokenizer, task="text-generation")``).
        inputs: What ``traced_model.trace`` accepts: a string, a list of strings, or token ids.
        lens: The lens that will read the hidden states.
        remote: Run the trace on the remote backend (NDIF) instead of locally.
        **trace_kwargs: Passed on to ``traced_model.trace`` (``output_hidden_states`` is always set).

    Returns:
        ``lens.num_layers + 1`` tensors in Hugging Face's convention (see `check_saved_hidden_states`).

    Raises:
        MissingExtraError: If nnsight is not installed.
        InteropError: If the trace did not return hidden states that fit the lens.
    """
    try:
        import nnsight
    except ImportError as exc:
        raise MissingExtraError(
            f"Tracing with nnsight needs nnsight, which could not be imported ({exc}). Install it with: "
            f"{NNSIGHT_INSTALL}"
        ) from exc
    # nnsight.save, not .save(): the method is mounted on every object only when nnsight's PYMOUNT option is on.
    with traced_model.trace(inputs, output_hidden_states=True, remote=remote, **trace_kwargs):
        saved = nnsight.save(traced_model.output.hidden_states)
    return check_saved_hidden_states(saved, lens)
