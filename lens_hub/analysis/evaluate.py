"""Evaluation of a tuned lens against the logit lens, in the paper's metrics.

Per layer and lens: cross-entropy against the next token, entropy of the lens distribution, and KL(final-layer
distribution || lens distribution), plus the model's own cross-entropy; optionally the transfer matrix (translator
i applied to layer j). Everything is reported in bits per byte of text, so numbers compare across tokenizers.

The JSON written by `write_json` has this schema (``lens-hub-eval/1``)::

    {"schema": "lens-hub-eval/1", "model": str,
     "lens": str | null,  # the tuned lens as it was named (directory, registry name, hf://...); null: none
     "dataset": str, "num_tokens": int,
     "layers": [int],  # the layers every list below refers to, in order
     "tokens_per_byte": float, "unit": "bits_per_byte", "model_cross_entropy": float,
     "tuned": {"kl": [L floats], "cross_entropy": [...], "entropy": [...]} | null,
     "logit": {"kl": [...], "cross_entropy": [...], "entropy": [...]},
     "transfer": [[L floats] x L] | null,  # transfer[a][b]: KL with translator layers[a] on layers[b]
     "transfer_cross_entropy": [[L floats] x L] | null,  # the same, cross-entropy against the labels
     "token_shift": int,                    # labels are the tokens this far ahead (1: the next token)
     "logit_stats": {...} | null,           # evaluate(..., logit_stats=True), lens-hub eval --logit-stats
     "trained_layers": [int] | null}        # the lens's trained layers (null: all, or no tuned lens)

``logit_stats`` (`lens_hub.analysis.stats.LogitStats`: the marginal prediction bias of each layer) holds::

    {"unit": "bits",                        # the KLs below are divergences of two distributions, in bits
     "marginal_kl": {"logit": [L floats], "tuned": [L floats] | null},
         # KL(model's marginal || lens's marginal at layers[i]); a marginal is the mean predicted distribution
         # over every token, the model's is that of its output (the final layer)
     "dirichlet_precision": {"logit": [L floats | null], "tuned": [L floats | null] | null, "model": float | null}}
         # alpha_0 = sum(alpha) of the maximum-likelihood Dirichlet of the per-token distributions (null where
         # the fit did not converge, with a warning)

Files written before ``logit_stats``, ``trained_layers``, ``transfer_cross_entropy`` or ``token_shift`` existed
lack the key; readers should treat them as optional (``token_shift`` then is 1).

Evaluating costs two unembeddings per token and layer, so `default_layers` picks the layers worth it: those the
lens was trained on (an untrained translator is the identity, i.e. the logit lens). `evaluate` prints nothing; pass
``progress`` to follow it batch by batch (`rich_progress` builds one with an ETA for a rich console).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import EvaluationInfo, LayerMetrics
from ..core.lens import BaseTunedLens, Lens, LogitLens
from ..core.models import hidden_states
from ..core.progress import Progress, ProgressReport
from ..errors import DirichletFitError, StatsError
from ..training.data import TokenData
from .stats import LogitStats

SCHEMA = "lens-hub-eval/1"


@dataclass
class EvalResult:
    """Per-layer metrics in bits per byte."""

    dataset: str
    num_tokens: int
    tokens_per_byte: float
    model_cross_entropy: float
    layers: list[int]  # the layers the metric lists refer to
    logit: dict[str, list[float]]
    tuned: dict[str, list[float]] | None = None
    transfer: list[list[float]] | None = None
    model: str | None = None
    lens: str | None = None
    logit_stats: dict[str, Any] | None = None  # schema in the module docstring
    trained_layers: list[int] | None = None  # the tuned lens's trained layers; None: all (or no tuned lens)
    transfer_cross_entropy: list[list[float]] | None = None
    token_shift: int = 1

    def is_trained(self, layer: int) -> bool | None:
        """Whether the tuned lens was trained at ``layer`` (None without a tuned lens)."""
        if self.tuned is None:
            return None
        return self.trained_layers is None or layer in self.trained_layers

    def summary(self) -> EvaluationInfo:
        """The summary stored in a lens's config (and shown on model cards and in the docs)."""
        return EvaluationInfo(
            dataset=self.dataset,
            num_tokens=self.num_tokens,
            layers=None if self.layers == list(range(len(self.layers))) else self.layers,
            tuned=LayerMetrics(**self.tuned) if self.tuned else LayerMetrics(),
            logit=LayerMetrics(**self.logit),
            model_cross_entropy=self.model_cross_entropy,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "lens": self.lens,
            "dataset": self.dataset,
            "num_tokens": self.num_tokens,
            "layers": self.layers,
            "tokens_per_byte": self.tokens_per_byte,
            "unit": "bits_per_byte",
            "model_cross_entropy": self.model_cross_entropy,
            "tuned": self.tuned,
            "logit": self.logit,
            "transfer": self.transfer,
            "logit_stats": self.logit_stats,
            "trained_layers": self.trained_layers,
            "transfer_cross_entropy": self.transfer_cross_entropy,
            "token_shift": self.token_shift,
        }


