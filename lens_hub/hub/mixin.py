"""Hub methods for lenses, in the manner of huggingface_hub's ``ModelHubMixin``.

`LensHubMixin` gives a lens class ``from_pretrained`` (resolve a name, fetch the files, read each once and verify
the bytes read, then build the lens from the tensors parsed from those bytes) and ``push_to_hub`` (``self.save`` to
a scratch directory, then `lens_hub.hub.publish`). It calls into the core (`lens_hub.core.lens`), never the other way
round: the core knows nothing of the Hub or the registry.
``lens_hub.TunedLens`` is the core `lens_hub.core.lens.BaseTunedLens` with this mixin.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..core import lens as core
from ..core.adapters import find_model_parts
from ..core.compat import check_compatibility
from ..registry.store import Registry
from .pretrained import FetchOptions, check_entry_fits_model, download, entry_for_model, load_base_model, resolve
from .publish import PushResult, push

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

    from ..core.adapters import ArchitectureSpec

L = TypeVar("L", bound="_Loadable")


class _Loadable(Protocol):
    """What the mixin needs of a lens class: the core's constructor (model parts, config), state loading and save."""

    def __init__(self, parts: Any, config: Any) -> None: ...

    def load_state_dict(self, state_dict: Any) -> Any: ...

    def save(self, directory: str | os.PathLike[str]) -> Path: ...


class LensHubMixin:
    """``from_pretrained``, ``from_model_and_pretrained`` and ``push_to_hub`` for a class with ``load`` / ``save``."""

    @classmethod
    def from_pretrained(
        cls: type[L],
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
    ) -> L:
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
            HubResponseError: The Hub's answers break a bound or a format (nothing of them is kept).
            IncompatibleLensError: The lens contradicts its registry entry or does not fit ``model`` (a registry entry
                whose facts rule ``model`` out is refused before anything is downloaded).
            OfflineNotCachedError: Offline, and the lens is not in the cache.
            HubUnreachableError: The Hub could not be reached or kept failing.
        """
        options = FetchOptions(
            cache_dir=cache_dir, token=token, local_files_only=local_files_only, pinned_only=pinned_only
        )
        ref = resolve(name, version=version, registry=registry)
        if model is not None and ref.entry is not None:
            # The registry's facts may rule the model out already: refuse before any request or download.
            check_entry_fits_model(ref.entry, model, allow_mismatch=allow_mismatch, architecture=architecture)
        # download reads every file once and checks the bytes it read: checksums, config, tensors, NaN / inf.
        fetched = download(name, version=version, registry=registry, options=options, ref=ref)
        try:
            if model is None:
                model = load_base_model(fetched.ref, fetched.config, dtype=dtype)
            # As the core's `load` does, from the verified config and tensors instead of reading the folder again
            # (a second read would not be the one verified, and would cost a second pass over the weights).
            parts = find_model_parts(model, architecture)
            check_compatibility(fetched.config, parts, allow_mismatch=allow_mismatch)
            lens = cls(parts, fetched.config)
            lens.load_state_dict(fetched.tensors)
            return lens
        finally:
            fetched.cleanup()  # a legacy lens's conversion is read into memory by now

    @classmethod
    def from_model_and_pretrained(cls: type[L], model: nn.Module, *, version: str | None = None, **kwargs: Any) -> L:
        """Load the registry's lens for ``model``, found by the id the model was loaded from.

        Takes the same keyword arguments as `from_pretrained`.
        """
        registry = kwargs.pop("registry", None)
        registry = registry if isinstance(registry, Registry) else Registry.load(registry)
        entry = entry_for_model(model, registry)
        return cls.from_pretrained(entry.model, version=version, model=model, registry=registry, **kwargs)  # type: ignore[attr-defined]

    def push_to_hub(self: _Loadable, repo_id: str, **kwargs: Any) -> PushResult:
        """Publish this lens to the Hub as a tagged version and record it in the registry.

        Saves the lens to a temporary directory and calls `lens_hub.hub.publish.push` on it, which takes the
        keyword arguments (``version``, ``subfolder``, ``private``, ``dry_run``, ``registry``, ``base_model``,
        ``license``, ``aliases``, ``token``).
        """
        kwargs.setdefault("evaluate_hint", _EVALUATE_IN_PYTHON)
        with tempfile.TemporaryDirectory(prefix="lens-hub-push-") as tmp:
            return push(self.save(tmp), repo_id, **kwargs)


# The lens of `push_to_hub` lives in memory (its saved copy is a temporary directory), so the fix is Python.
_EVALUATE_IN_PYTHON = (
    "lens.config = lens.config.model_copy(update={'evaluation': evaluate(model, heldout, lens).summary()}) "
    "with evaluate from lens_hub.analysis.evaluate and heldout from lens_hub.training.data.load_token_data, then "
    "push again (or lens.save(DIR) and run lens-hub eval DIR --model MODEL --data HELDOUT_TEXT --store)"
)


class TunedLens(LensHubMixin, core.BaseTunedLens):
    """The tuned lens (Belrose et al. 2023) with its Hub methods: `lens_hub.core.lens.BaseTunedLens` + `LensHubMixin`.

    Build a fresh lens with ``from_model``, save it with ``save`` and load it back with ``load``; load a published
    one with ``from_pretrained`` and publish with ``push_to_hub``.
    """


def load_lens(name: str, model: nn.Module, *, allow_mismatch: bool = False) -> core.Lens:
    """The lens a command line or a page names: ``"logit"`` for the logit lens, anything else (a lens directory,
    registry name or ``hf://...``) a tuned lens loaded with `TunedLens.from_pretrained` for ``model``.

    Raises:
        LensHubError: As `TunedLens.from_pretrained` (``allow_mismatch`` as there).
    """
    if name == "logit":
        return core.LogitLens.from_model(model)
    return TunedLens.from_pretrained(name, model=model, allow_mismatch=allow_mismatch)
