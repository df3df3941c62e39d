"""lens-hub: tuned lenses as safe, versioned, verified artifacts on the Hugging Face Hub."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# Public names, resolved lazily so `import lens_hub.testing` or `lens-hub --help` do not pay for importing torch.
_EXPORTS = {
    "ArchitectureSpec": "adapters",
    "find_model_parts": "adapters",
    "LensConfig": "config",
    "IncompatibleLensError": "errors",
    "LegacyFormatError": "errors",
    "LensCompatibilityWarning": "errors",
    "LensFormatError": "errors",
    "LensHubError": "errors",
    "UnsupportedArchitectureError": "errors",
    "convert_legacy": "legacy",
    "load_legacy_lens": "legacy",
    "Lens": "lens",
    "LogitLens": "lens",
    "TunedLens": "hub_mixin",  # the core lens + from_pretrained / push_to_hub
    "Unembed": "lens",
    "ModelNotFoundError": "models",
    "list_pretrained": "catalogue",  # every registry lens, filterable; a table in Jupyter and the terminal
    "registry_entry": "catalogue",
    "load_model": "models",  # the loader of the CLI, `smollm2-offline` included
    "load_model_and_tokenizer": "models",
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
    from .adapters import ArchitectureSpec, find_model_parts
    from .catalogue import list_pretrained, registry_entry
    from .config import LensConfig
    from .errors import (
        IncompatibleLensError,
        LegacyFormatError,
        LensCompatibilityWarning,
        LensFormatError,
        LensHubError,
        UnsupportedArchitectureError,
    )
    from .hub_mixin import TunedLens
    from .legacy import convert_legacy, load_legacy_lens
    from .lens import Lens, LogitLens, Unembed
    from .models import ModelNotFoundError, load_model, load_model_and_tokenizer


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lens_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
