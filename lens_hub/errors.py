"""Exception and warning classes raised by lens-hub.

Every error lens-hub raises on purpose derives from :class:`LensHubError`, so callers can catch the whole family
with one ``except`` clause, or a single failure by its dedicated class.
"""

from __future__ import annotations

from collections.abc import Sequence


class LensHubError(Exception):
    """Base class of every error raised by lens-hub."""


class UnsupportedArchitectureError(LensHubError):
    """The model's final norm, layer stack or output embedding could not be located."""


class LensFormatError(LensHubError):
    """A lens directory or file is malformed (missing file, bad config, unexpected tensors)."""


class LegacyFormatError(LensFormatError):
    """A lens in the old ``tuned-lens`` format could not be read safely."""


class IncompatibleLensError(LensHubError):
    """A lens does not fit the model it is being applied to.

    Attributes:
        mismatches: One human-readable line per mismatching fact, each naming both values.
    """

    def __init__(self, mismatches: Sequence[str], *, hint: str | None = None) -> None:
        self.mismatches = list(mismatches)
        lines = ["The lens does not fit this model:"]
        lines += [f"  - {m}" for m in self.mismatches]
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class LensCompatibilityWarning(UserWarning):
    """A compatibility check failed but was explicitly allowed with ``allow_mismatch=True``."""
