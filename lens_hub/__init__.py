"""lens-hub: tuned lenses as safe, versioned, verified artifacts on the Hugging Face Hub."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# Public names, resolved lazily so `import lens_hub.testing` or `lens-hub --help` do not pay for importing torch.
_EXPORTS = {
    "ArchitectureSpec": "core.adapters",
    "find_model_parts": "core.adapters",
    "LensConfig": "core.config",
    "IncompatibleLensError": "errors",
    "LegacyFormatError": "errors",
    "LensCompatibilityWarning": "errors",
    "LensFormatError": "errors",
    "LensHubError": "errors",
    "UnsupportedArchitectureError": "errors",
    "convert_legacy": "core.legacy",
    "load_legacy_lens": "core.legacy",
    "Lens": "core.lens",
    "LogitLens": "core.lens",
    "TunedLens": "hub.mixin",  # the core lens + from_pretrained / push_to_hub
    "Unembed": "core.lens",
    "ModelNotFoundError": "errors",
    "list_pretrained": "registry.catalogue",  # every registry lens, filterable; a table in Jupyter and the terminal
    "registry_entry": "registry.catalogue",
    "load_model": "core.models",  # the loader of the CLI, `smollm2-offline` included
    "load_model_and_tokenizer": "core.models",
}

__all__ = [
    "ArchitectureSpec",
    "IncompatibleLensError",
    "LegacyFormatError",
    "Lens",
    "LensCompatibilityWarning",
    "LensConfig",
    "LensFormatError",
    "LensHubError",
    "LogitLens",
    "ModelNotFoundError",
    "TunedLens",
    "Unembed",
    "UnsupportedArchitectureError",
    "__version__",
    "convert_legacy",
    "find_model_parts",
    "list_pretrained",
    "load_legacy_lens",
    "load_model",
    "load_model_and_tokenizer",
    "registry_entry",
]

if TYPE_CHECKING:
    from .core.adapters import ArchitectureSpec, find_model_parts
    from .core.config import LensConfig
    from .core.legacy import convert_legacy, load_legacy_lens
    from .core.lens import Lens, LogitLens, Unembed
    from .core.models import load_model, load_model_and_tokenizer
    from .errors import (
        IncompatibleLensError,
        LegacyFormatError,
        LensCompatibilityWarning,
        LensFormatError,
        LensHubError,
        ModelNotFoundError,
        UnsupportedArchitectureError,
    )
    from .hub.mixin import TunedLens
    from .registry.catalogue import list_pretrained, registry_entry


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lens_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
