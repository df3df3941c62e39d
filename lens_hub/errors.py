"""Exception and warning classes raised by lens-hub.

Every error lens-hub raises on purpose derives from `LensHubError`, so callers can catch the whole family
with one ``except`` clause, or a single failure by its dedicated class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# ---------------------------------------- the lens and its files


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


class InvalidNameError(LensHubError, ValueError):
    """A repo id, version, subfolder or revision breaks its rule; the message names the rule and the fix."""


class ModelNotFoundError(LensHubError):
    """A model name is neither ``smollm2-offline``, nor a local model directory, nor a loadable Hub model."""


class DeviceError(LensHubError):
    """The requested device does not exist in this torch build or on this machine."""


class MissingExtraError(LensHubError, ImportError):
    """An optional library (scikit-learn, TransformerLens, nnsight, FastAPI, uvicorn) is needed but not installed;
    the message names the extra that installs it."""


# ---------------------------------------- the registry and the Hub


class RegistryError(LensHubError):
    """A registry file is invalid; ``problems`` holds one located message per error."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("Invalid lens registry:\n" + "\n".join(f"  {p}" for p in self.problems))


class LensNotFoundError(LensHubError):
    """A name is neither in the registry, nor a local lens directory, nor a lens repo on the Hub."""


class LensAccessError(LensNotFoundError):
    """The Hub refused to serve a repo, revision or file (HTTP 401/403, or a gated repo): it does not exist for this
    token, or the token may not read it."""


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


class PublishError(LensHubError):
    """A lens could not be published (invalid input, registry conflict, or a Hub failure while publishing)."""


class VersionExistsError(PublishError):
    """The version (its tag on the Hub or its entry in the registry) already exists; nothing was uploaded."""


class ConcurrentUpdateError(PublishError):
    """The branch moved between reading its head and committing (HTTP 412); nothing was committed."""


class AuthenticationError(PublishError):
    """No token, or a token the Hub rejects or that may not write to the repo's namespace."""


class CurateError(LensHubError):
    """A lens could not be adopted into the registry or pinned (bad location, arguments or registry state)."""


class MissingLensFileError(CurateError):
    """The Hub location lacks a file its lens format needs; nothing was written."""


class LensContentError(CurateError):
    """The lens's files contradict each other or the registry (a config that lies about its tensors, changed
    bytes, different facts); nothing was written."""


# ---------------------------------------- training


class TrainSettingsError(LensHubError):
    """The training settings contradict each other or the data (e.g. a step size no batch split gives)."""


class LayerRangeError(TrainSettingsError, ValueError):
    """Layers asked for (``--layers``) that the model does not have (a `ValueError` too, as it was before)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training run; the last completed step was checkpointed so rerunning resumes from it.

    A `KeyboardInterrupt` (not a `LensHubError`): the run was stopped, not refused, and a caller that does not
    handle it still stops as on any Ctrl-C.

    Attributes:
        step: Steps completed and saved (0: none completed; the fitted lens may be saved as step 0).
        steps: Steps of the whole run.
        checkpoint: The checkpoint directory holding ``step`` (None when nothing was saved).
        during_fit: Stopped during the closed-form fit (nothing saved; rerunning fits again).
    """

    def __init__(self, step: int, steps: int, checkpoint: Path | None, *, during_fit: bool = False) -> None:
        self.step, self.steps, self.checkpoint, self.during_fit = step, steps, checkpoint, during_fit
        where = "during the closed-form fit" if during_fit else f"after step {step} of {steps}"
        super().__init__(f"interrupted {where}")


class NonFiniteLossError(LensHubError):
    """A training step's loss or gradient became NaN or infinite (the run diverged); the step was not applied and
    nothing of it was saved."""


class FitError(LensHubError):
    """The closed-form fit cannot run: non-finite hidden states, no data, or a head whose input cannot be read."""


class FitWarning(UserWarning):
    """The fit ran, but its result deserves a look (e.g. fewer tokens than the hidden size)."""


class DataError(LensHubError):
    """The training or evaluation data cannot be read, or there is too little of it."""


class CheckpointError(LensHubError):
    """A checkpoint is unreadable or belongs to a run with different settings."""


# ---------------------------------------- analysis


class TrajectoryError(LensHubError, ValueError):
    """The inputs of a trajectory do not fit together (hidden states, ids, lengths, targets), or a statistic was
    asked for that the trajectory was not built to hold. A ``ValueError`` too, as these errors were before."""


class InteropError(LensHubError, ValueError):
    """Activations from another library cannot be read as they are: a hook missing from a cache, an unknown
    component, saved hidden states of the wrong kind or count, or no model to check them against."""


class ProcessedWeightsError(IncompatibleLensError):
    """A TransformerLens bridge's weights were processed (layer norms folded, weights centred), which changes the
    residual stream the lens reads; the message names the loading options that keep it unchanged."""


class StatsError(LensHubError):
    """`LogitStats` was used wrongly (a row out of range, a vocabulary mismatch, a row without data)."""


class DirichletFitError(StatsError):
    """The maximum-likelihood Dirichlet could not be found (no maximum exists, or the iteration did not converge)."""


class CausalBasisError(LensHubError):
    """Causal basis extraction or subspace ablation was asked for something impossible (a wrong mode, shape,
    layer or basis)."""


class AblationError(LensHubError, ValueError):
    """A whole-layer ablation was asked for what it cannot do (unknown method, a batch too small to resample)."""


class AnomalyError(LensHubError):
    """Anomaly detection was given inputs it cannot work with (too few prompts, unknown method, bad features)."""


class PromptFileError(AnomalyError):
    """A prompt file is missing, malformed, or holds no prompts."""


class TaskError(AnomalyError):
    """A multiple-choice task cannot be used for the prompt-injection experiment: too few items for the shots or the
    split, an unknown shipped task, or a Hub dataset that cannot be loaded or lacks the named fields."""


class TaskFileError(TaskError):
    """A multiple-choice task file (or dataset row) is malformed; the message names the file, line and field."""


# ---------------------------------------- views, the explorer and the demo


class RenderError(LensHubError):
    """A plot was asked for data of the wrong shape."""


class ServeError(LensHubError):
    """The explorer cannot start as asked: the ``serve`` extra is missing, the port is taken, an option is wrong."""


class PortInUseError(ServeError):
    """The port cannot be bound on 127.0.0.1."""


class ExplorerRequestError(LensHubError):
    """A request the explorer refuses, with the HTTP status it answers and a message the page shows.

    Attributes:
        status: The HTTP status code (4xx for the client's mistakes, 503 when the explorer is busy).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DemoCheckError(LensHubError):
    """One of the demo's end-to-end checks failed."""
