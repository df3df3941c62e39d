"""Model adapters: find the pieces of a causal LM that a lens needs.

A lens needs three things from its model: the stack of transformer layers (to count them), the final norm and the
output embedding (which together form the *unembedding*), plus whatever the family applies to the logits after the
output embedding (soft-capping, scaling). Instead of a hard-coded list of classes, we probe well-known attribute
paths on the model's base module; anything unusual is described by an explicit `ArchitectureSpec`.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError
from .models import text_config

# Paths are tried in order, relative to `model.base_model` (e.g. `model.model` for Llama, `model.transformer`
# for GPT-2). The first hit wins, so more specific paths come first.
LAYER_PATHS: tuple[str, ...] = ("layers", "h", "decoder.layers", "blocks", "language_model.layers")
FINAL_NORM_PATHS: tuple[str, ...] = (
    "norm",
    "ln_f",
    "final_layer_norm",
    "final_layernorm",
    "decoder.final_layer_norm",
    "norm_f",
    "language_model.norm",
)
# Applied between the final norm and the output embedding (OPT-350m projects 1024 -> 512 here).
POST_NORM_PATHS: tuple[str, ...] = ("decoder.project_out",)


@dataclass(frozen=True)
class ArchitectureSpec:
    """Explicit attribute paths for a model the probing rules do not cover.

    Paths are dotted attribute names relative to the top-level model (``"model.layers"``, ``"transformer.ln_f"``).
    Leave a field ``None`` to probe it as usual.

    Args:
        layers: Path of the ``nn.ModuleList`` of transformer blocks.
        final_norm: Path of the norm applied to the last block's output. Use ``""`` for a model without one.
        output_embedding: Path of the output embedding (``lm_head``); defaults to ``get_output_embeddings()``.
        post_norm: Path of a module applied after the final norm and before the output embedding, if any.
    """

    layers: str | None = None
    final_norm: str | None = None
    output_embedding: str | None = None
    post_norm: str | None = None


def _get_path(root: nn.Module, path: str) -> object:
    """The object at dotted ``path`` below ``root``; raises ``AttributeError`` (the probe loop skips such paths)."""
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# How many existing attribute paths a wrong-path message lists: enough to spot the right one, short enough to read.
_MAX_LISTED = 8


def _missing_part_message(cls: str, field: str, path: str, reached: list[str], part: str, obj: object) -> str:
    """Explain why ``path`` (``ArchitectureSpec.<field>``) failed at ``part``, below the already ``reached`` parts.

    Lists the child modules of the last object reached (the attribute paths that do exist there) and, when one
    is close to ``part``, suggests it: a typo is the usual cause.
    """
    at = ".".join(reached)
    where = f"{at!r} ({type(obj).__name__})" if at else cls
    children = [name for name, _ in obj.named_children()] if isinstance(obj, nn.Module) else []
    message = f"{cls} has no attribute path {path!r} (given as ArchitectureSpec.{field}): {where} has no {part!r}."
    if not children:
        return f"{message} It has no child modules."
    full = [f"{at}.{name}" if at else name for name in children]
    listed = ", ".join(full[:_MAX_LISTED]) + (f" and {len(full) - _MAX_LISTED} more" if len(full) > _MAX_LISTED else "")
    message = f"{message} Attribute paths that exist there: {listed}."
    close = difflib.get_close_matches(part, children, n=1)
    if close:
        message += f" Did you mean {(f'{at}.' if at else '') + close[0]!r}?"
    return message


def _resolve_explicit(model: nn.Module, field: str, path: str) -> object:
    """The object at ``path`` below ``model``, given as ``ArchitectureSpec.<field>``.

    Raises:
        UnsupportedArchitectureError: If a part of the path does not exist; the message names the field, the path,
            the part that failed and the attribute paths that exist where it failed.
    """
    obj: object = model
    reached: list[str] = []
    for part in path.split("."):
        try:
            child = getattr(obj, part)
        except AttributeError:
            raise UnsupportedArchitectureError(
                _missing_part_message(type(model).__name__, field, path, reached, part, obj)
            ) from None
        obj = child
        reached.append(part)
    return obj


def _check_explicit_kind(field: str, path: str, obj: object, kind: type, *, allow_none: bool) -> None:
    """Refuse an explicit path that resolved to an object of the wrong type for ``ArchitectureSpec.<field>``."""
    if obj is None and allow_none:
        return
    if not isinstance(obj, kind):
        raise UnsupportedArchitectureError(
            f"ArchitectureSpec.{field}={path!r} points at a {type(obj).__name__}, expected {kind.__name__}."
        )


def _probe(root: nn.Module, paths: tuple[str, ...], kind: type | tuple[type, ...]) -> tuple[str, object] | None:
    for path in paths:
        try:
            obj = _get_path(root, path)
        except AttributeError:
            continue
        if obj is None or isinstance(obj, kind):
            return path, obj
    return None


@dataclass
class ModelParts:
    """The pieces of a causal LM that a lens uses, located once.

    The modules are the model's own (shared, never copied): a lens holds references, so a tied embedding matrix
    of an 8B model costs no extra memory.
    """

    model: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module | None
    post_norm: nn.Module | None
    output_embedding: nn.Module
    logit_softcap: float | None
    logit_scale: float | None
    logit_divisor: float | None

    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", type(self.model).__name__))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        size = getattr(text_config(self.model.config), "hidden_size", None)
        if size is None:  # no config attribute: the head's input is the residual stream
            size = self.output_embedding.weight.shape[1]
        return int(size)

    @property
    def vocab_size(self) -> int:
        # The head's rows, not config.vocab_size: they differ after resize_token_embeddings with padding.
        return int(self.output_embedding.weight.shape[0])

    def named_unembedding_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the unembedding depends on, by a stable name (used for the fingerprint)."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in (
            ("final_norm", self.final_norm),
            ("post_norm", self.post_norm),
            ("output_embedding", self.output_embedding),
        ):
            if module is None:
                continue
            for name, tensor in module.named_parameters():
                tensors[f"{prefix}.{name}"] = tensor
        return tensors

    @cached_property
    def fingerprint(self) -> str:
        """Fingerprint of the unembedding (see `lens_hub.core.fingerprint`), computed once per ``ModelParts``."""
        from .fingerprint import fingerprint_tensors

        return fingerprint_tensors(self.named_unembedding_tensors())

    @property
    def base_model_id(self) -> str | None:
        """The Hub id the model was loaded from, or ``None`` if it came from a local path."""
        name = getattr(self.model.config, "_name_or_path", None) or getattr(self.model, "name_or_path", None)
        if not name or os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name):
            return None
        return str(name)

    @property
    def base_revision(self) -> str | None:
        """The commit the model's files were resolved to, when transformers recorded it."""
        commit = getattr(self.model.config, "_commit_hash", None)
        return str(commit) if commit else None


