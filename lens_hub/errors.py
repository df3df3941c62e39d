"""Exception and warning classes raised by lens-hub.

Every error lens-hub raises on purpose derives from `LensHubError`, so callers can catch the whole family
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


class RegistryError(LensHubError):
    """A registry file is invalid; ``problems`` holds one located message per error."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("Invalid lens registry:\n" + "\n".join(f"  {p}" for p in self.problems))


class LensNotFoundError(LensHubError):
    """A name is neither in the registry, nor a local lens directory, nor a lens repo on the Hub."""


class AmbiguousNameError(LensHubError):
    """A name could mean two different lenses (e.g. a registry alias and a local directory); it is not guessed."""


class UnknownVersionError(LensHubError):
    """The requested lens version is not in the registry entry."""


class NotPinnedError(LensHubError):
    """A lens is not pinned to a commit, and pinned-only loading was requested."""


class ChecksumMismatchError(LensHubError):
    """A downloaded file's size or sha256 differs from the registry; the bad file was removed from the cache."""


class HubResponseError(LensHubError):
    """The Hub (or a mirror) answered something lens-hub refuses before using it: a commit id or ETag of the wrong
    form, a file larger than recorded or announced, or a transfer that overran its deadline. Nothing of the answer
    was kept."""


class OfflineNotCachedError(LensHubError):
    """Offline mode is on (``HF_HUB_OFFLINE=1``) and the lens is not in the local cache."""


class HubUnreachableError(LensHubError):
    """The Hugging Face Hub (``HF_ENDPOINT``) could not be reached or kept failing."""


class UnverifiedLensWarning(UserWarning):
    """A lens whose files nobody has checked (no pinned commit or checksums) is being loaded."""
