"""lens-hub: tuned lenses as safe, versioned, verified artifacts on the Hugging Face Hub."""

from ._version import __version__
from .adapters import ArchitectureSpec, find_model_parts
from .config import LensConfig
from .errors import (
    IncompatibleLensError,
    LegacyFormatError,
    LensCompatibilityWarning,
    LensFormatError,
    LensHubError,
    UnsupportedArchitectureError,
)
from .legacy import convert_legacy, load_legacy_lens
from .lens import Lens, LogitLens, TunedLens, Unembed

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
    "TunedLens",
    "Unembed",
    "UnsupportedArchitectureError",
    "__version__",
    "convert_legacy",
    "find_model_parts",
    "load_legacy_lens",
]
