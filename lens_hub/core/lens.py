"""Lens math: the logit lens and the tuned lens.

This is the core of lens-hub: it knows models (through `lens_hub.core.adapters`) and the lens directory format,
never the Hub or the registry. ``lens_hub.TunedLens`` is this class plus the Hub methods of `lens_hub.hub.mixin`.

A lens maps a hidden state ``h = hidden_states[i]`` (the input of block ``i``; ``i = 0``: the embedding output) to
logits. The logit lens applies the model's own unembedding (final norm, output embedding, and any logit
post-processing). The tuned lens first applies an affine translator, ``h + W_i h + b_i``; W and b start at zero,
so an untrained tuned lens *is* the logit lens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import torch
from torch import nn

from ..errors import LensFormatError
from .adapters import ArchitectureSpec, ModelParts, find_model_parts
from .compat import check_compatibility
from .config import WEIGHTS_NAME, LensConfig
from .format import TORCH_DTYPES, dtype_name, nonfinite_tensors, read_config, read_tensors, write_lens_dir


@dataclass
class Inversion:
    """Result of `Unembed.invert`."""

    hidden: torch.Tensor
    """The raw (un-normalised) residual-stream states found, ``[..., d]``; ``unembed(hidden)`` approximates the
    target."""
    kl: torch.Tensor
    """KL(target || unembed(hidden)) per row, in nats, ``[...]``."""
    steps: int
    """Objective evaluations the optimiser made."""


class Unembed:
    """The model's own unembedding: final norm -> output embedding -> logit post-processing.

    Holds references to the model's modules (never copies), and is deliberately not an ``nn.Module``: the lens's
    ``state_dict``, ``parameters()`` and ``.to()`` then cover only the lens's own tensors.
    """

    def __init__(self, parts: ModelParts) -> None:
        self.parts = parts

    @property
    def dtype(self) -> torch.dtype:
        return self.parts.output_embedding.weight.dtype

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """Apply the final norm (and OPT-style output projection) to a raw residual-stream state."""
        h = h.to(self.dtype)
        if self.parts.final_norm is not None:
            h = self.parts.final_norm(h)
        if self.parts.post_norm is not None:
            h = self.parts.post_norm(h)
        return h

    @property
    def has_postprocessing(self) -> bool:
        """Whether the family transforms the logits after the output embedding (scaling, soft-capping)."""
        p = self.parts
        return p.logit_scale is not None or p.logit_divisor is not None or p.logit_softcap is not None

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Output embedding plus logit post-processing, for an already normalised state."""
        return self.postprocess(self.parts.output_embedding(h.to(self.dtype)))

    def postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        """The family's logit post-processing (identity for most)."""
        # Same operations, in the same order, as the transformers implementations, so results match bit for bit.
        if self.parts.logit_scale is not None:
            logits = logits * self.parts.logit_scale
        if self.parts.logit_divisor is not None:
            logits = logits / self.parts.logit_divisor
        if self.parts.logit_softcap is not None:
            logits = torch.tanh(logits / self.parts.logit_softcap) * self.parts.logit_softcap
        return logits

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """Logits for a raw (un-normalised) residual-stream state."""
        return self.head(self.normalize(h))

    def invert(
        self, logits: torch.Tensor, *, h0: torch.Tensor | None = None, max_steps: int = 200, tol: float = 1e-7
    ) -> Inversion:
        """Find raw hidden states whose unembedding predicts the distribution of ``logits``: logits back to a state.

        Minimises KL(softmax(logits) || softmax(unembed(h))) over h with L-BFGS. The unembedding maps d numbers to
        ``vocab`` logits, so most distributions have no exact preimage (the softmax bottleneck): the result is the
        closest state in that sense, and ``kl`` says how close.

        Args:
            logits: Target logits, ``[..., vocab]``.
            h0: Starting states, ``[..., d]``. Default: the least-squares solution of ``W x = logits - mean`` for
                the output embedding W (exact for a model without final norm, and a good start otherwise).
            max_steps: Most objective evaluations.
            tol: Stop when the mean KL changes by less than this between steps.

        Raises:
            ValueError: ``logits`` does not end in the vocabulary size, or ``h0`` has the wrong shape.
        """
        parts = self.parts
        if logits.shape[-1] != parts.vocab_size:
            raise ValueError(f"logits end in {logits.shape[-1]} entries, the vocabulary has {parts.vocab_size}")
        shape = (*logits.shape[:-1], parts.hidden_size)
        weight = parts.output_embedding.weight.detach().float()  # [vocab, d]
        target = logits.detach().float()
        if h0 is None:
            centred = (target - target.mean(-1, keepdim=True)).reshape(-1, target.shape[-1])
            gram = weight.T @ weight
            gram.diagonal().add_(1e-6 * gram.diagonal().mean())  # tied or low-rank embeddings stay solvable
            h0 = torch.linalg.solve(gram, weight.T @ centred.T).T.reshape(shape)
        elif tuple(h0.shape) != shape:
            raise ValueError(f"h0 has shape {tuple(h0.shape)}; logits of shape {tuple(logits.shape)} need {shape}")
        log_p = target.log_softmax(-1)
        p = log_p.exp()
        h = h0.detach().float().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([h], max_iter=max_steps, tolerance_change=tol, line_search_fn="strong_wolfe")
        steps = 0

        def objective() -> torch.Tensor:
            nonlocal steps
            steps += 1
            log_q = self(h).float().log_softmax(-1)
            loss = (p * (log_p - log_q)).sum(-1).mean()
            # the gradient of h only: backward() would also fill the model's own .grad fields
            (h.grad,) = torch.autograd.grad(loss, h)
            return loss.detach()

        with torch.enable_grad():
            optimizer.step(objective)
        with torch.no_grad():
            kl = (p * (log_p - self(h).float().log_softmax(-1))).sum(-1)
        return Inversion(hidden=h.detach(), kl=kl, steps=steps)


