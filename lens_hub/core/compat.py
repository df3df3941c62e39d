"""Compatibility checks between a lens's recorded facts and a model, run before any lens tensor is read."""

from __future__ import annotations

import warnings
from typing import Protocol

from ..errors import IncompatibleLensError, LensCompatibilityWarning
from .adapters import ModelParts
from .config import LensConfig
from .fingerprint import compare_fingerprints


class RecordedFacts(Protocol):
    """What a lens records about its model: a `LensConfig`, or a registry entry's facts (``None``: unknown)."""

    model_type: str | None
    hidden_size: int | None
    num_layers: int | None
    vocab_size: int | None
    fingerprint: str | None


def structural_mismatches(config: RecordedFacts, hidden_size: int | None, num_layers: int | None) -> list[str]:
    """The hidden size and layer count a lens records that differ from a model's (each compared where both are
    known), named with both values: no lens runs on such a model."""
    model = {"hidden_size": hidden_size, "num_layers": num_layers}
    return [
        f"lens expects {fact} {getattr(config, fact)} but the model has {value}"
        for fact, value in model.items()
        if value is not None and getattr(config, fact) is not None and getattr(config, fact) != value
    ]


def find_mismatches(config: RecordedFacts, parts: ModelParts) -> tuple[list[str], list[str]]:
    """Compare what a lens records (its config, or its registry entry's facts) with a model.

    Facts recorded as ``None`` are not known, so they are not compared.

    Returns:
        ``(structural, other)``: structural mismatches (hidden size, layer count) make the lens unusable on this
        model; the others (model type, vocabulary, weights) make its output meaningless but not impossible.
    """
    structural = structural_mismatches(config, parts.hidden_size, parts.num_layers)
    other = []
    if config.model_type is not None and config.model_type != parts.model_type:
        other.append(f"lens expects model_type {config.model_type!r} but the model has {parts.model_type!r}")
    if config.vocab_size is not None and config.vocab_size != parts.vocab_size:
        other.append(f"lens expects vocab_size {config.vocab_size} but the model has {parts.vocab_size}")
    if config.fingerprint is not None and not structural:
        other += [
            f"unembedding fingerprint differs: {p}" for p in compare_fingerprints(config.fingerprint, parts.fingerprint)
        ]
    return structural, other


def check_compatibility(config: LensConfig, parts: ModelParts, *, allow_mismatch: bool = False) -> None:
    """Raise `IncompatibleLensError` if the lens does not fit the model.

    Args:
        config: The lens's config.
        parts: The located parts of the model the lens is being applied to.
        allow_mismatch: Expert opt-out: downgrade model_type, vocabulary and fingerprint mismatches to a
            `LensCompatibilityWarning`. Hidden size and layer count mismatches always raise, since the
            lens's tensors cannot be applied at all.
    """
    structural, other = find_mismatches(config, parts)
    base = f" (trained for {config.base_model})" if config.base_model else ""
    if structural:
        raise IncompatibleLensError(
            structural + other,
            hint=f"The lens{base} was made for a different architecture; this cannot be overridden.",
        )
    if other and not allow_mismatch:
        raise IncompatibleLensError(
            other,
            hint=f"Load the lens{base} with its own base model, or pass allow_mismatch=True (--allow-mismatch on the "
            "command line) if you know the difference is harmless (for example an embedding matrix padded for speed).",
        )
    for line in other:
        warnings.warn(f"Lens loaded despite a mismatch: {line}", LensCompatibilityWarning, stacklevel=3)
