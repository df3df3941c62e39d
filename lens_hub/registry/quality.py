"""How good a lens is, as a reader judges it from what its record holds.

``verified`` in the registry is about integrity: the files are the ones the entry pins. Whether the lens is worth
loading is another question, answered here from three records: the held-out KL(final layer ‖ lens) of the tuned lens
against the logit lens (``evaluation``), the tokens it was trained on (``training``), and the layers it left untrained
(``untrained_layers``, found from the weights when it was published). The push warnings, the model card,
``lens-hub registry list`` and the docs catalogue all read this one judgement, so they never disagree.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.config import EvaluationInfo, TrainingInfo
from ..core.plots import consecutive_runs

# A tuned lens whose mean held-out KL is above this fraction of the logit lens's is barely better than the logit
# lens: published lenses trained on the paper's recipe sit far below it (often under a tenth).
BARELY_BETTER = 0.9
NOT_EVALUATED = "not evaluated"


def layer_ranges(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in consecutive_runs(sorted(set(layers))))


def tokens_seen(training: TrainingInfo | None) -> int | None:
    """Tokens the lens was trained on: the closed-form fit's plus the KL steps' (None: not recorded)."""
    if training is None or (training.fit_tokens is None and training.num_tokens is None):
        return None
    return (training.fit_tokens or 0) + (training.num_tokens or 0)


@dataclass(frozen=True)
class Quality:
    """What a reader needs to judge a lens; KL in bits per byte, averaged over the evaluated layers."""

    mean_kl_tuned: float | None = None
    mean_kl_logit: float | None = None
    eval_dataset: str | None = None
    eval_tokens: int | None = None
    tokens_seen: int | None = None
    untrained_layers: tuple[int, ...] | None = None  # None: not checked (entries older than the field)
    num_layers: int | None = None

    @property
    def evaluated(self) -> bool:
        """Whether held-out KL of both the tuned and the logit lens is recorded."""
        return self.mean_kl_tuned is not None and self.mean_kl_logit is not None

    @property
    def ratio(self) -> float | None:
        """Mean held-out KL of the tuned lens over the logit lens's (lower is better; None: not evaluated)."""
        if not self.evaluated or not self.mean_kl_logit:
            return None
        return self.mean_kl_tuned / self.mean_kl_logit  # type: ignore[operator]

    @property
    def barely_better(self) -> bool:
        """Whether the tuned lens is at most barely better than the logit lens (`BARELY_BETTER`)."""
        return self.ratio is not None and self.ratio > BARELY_BETTER

    def summary(self) -> str:
        """One short cell: ``KL 3.00 → 0.75`` (logit → tuned), flagged when barely better or partly untrained, or
        ``not evaluated``."""
        if not self.evaluated:
            text = NOT_EVALUATED
        else:
            text = f"KL {self.mean_kl_logit:.2f} → {self.mean_kl_tuned:.2f}"
            if self.barely_better:
                text += " (barely better)" if self.ratio < 1 else " (no better)"  # type: ignore[operator]
        if self.untrained_layers:
            text += f", {len(self.untrained_layers)} untrained"
        return text

    def problems(self) -> dict[str, str]:
        """What a reader should know before trusting the lens, one sentence each (empty: nothing to flag), keyed
        ``"unevaluated"``, ``"barely"`` or ``"untrained"`` (in that order) so that callers can pick or pair them."""
        out: dict[str, str] = {}
        if not self.evaluated:
            out["unevaluated"] = (
                "the lens has no held-out evaluation recorded, so nothing says how well it reads the model"
            )
        elif self.barely_better:
            verdict = "barely better than" if self.ratio < 1 else "no better than"  # type: ignore[operator]
            out["barely"] = (
                f"the lens is {verdict} the logit lens: mean held-out KL {self.mean_kl_tuned:.3f} against the "
                f"logit lens's {self.mean_kl_logit:.3f} bits per byte ({self.ratio:.2f}x; a trained tuned lens is "
                f"well under {BARELY_BETTER}x)"
            )
        if self.untrained_layers:
            n = len(self.untrained_layers)
            count = f"{n} of {self.num_layers} layers" if self.num_layers else f"{n} layer{'s' if n > 1 else ''}"
            out["untrained"] = (
                f"{count} {'is' if n == 1 else 'are'} untrained ({layer_ranges(self.untrained_layers)}): there it "
                "reads exactly what the logit lens reads"
            )
        return out


def assess(
    evaluation: EvaluationInfo | None,
    training: TrainingInfo | None = None,
    untrained_layers: Sequence[int] | None = None,
    num_layers: int | None = None,
) -> Quality:
    """The `Quality` of a lens from its records (a lens config's, or a registry version's)."""
    tuned = evaluation.tuned.kl if evaluation is not None else None
    logit = evaluation.logit.kl if evaluation is not None else None
    return Quality(
        mean_kl_tuned=statistics.fmean(tuned) if tuned else None,
        mean_kl_logit=statistics.fmean(logit) if logit else None,
        eval_dataset=evaluation.dataset if evaluation is not None else None,
        eval_tokens=evaluation.num_tokens if evaluation is not None else None,
        tokens_seen=tokens_seen(training),
        untrained_layers=tuple(untrained_layers) if untrained_layers is not None else None,
        num_layers=num_layers,
    )