class _Sums:
    """Running sums of per-token statistics for one lens, per layer (in nats, float64)."""

    def __init__(self, num_layers: int, device: torch.device) -> None:
        self.kl = torch.zeros(num_layers, dtype=torch.float64, device=device)
        self.ce = torch.zeros_like(self.kl)
        self.entropy = torch.zeros_like(self.kl)

    def add(self, i: int, log_q: torch.Tensor, log_p: torch.Tensor, p: torch.Tensor, labels: torch.Tensor) -> None:
        """log_q, log_p, p: [c, V] rows; labels: [c] next tokens, -1 where there is none."""
        self.entropy[i] -= (log_q.exp() * log_q).sum(dtype=torch.float64)
        self.kl[i] += (p * (log_p - log_q)).sum(dtype=torch.float64)
        has = labels >= 0
        self.ce[i] -= log_q[has].gather(-1, labels[has, None]).sum(dtype=torch.float64)


ROW_ELEMENTS = 1 << 25  # logits per chunk of rows: 128 MiB in fp32


def shifted_labels(ids: torch.Tensor, shift: int) -> torch.Tensor:
    """Labels of each position of ``ids`` [batch, seq]: the token ``shift`` positions on, -1 where there is none."""
    labels = torch.full_like(ids, -1)
    if shift >= 0:
        labels[:, : ids.shape[1] - shift] = ids[:, shift:]
    else:
        labels[:, -shift:] = ids[:, :shift]
    return labels


def trained_layers(lens: BaseTunedLens | None) -> list[int] | None:
    """The layers ``lens`` was trained on, sorted; None for all (or no lens). See `BaseTunedLens.untrained_layers`."""
    untrained = set(lens.untrained_layers()) if lens is not None else set()
    if not untrained:
        return None
    return [i for i in range(lens.num_layers) if i not in untrained]  # type: ignore[union-attr]


def default_layers(lens: BaseTunedLens | None, num_layers: int) -> list[int]:
    """The layers `evaluate` reads by default: the trained ones of ``lens``, else all ``num_layers``.

    The others hold identity translators, where the tuned lens equals the logit lens, so evaluating them costs
    two unembeddings per token and layer and tells nothing new (pass every layer explicitly to see them anyway).
    """
    trained = trained_layers(lens)
    return trained if trained else list(range(num_layers))