class Lens(nn.Module):
    """Common interface of `LogitLens` and `BaseTunedLens`."""

    def __init__(self, parts: ModelParts) -> None:
        super().__init__()
        self.unembed = Unembed(parts)

    @property
    def num_layers(self) -> int:
        """Number of layers the lens reads (hidden_states[0 .. num_layers - 1])."""
        return self.unembed.parts.num_layers

    def _check_index(self, idx: int) -> None:
        if not 0 <= idx < self.num_layers:
            raise IndexError(
                f"layer index {idx} is out of range: this lens reads hidden_states[0..{self.num_layers - 1}] "
                f"(hidden_states[{self.num_layers}] is already final-normed; use lens.unembed.head on it)"
            )

    def untrained_layers(self) -> list[int]:
        """Layers where this lens reads exactly what the logit lens reads because nothing was trained there: none
        for a lens without translators (the logit lens); `BaseTunedLens` answers from its translators."""
        return []

    def transform_hidden(self, h: torch.Tensor, idx: int) -> torch.Tensor:
        """Map ``hidden_states[idx]`` (the input of block ``idx``) into the final layer's basis (identity for the logit
        lens)."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, idx: int) -> torch.Tensor:
        """Logits the lens reads from ``h = hidden_states[idx]`` (``idx`` in ``0 .. num_layers - 1``)."""
        self._check_index(idx)
        return self.unembed(self.transform_hidden(h, idx))

    def all_logits(
        self, hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor], *, include_final: bool = True
    ) -> torch.Tensor:
        """Logits of every layer from one model output.

        Args:
            hidden_states: ``outputs.hidden_states`` of a forward pass with ``output_hidden_states=True``
                (``num_layers + 1`` tensors of shape [batch, seq, d]).
            include_final: Append the model's own logits (from the final-normed last hidden state).

        Returns:
            A tensor of shape [num_layers (+1), batch, seq, vocab]. It holds L x T x V floats: for long texts or
            big vocabularies, call ``lens(h, i)`` layer by layer instead.
        """
        if len(hidden_states) != self.num_layers + 1:
            raise ValueError(
                f"expected {self.num_layers + 1} hidden states (embeddings + {self.num_layers} layers), got "
                f"{len(hidden_states)}; pass outputs.hidden_states from output_hidden_states=True"
            )
        logits = [self(h, i) for i, h in enumerate(hidden_states[:-1])]
        if include_final:
            logits.append(self.unembed.head(hidden_states[-1]))
        return torch.stack(logits)


class LogitLens(Lens):
    """The logit lens (nostalgebraist 2020): the model's unembedding applied to every layer as is."""

    @classmethod
    def from_model(cls, model: nn.Module, *, architecture: ArchitectureSpec | None = None) -> LogitLens:
        """Build the logit lens of a Hugging Face causal LM."""
        return cls(find_model_parts(model, architecture))

    def transform_hidden(self, h: torch.Tensor, idx: int) -> torch.Tensor:
        return h


def untrained_translators(config: LensConfig, tensors: Mapping[str, torch.Tensor]) -> list[int]:
    """`BaseTunedLens.untrained_layers` from a config and its tensors (``translators.{i}.weight`` / ``.bias``), for
    a lens directory read without its model (publishing): the layers its provenance says were not trained, and those
    whose translator is all zero."""
    trained = config.training.layers if config.training is not None else None
    out = []
    for i in range(config.num_layers):
        params = [tensors.get(f"translators.{i}.{name}") for name in ("weight", "bias")]
        zero = all(not bool(p.detach().any()) for p in params if p is not None)
        if zero or (trained is not None and i not in trained):
            out.append(i)
    return out