def find_model_parts(model: nn.Module, architecture: ArchitectureSpec | None = None) -> ModelParts:
    """Locate the layers, final norm and output embedding of a Hugging Face causal LM.

    Args:
        model: A causal language model (e.g. from ``AutoModelForCausalLM.from_pretrained``).
        architecture: Explicit paths for a model the built-in probes do not cover.

    Returns:
        The located `ModelParts`.

    Raises:
        UnsupportedArchitectureError: If a required piece cannot be found; the message lists the paths tried and
            how to pass an `ArchitectureSpec`.
    """
    spec = architecture or ArchitectureSpec()
    base = getattr(model, "base_model", None) or model
    prefix = next((n for n, m in model.named_modules() if m is base), "")
    cls = type(model).__name__

    def locate(field: str, paths: tuple[str, ...], kind: type) -> object:
        explicit = getattr(spec, field)
        if explicit is not None:
            if explicit == "":
                return None
            obj = _resolve_explicit(model, field, explicit)
            _check_explicit_kind(field, explicit, obj, kind, allow_none=True)
            return obj
        found = _probe(base, paths, kind)
        if found is None:
            tried = ", ".join(f"{prefix + '.' if prefix else ''}{p}" for p in paths)
            raise UnsupportedArchitectureError(
                f"Could not find the {field.replace('_', ' ')} of {cls} (model_type "
                f"{getattr(model.config, 'model_type', '?')!r}); tried {tried}. Pass "
                f"architecture=ArchitectureSpec({field}='<dotted.path>') to name it explicitly."
            )
        return found[1]

    layers = locate("layers", LAYER_PATHS, nn.ModuleList)
    if layers is None or len(layers) == 0:
        raise UnsupportedArchitectureError(f"{cls} has an empty layer stack; a lens needs at least one layer.")
    final_norm = locate("final_norm", FINAL_NORM_PATHS, nn.Module)
    post = spec.post_norm
    if post:
        post_norm = _resolve_explicit(model, "post_norm", post)
        # None is accepted like the probe accepts it: OPT's project_out is None when no projection is needed.
        _check_explicit_kind("post_norm", post, post_norm, nn.Module, allow_none=True)
    else:
        post_norm = (_probe(base, POST_NORM_PATHS, nn.Module) or (None, None))[1]

    if spec.output_embedding:
        path = spec.output_embedding
        head = _resolve_explicit(model, "output_embedding", path)
        _check_explicit_kind("output_embedding", path, head, nn.Module, allow_none=False)
        if not isinstance(getattr(head, "weight", None), torch.Tensor):
            raise UnsupportedArchitectureError(
                f"ArchitectureSpec.output_embedding={path!r} points at a {type(head).__name__} without a weight "
                "tensor; expected the output embedding (lm_head), whose weight is the [vocab, hidden] matrix."
            )
    else:
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module) or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise UnsupportedArchitectureError(
            f"{cls} has no output embedding with a weight matrix (get_output_embeddings() returned "
            f"{type(head).__name__}). Is this a causal LM (AutoModelForCausalLM)? Otherwise pass "
            "architecture=ArchitectureSpec(output_embedding='<dotted.path>')."
        )

    text = text_config(model.config)
    softcap = getattr(text, "final_logit_softcapping", None)  # Gemma 2/3
    scale = getattr(text, "logit_scale", None)  # Cohere multiplies the logits
    divisor = getattr(text, "logits_scaling", None)  # Granite divides them
    return ModelParts(
        model=model,
        layers=layers,  # type: ignore[arg-type]
        final_norm=final_norm,  # type: ignore[arg-type]
        post_norm=post_norm,  # type: ignore[arg-type]
        output_embedding=head,
        logit_softcap=float(softcap) if softcap else None,
        logit_scale=float(scale) if scale is not None else None,
        logit_divisor=float(divisor) if divisor is not None else None,
    )