@contextmanager
def rich_progress(console: Any, description: str = "Evaluating") -> Iterator[Progress]:
    """Batch-by-batch progress on ``console`` (a `ProgressReport`: a bar on a terminal, plain lines in a log), as a
    `Progress` callback for `evaluate`."""
    with ProgressReport(description, console, unit="batches") as report:
        yield report


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: TokenData,
    lens: BaseTunedLens | None = None,
    *,
    batch_size: int = 4,
    max_sequences: int | None = None,
    transfer: bool = False,
    layers: list[int] | None = None,
    logit_stats: bool = False,
    progress: Progress | None = None,
    lens_name: str | None = None,
    token_shift: int = 1,
) -> EvalResult:
    """Evaluate the logit lens, and ``lens`` if given, on ``data``.

    Tokens are processed in chunks of rows so no [tokens x vocab] tensor larger than ~128 MiB exists.

    Args:
        model: The base model.
        data: Held-out token sequences.
        lens: A tuned lens (``None``: the logit lens alone).
        batch_size: Sequences per forward pass.
        max_sequences: Evaluate at most this many sequences.
        transfer: Also compute the transfer matrices (translator i on layer j; costs layers x layers unembeddings),
            of KL to the model's output and of cross-entropy against the labels.
        layers: Evaluate only these layers (each costs two unembeddings per token); default: `default_layers`, the
            layers ``lens`` was trained on (all for the logit lens alone or a lens trained on every layer).
        logit_stats: Also measure each layer's marginal prediction bias (`lens_hub.analysis.stats.LogitStats`): the KL
            from the model's marginal to the lens's, and the precision of a Dirichlet fit
            (``EvalResult.logit_stats``; keeps 2 x layers x vocab float64 numbers per lens, plus the model's).
        progress: Called with (batches done, batches in all) after every batch; nothing is printed without it.
        lens_name: What ``lens`` is (a directory, registry name or hf:// address), recorded as ``EvalResult.lens``;
            default: "tuned lens of BASE_MODEL".
        token_shift: The cross-entropy's labels are the tokens this far from each position: 1 the next token (the
            default, what the model is trained on), 0 the current one, -1 the previous one, 2 the one after next.
            KL and entropy do not depend on it.
    """
    logit = LogitLens.from_model(model)
    chosen = layers if layers is not None else default_layers(lens, logit.num_layers)
    num_layers = len(chosen)
    device = logit.unembed.parts.output_embedding.weight.device
    seqs = data.sequences[: max_sequences or len(data.sequences)]
    if not -seqs.shape[1] < token_shift < seqs.shape[1]:
        raise ValueError(f"token_shift={token_shift} leaves no label in sequences of {seqs.shape[1]} tokens")
    lenses: dict[str, Lens] = {"logit": logit} | ({"tuned": lens} if lens is not None else {})
    sums = {name: _Sums(num_layers, device) for name in lenses}
    model_ce = torch.zeros((), dtype=torch.float64, device=device)
    trans = torch.zeros(num_layers, num_layers, dtype=torch.float64, device=device)
    trans_ce = torch.zeros_like(trans)
    vocab = logit.unembed.parts.vocab_size
    rows = max(1, ROW_ELEMENTS // vocab)
    marginals = {name: LogitStats(num_layers, vocab, device=device) for name in lenses} if logit_stats else {}
    model_marginal = LogitStats(1, vocab, device=device) if logit_stats else None
    num_batches = math.ceil(len(seqs) / batch_size)
    if progress is not None:
        progress(0, num_batches)
    for start in range(0, len(seqs), batch_size):
        ids = seqs[start : start + batch_size].to(device)
        labels = shifted_labels(ids, token_shift).reshape(-1)
        hs = [h.flatten(0, 1) for h in hidden_states(model, ids)]
        for r in range(0, len(labels), rows):
            sl = slice(r, r + rows)
            log_p = logit.unembed.head(hs[-1][sl]).float().log_softmax(-1)
            p = log_p.exp()
            has = labels[sl] >= 0
            model_ce -= log_p[has].gather(-1, labels[sl][has, None]).sum(dtype=torch.float64)
            if model_marginal is not None:
                model_marginal.update(0, log_p, log_probs=True)
            for k, i in enumerate(chosen):
                for name, each in lenses.items():
                    log_q = each(hs[i][sl], i).float().log_softmax(-1)
                    sums[name].add(k, log_q, log_p, p, labels[sl])
                    if marginals:
                        marginals[name].update(k, log_q, log_probs=True)
                if transfer and lens is not None:
                    for m, j in enumerate(chosen):
                        log_q = lens.unembed(lens.transform_hidden(hs[j][sl], i)).float().log_softmax(-1)
                        trans[k, m] += (p * (log_p - log_q)).sum(dtype=torch.float64)
                        trans_ce[k, m] -= log_q[has].gather(-1, labels[sl][has, None]).sum(dtype=torch.float64)
        if progress is not None:
            progress(start // batch_size + 1, num_batches)
    n_tokens = seqs.numel()
    n_predicted = seqs.shape[0] * (seqs.shape[1] - abs(token_shift))
    to_bpb = data.tokens_per_byte / math.log(2)

    def bpb(x: torch.Tensor, n: int) -> list[float]:
        return [float(v) * to_bpb / n for v in x.reshape(-1)]

    metrics = {
        name: {"kl": bpb(s.kl, n_tokens), "cross_entropy": bpb(s.ce, n_predicted), "entropy": bpb(s.entropy, n_tokens)}
        for name, s in sums.items()
    }
    return EvalResult(
        dataset=data.source,
        num_tokens=n_tokens,
        tokens_per_byte=data.tokens_per_byte,
        model_cross_entropy=bpb(model_ce, n_predicted)[0],
        layers=chosen,
        logit=metrics["logit"],
        tuned=metrics.get("tuned"),
        transfer=[bpb(row, n_tokens) for row in trans] if transfer and lens is not None else None,
        transfer_cross_entropy=[bpb(row, n_predicted) for row in trans_ce] if transfer and lens is not None else None,
        token_shift=token_shift,
        logit_stats=_logit_stats_summary(marginals, model_marginal, chosen) if model_marginal is not None else None,
        model=getattr(model.config, "_name_or_path", None),
        lens=None if lens is None else lens_name or f"tuned lens of {lens.config.base_model or 'a local model'}",
        trained_layers=trained_layers(lens),
    )


def _precision(stats: LogitStats, row: int, what: str) -> float | None:
    """The Dirichlet precision of one row, or None (with a warning) when the fit fails: one layer whose fit does
    not converge must not throw away a whole evaluation."""
    try:
        return stats.dirichlet(row).precision
    except DirichletFitError as exc:
        warnings.warn(f"no Dirichlet fit for {what}: {exc}", RuntimeWarning, stacklevel=3)
        return None


def _logit_stats_summary(marginals: dict[str, LogitStats], model: LogitStats, layers: list[int]) -> dict[str, Any]:
    """The ``logit_stats`` section of the result (schema in the module docstring)."""
    reference = model.marginal()[0]
    kl = {name: [float(x) / math.log(2) for x in s.marginal_kl(reference)] for name, s in marginals.items()}
    precision: dict[str, Any] = {
        name: [_precision(s, k, f"layer {layer} of the {name} lens") for k, layer in enumerate(layers)]
        for name, s in marginals.items()
    }
    precision["model"] = _precision(model, 0, "the model's output")
    return {
        "unit": "bits",
        "marginal_kl": {"logit": kl["logit"], "tuned": kl.get("tuned")},
        "dirichlet_precision": {
            "logit": precision["logit"],
            "tuned": precision.get("tuned"),
            "model": precision["model"],
        },
    }


def write_json(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Write the result as JSON (schema in this module's docstring)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return out


def table(result: EvalResult) -> Any:
    """A rich table of the per-layer metrics."""
    from rich.table import Table

    t = Table(title=f"Evaluation on {result.dataset} ({result.num_tokens:,} tokens), bits per byte")
    t.add_column("layer", justify="right")
    marked = result.tuned is not None
    if marked:  # an untrained translator is the identity: its tuned columns equal the logit ones
        t.add_column("trained", justify="center")
    for col in ("KL logit", "KL tuned", "CE logit", "CE tuned", "H logit", "H tuned"):
        t.add_column(col, justify="right")
    tuned = result.tuned or {}
    for k, layer in enumerate(result.layers):

        def cell(metrics: dict[str, list[float]], key: str, k: int = k) -> str:
            return f"{metrics[key][k]:.3f}" if metrics else "-"

        t.add_row(
            str(layer),
            *(["yes" if result.is_trained(layer) else "no"] if marked else []),
            cell(result.logit, "kl"),
            cell(tuned, "kl"),
            cell(result.logit, "cross_entropy"),
            cell(tuned, "cross_entropy"),
            cell(result.logit, "entropy"),
            cell(tuned, "entropy"),
        )
    t.caption = f"model output cross-entropy: {result.model_cross_entropy:.3f} bits/byte"
    if result.token_shift != 1:
        t.caption += f"; cross-entropy against the token {result.token_shift:+d} positions on (--token-shift)"
    if marked and result.trained_layers is not None:
        t.caption += f"; lens trained on layers {', '.join(map(str, result.trained_layers))} (others: identity)"
    return t


def logit_stats_table(result: EvalResult) -> Any:
    """A rich table of ``result.logit_stats``: per layer, the marginal KL and the Dirichlet precision of each lens.

    Raises:
        StatsError: The result has no logit statistics (evaluate with ``logit_stats=True``).
    """
    from rich.table import Table

    stats = result.logit_stats
    if stats is None:
        raise StatsError("this result has no logit statistics; evaluate with logit_stats=True (--logit-stats)")
    t = Table(title="Marginal prediction bias: KL(model's marginal || lens's marginal) and Dirichlet precision")
    t.add_column("layer", justify="right")
    for col in ("KL logit (bits)", "KL tuned (bits)", "alpha_0 logit", "alpha_0 tuned"):
        t.add_column(col, justify="right")

    def cell(values: list[float | None] | None, k: int, fmt: str) -> str:
        return "-" if values is None or values[k] is None else format(values[k], fmt)

    kl, precision = stats["marginal_kl"], stats["dirichlet_precision"]
    for k, layer in enumerate(result.layers):
        t.add_row(
            str(layer),
            cell(kl["logit"], k, ".3f"),
            cell(kl["tuned"], k, ".3f"),
            cell(precision["logit"], k, ".4g"),
            cell(precision["tuned"], k, ".4g"),
        )
    model = precision["model"]
    t.caption = f"model output: alpha_0 = {model:.4g}" if model is not None else "model output: no Dirichlet fit"
    return t