class BaseTunedLens(Lens):
    """The tuned lens (Belrose et al. 2023): one affine translator per layer before the unembedding, without Hub
    methods (its own name, so importing it by mistake fails instead of giving a lens without ``from_pretrained``).

    Build a fresh lens with `from_model`, save it with `save`, and load it back with `load`. The config records
    which model the lens belongs to; loading checks it against the model before any tensor is used.
    ``lens_hub.TunedLens`` adds ``from_pretrained`` and ``push_to_hub`` (`lens_hub.hub.mixin.LensHubMixin`).
    """

    def __init__(self, parts: ModelParts, config: LensConfig) -> None:
        super().__init__(parts)
        self.config = config
        d = config.hidden_size
        device = parts.output_embedding.weight.device
        dtype = TORCH_DTYPES[config.dtype]
        # skip_init: nn.Linear's random initialisation would be thrown away at once (zeroed here, or overwritten
        # by loaded weights), and for a 1 GB lens it costs a second.
        self.translators = nn.ModuleList(
            nn.utils.skip_init(nn.Linear, d, d, bias=config.bias, device=device, dtype=dtype)
            for _ in range(config.num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero every translator, which makes the lens equal to the logit lens."""
        with torch.no_grad():
            for p in self.translators.parameters():
                p.zero_()

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        bias: bool = True,
        dtype: torch.dtype = torch.float32,
        architecture: ArchitectureSpec | None = None,
        base_model: str | None = None,
        base_revision: str | None = None,
    ) -> Self:
        """Build an untrained (identity) tuned lens for a Hugging Face causal LM.

        Args:
            model: The base model.
            bias: Give each translator a bias vector.
            dtype: Dtype of the translators (float32 is recommended for training).
            architecture: Explicit module paths, for models the built-in probes do not cover.
            base_model: Hub id of the base model; defaults to the id the model was loaded from (``None`` if it
                was loaded from a local directory; pass one before publishing).
            base_revision: Commit of the base model; defaults to the one transformers resolved.
        """
        parts = find_model_parts(model, architecture)
        config = LensConfig(
            base_model=base_model or parts.base_model_id,
            base_revision=base_revision or parts.base_revision,
            model_type=parts.model_type,
            hidden_size=parts.hidden_size,
            num_layers=parts.num_layers,
            vocab_size=parts.vocab_size,
            bias=bias,
            dtype=dtype_name(dtype),
            fingerprint=parts.fingerprint,
        )
        return cls(parts, config)

    def adopt_model(self) -> None:
        """Record the facts of the model this lens reads through in its config, before training it for that model.

        A lens loaded for another model (``allow_mismatch=True``: a base model's lens fine-tuned for its chat
        variant, say) still names that model; once trained for this one, loading it with this one must pass the
        checks. Model type, vocabulary size and fingerprint always come from this model; the base model id and
        revision too when the lens was another model's (an unchanged lens keeps the id it records).
        """
        parts = self.unembed.parts
        facts = {"model_type": parts.model_type, "vocab_size": parts.vocab_size, "fingerprint": parts.fingerprint}
        update: dict[str, object] = dict(facts)
        if any(getattr(self.config, name) != value for name, value in facts.items()):
            update |= {"base_model": parts.base_model_id, "base_revision": parts.base_revision}
        self.config = self.config.model_copy(update=update)

    def untrained_layers(self) -> list[int]:
        """Layers whose translator is the identity, where this lens reads exactly what the logit lens reads: those
        its provenance says were not trained, and those whose weight and bias are all zero (a fresh lens: all)."""
        return untrained_translators(self.config, self.state_dict())

    def transform_hidden(self, h: torch.Tensor, idx: int) -> torch.Tensor:
        translator = self.translators[idx]
        x = h.to(translator.weight.dtype)
        return (x + translator(x)).to(h.dtype)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save the lens as ``config.json`` + ``lens.safetensors`` in ``directory`` (created if needed)."""
        return write_lens_dir(directory, self.config, self.state_dict())

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        model: nn.Module,
        *,
        allow_mismatch: bool = False,
        architecture: ArchitectureSpec | None = None,
    ) -> Self:
        """Load a lens directory onto ``model``, checking that it fits first.

        Args:
            directory: A directory written by `save` (or ``lens-hub convert``).
            model: The base model the lens is applied to.
            allow_mismatch: Expert opt-out: load despite a model_type, vocabulary or fingerprint mismatch
                (a `lens_hub.errors.LensCompatibilityWarning` is issued for each).
            architecture: Explicit module paths, for models the built-in probes do not cover.

        Raises:
            LensFormatError: The directory is not a valid lens.
            IncompatibleLensError: The lens does not fit ``model`` (each mismatch named with both values).
        """
        config = read_config(directory)
        parts = find_model_parts(model, architecture)
        check_compatibility(config, parts, allow_mismatch=allow_mismatch)
        tensors = read_tensors(directory, config)
        nonfinite = nonfinite_tensors(tensors)
        if nonfinite:  # every logit of such a layer would be NaN
            raise LensFormatError(
                f"{Path(directory) / WEIGHTS_NAME}: tensor {nonfinite[0]} holds non-finite values; a lens with NaN "
                "or infinite weights is not loaded. Retrain it, or resume from an earlier checkpoint."
            )
        lens = cls(parts, config)
        lens.load_state_dict(tensors)
        return lens

    def extra_repr(self) -> str:
        return f"base_model={self.config.base_model!r}, num_layers={self.num_layers}, bias={self.config.bias}"
