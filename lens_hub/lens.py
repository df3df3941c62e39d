"""Lens math: the logit lens and the tuned lens.

A lens maps a hidden state ``h`` taken after layer ``i`` to logits. The logit lens applies the model's own
unembedding (final norm, output embedding, and any logit post-processing). The tuned lens first applies an affine
translator, ``h + W_i h + b_i``; W and b start at zero, so an untrained tuned lens *is* the logit lens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .publish import PushResult
    from .registry import Registry

from .adapters import ArchitectureSpec, ModelParts, find_model_parts
from .compat import check_compatibility
from .config import LensConfig
from .format import TORCH_DTYPES, dtype_name, read_config, read_tensors, write_lens_dir


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


class Lens(nn.Module):
    """Common interface of `LogitLens` and `TunedLens`."""

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

    def transform_hidden(self, h: torch.Tensor, idx: int) -> torch.Tensor:
        """Map the hidden state after layer ``idx`` into the final layer's basis (identity for the logit lens)."""
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


class TunedLens(Lens):
    """The tuned lens (Belrose et al. 2023): one affine translator per layer before the unembedding.

    Build a fresh lens with `from_model`, save it with `save`, and load it back with `load`
    (or, once published, ``from_pretrained``). The config records which model the lens belongs to; loading checks
    it against the model before any tensor is used.
    """

    def __init__(self, parts: ModelParts, config: LensConfig) -> None:
        super().__init__(parts)
        self.config = config
        d = config.hidden_size
        device = parts.output_embedding.weight.device
        dtype = TORCH_DTYPES[config.dtype]
        self.translators = nn.ModuleList(
            nn.Linear(d, d, bias=config.bias, device=device, dtype=dtype) for _ in range(config.num_layers)
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
    ) -> TunedLens:
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
    ) -> TunedLens:
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
        lens = cls(parts, config)
        lens.load_state_dict(tensors)
        return lens

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        *,
        version: str | None = None,
        model: nn.Module | None = None,
        registry: Registry | str | os.PathLike[str] | None = None,
        allow_mismatch: bool = False,
        architecture: ArchitectureSpec | None = None,
        pinned_only: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        dtype: torch.dtype | None = None,
    ) -> TunedLens:
        """Load a published lens by registry name, Hub location or local path, verified end to end.

        ``name`` is a registry model id or alias (``"gpt2"``, case-insensitive), ``hf://org/repo[@rev][/subfolder]``,
        ``org/repo``, or a local directory (``./my-lens``); a name that could mean two things is refused. Registry
        lenses are downloaded through the Hugging Face cache at their pinned commit (a cached lens loads with no
        HTTP request), every file's size and sha256 is verified, the lens is checked against the registry's facts
        and then against ``model``.

        Args:
            name: What to load (see above).
            version: A registry version (``"1.0.0"``); default: the entry's default version.
            model: The base model; if omitted, it is loaded with transformers from the id the registry names.
            registry: A registry directory instead of the shipped one (or set ``LENS_HUB_REGISTRY``).
            allow_mismatch: Expert opt-out of the model_type / vocabulary / fingerprint checks (warns).
            architecture: Explicit module paths for models the built-in probes do not cover.
            pinned_only: Refuse lenses that are not pinned to a commit.
            cache_dir: huggingface_hub cache directory (default: ``HF_HUB_CACHE``).
            token: Hub token (default: the usual huggingface_hub token mechanisms).
            local_files_only: Never touch the network (as ``HF_HUB_OFFLINE=1``).
            dtype: dtype for the base model when it is loaded here.

        Raises:
            LensNotFoundError: The name is not in the registry, not a local lens, and not a lens repo on the Hub.
            AmbiguousNameError: The name means both a registry entry and a local directory.
            UnknownVersionError: The registry entry has no such version.
            NotPinnedError: ``pinned_only=True`` and the lens is not pinned to a commit.
            ChecksumMismatchError: A downloaded file differs from its recorded size or sha256.
            IncompatibleLensError: The lens contradicts its registry entry or does not fit ``model``.
            OfflineNotCachedError: Offline, and the lens is not in the cache.
            HubUnreachableError: The Hub could not be reached or kept failing.
        """
        from .pretrained import FetchOptions, load_pretrained

        options = FetchOptions(
            cache_dir=cache_dir, token=token, local_files_only=local_files_only, pinned_only=pinned_only
        )
        return load_pretrained(
            name,
            version=version,
            model=model,
            registry=registry,
            allow_mismatch=allow_mismatch,
            architecture=architecture,
            options=options,
            dtype=dtype,
        )

    @classmethod
    def from_model_and_pretrained(cls, model: nn.Module, *, version: str | None = None, **kwargs: object) -> TunedLens:
        """Load the registry's lens for ``model``, found by the id the model was loaded from.

        Takes the same keyword arguments as `from_pretrained`.
        """
        from .pretrained import entry_for_model
        from .registry import Registry

        registry = Registry.load(kwargs.pop("registry", None))  # type: ignore[arg-type]
        entry = entry_for_model(model, registry)
        return cls.from_pretrained(entry.model, version=version, model=model, registry=registry, **kwargs)  # type: ignore[arg-type]

    def push_to_hub(self, repo_id: str, **kwargs: object) -> PushResult:
        """Publish this lens to the Hub as a tagged version and record it in the registry.

        Saves the lens to a temporary directory and calls `lens_hub.publish.push` on it, which takes the
        keyword arguments (``version``, ``subfolder``, ``private``, ``dry_run``, ``registry``, ``base_model``,
        ``license``, ``aliases``, ``token``, ``console``).
        """
        import tempfile

        from .publish import push

        with tempfile.TemporaryDirectory(prefix="lens-hub-push-") as tmp:
            return push(self.save(tmp), repo_id, **kwargs)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return f"base_model={self.config.base_model!r}, num_layers={self.num_layers}, bias={self.config.bias}"
