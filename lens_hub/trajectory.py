"""Prediction trajectories: what each layer of a model predicts, position by position, read through a lens.

A `PredictionTrajectory` holds, for every row (the lens layers asked for, then the model's own output as the last
row) and every position, small summaries of the predicted distribution: the top-k tokens and probabilities, the
entropy, the cross-entropy against the next token, KL(final || layer), and the rank and probability of a target
token. The full [layers, positions, vocab] logits are never held at once: rows are computed one at a time over
chunks of positions, and all statistics are computed in float32 whatever the model's dtype.

Comparing two lenses (say the tuned lens with the logit lens) needs both full distributions, so it is done during
construction: pass ``compare_with=other_lens`` and the trajectory also holds the Jensen-Shannon divergence
(``.js``, in nats, at most ln 2) and the total-variation distance (``.tv``, in [0, 1]) between the two lenses'
distributions at every row and position. `js_divergence` and `tv_distance` implement the definitions on explicit
log-probabilities (e.g. two prompts of the same length, read layer by layer with ``lens(h, i)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .lens import Lens
from .models import hidden_states

STATISTICS = ("entropy", "kl", "ce", "rank", "prob")
STAT_LABELS = {
    "entropy": "entropy (nats)",
    "kl": "KL(final || layer) (nats)",
    "ce": "cross-entropy vs next token (nats)",
    "rank": "rank of the target token (0 = top-1)",
    "prob": "probability of the target token",
}
# Visible stand-ins for whitespace in token labels.
_VISIBLE = {" ": "·", "\n": "⏎", "\t": "→", "\r": "␍"}
_LN2 = math.log(2.0)


def visible(text: str) -> str:
    """``text`` with spaces, newlines, tabs and carriage returns made visible ('·', '⏎', '→', '␍')."""
    return "".join(_VISIBLE.get(c, c) for c in text) or "∅"


def token_label(tokenizer, token_id: int) -> str:
    """A printable label for one token: its decoded text with whitespace made visible (plain text, not escaped)."""
    if tokenizer is None:
        return f"#{int(token_id)}"
    return visible(tokenizer.decode([int(token_id)]))


def _plogq(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_v p (log p - log q), with 0 log 0 = 0 (no NaN where p underflows to zero)."""
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions given as log-probabilities over the last dimension:
    JS(P, Q) = 0.5 KL(P || M) + 0.5 KL(Q || M) with M = (P + Q) / 2. Symmetric, in [0, ln 2]."""
    logp, logq = logp.float(), logq.float()
    logm = torch.logaddexp(logp, logq) - _LN2
    return (0.5 * _plogq(logp.exp(), logp, logm) + 0.5 * _plogq(logq.exp(), logq, logm)).clamp(0.0, _LN2)


def tv_distance(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Total-variation distance 0.5 * sum |P - Q| over the last dimension (inputs are log-probabilities); in [0, 1]."""
    return (0.5 * (logp.float().exp() - logq.float().exp()).abs().sum(-1)).clamp(0.0, 1.0)


@dataclass
class PredictionTrajectory:
    """Per-row, per-position prediction statistics of a lens over one batch of sequences.

    Rows are the lens layers in ``layers`` followed by the model's output (``row_labels[-1] == "output"``). All
    tensors are on the CPU, float32 (ranks and ids int64), with shapes [batch, rows, positions] (``top_ids`` and
    ``top_probs``: [batch, rows, positions, k]). Positions past a sequence's length (right padding) and positions
    without a target hold NaN (rank: -1).
    """

    input_ids: torch.Tensor  # [B, T]
    lengths: list[int]
    layers: list[int]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    rank: torch.Tensor
    prob: torch.Tensor
    target_ids: torch.Tensor  # [B, T], -1 where there is no target
    js: torch.Tensor | None = None
    tv: torch.Tensor | None = None
    input_labels: list[list[str]] = field(default_factory=list)
    top_labels: list[list[list[list[str]]]] = field(default_factory=list)

    # ----------------------------------------------------------------------------------------------- construction

    @classmethod
    def from_text(
        cls,
        lens: Lens,
        model: nn.Module,
        tokenizer,
        text: str | Sequence[str],
        *,
        layers: Sequence[int] | None = None,
        top_k: int = 5,
        target: int | str | None = None,
        compare_with: Lens | None = None,
        chunk_size: int | None = None,
    ) -> PredictionTrajectory:
        """Tokenize ``text`` (one string, or a list for a batch; shorter ones are right-padded) and read it."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("no text given")
        encoded = [tokenizer(t, return_tensors="pt")["input_ids"][0] for t in texts]
        if any(len(e) == 0 for e in encoded):
            raise ValueError("a text tokenizes to no tokens")
        lengths = [len(e) for e in encoded]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        ids = torch.full((len(texts), max(lengths)), int(pad), dtype=torch.long)
        for b, e in enumerate(encoded):
            ids[b, : len(e)] = e
        if isinstance(target, str):
            target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
            if len(target_ids) != 1:
                raise ValueError(f"target {target!r} is {len(target_ids)} tokens, not one: pass a token id instead")
            target = int(target_ids[0])
        return cls.from_ids(
            lens,
            model,
            ids,
            layers=layers,
            top_k=top_k,
            target=target,
            compare_with=compare_with,
            tokenizer=tokenizer,
            lengths=lengths,
            chunk_size=chunk_size,
        )

    @classmethod
    @torch.no_grad()
    def from_ids(
        cls,
        lens: Lens,
        model: nn.Module,
        input_ids: torch.Tensor,
        *,
        layers: Sequence[int] | None = None,
        top_k: int = 5,
        target: int | None = None,
        compare_with: Lens | None = None,
        tokenizer=None,
        lengths: Sequence[int] | None = None,
        chunk_size: int | None = None,
    ) -> PredictionTrajectory:
        """Read ``input_ids`` ([batch, positions] or [positions]) through ``lens``.

        Args:
            layers: Lens layers to read (default all, 0 .. num_layers - 1); the model's output is always added last.
            top_k: How many top tokens to keep per row and position.
            target: Token id whose rank and probability are tracked everywhere (default: the next input token).
            compare_with: A second lens; fills ``.js`` and ``.tv`` between the two lenses' distributions.
            tokenizer: Used only for labels (without it tokens are labelled by id).
            lengths: True length of each (right-padded) sequence.
            chunk_size: Positions per chunk (default: about 64 Mi floats of logits per chunk).
        """
        input_ids, lengths = _check_ids_and_lengths(input_ids, lengths)
        rows = _check_rows(lens, layers, compare_with)
        batch, seq = input_ids.shape
        valid = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]  # [B, T]
        device = next(model.parameters()).device
        hidden = _run_model(model, input_ids.to(device), valid.long().to(device))
        next_ids, target_ids = _next_and_target_ids(input_ids, lengths, valid, target)

        vocab = lens.unembed.parts.output_embedding.weight.shape[0]
        k = min(top_k, vocab)
        chunk = chunk_size or max(1, (1 << 26) // max(1, batch * vocab))
        acc = _Accumulator.empty((batch, len(rows) + 1, seq), k, compared=compare_with is not None)
        for start in range(0, seq, chunk):
            sl = slice(start, min(seq, start + chunk))
            chunk_hidden = [h[:, sl] for h in hidden]
            nxt, tgt = next_ids[:, sl].to(device), target_ids[:, sl].to(device)
            _read_chunk(acc, sl, lens, compare_with, chunk_hidden, rows, nxt, tgt, k)
        acc.mask_padding(valid)

        traj = cls(
            input_ids=input_ids.cpu(),
            lengths=lengths,
            layers=rows,
            top_ids=acc.top_ids,
            top_probs=acc.top_probs,
            entropy=acc.entropy,
            ce=acc.ce,
            kl=acc.kl,
            rank=acc.rank,
            prob=acc.prob,
            target_ids=target_ids,
            js=acc.js,
            tv=acc.tv,
        )
        traj.set_labels(tokenizer)
        return traj

    def set_labels(self, tokenizer) -> None:
        """(Re)compute the printable labels of the input tokens and top-k tokens."""
        cache: dict[int, str] = {}

        def label(i: int) -> str:
            if i not in cache:
                cache[i] = token_label(tokenizer, i)
            return cache[i]

        self.input_labels = [
            [label(int(i)) for i in row[:n]] for row, n in zip(self.input_ids, self.lengths, strict=True)
        ]
        self.top_labels = [
            [[[label(int(i)) for i in cell] for cell in pos_row[:n]] for pos_row in rows]
            for rows, n in zip(self.top_ids.tolist(), self.lengths, strict=True)
        ]

    # --------------------------------------------------------------------------------------------------- access

    @property
    def row_labels(self) -> list[str]:
        return [str(i) for i in self.layers] + ["output"]

    @property
    def num_rows(self) -> int:
        return len(self.layers) + 1

    @property
    def top_k(self) -> int:
        return self.top_ids.shape[-1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, b: int) -> PredictionTrajectory:
        """The trajectory of sequence ``b`` alone, cut to its length."""
        n = self.lengths[b]

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[b : b + 1, :, :n]

        return replace(
            self,
            input_ids=self.input_ids[b : b + 1, :n],
            lengths=[n],
            top_ids=cut(self.top_ids),
            top_probs=cut(self.top_probs),
            entropy=cut(self.entropy),
            ce=cut(self.ce),
            kl=cut(self.kl),
            rank=cut(self.rank),
            prob=cut(self.prob),
            target_ids=self.target_ids[b : b + 1, :n],
            js=cut(self.js),
            tv=cut(self.tv),
            input_labels=[self.input_labels[b]],
            top_labels=[self.top_labels[b]],
        )

    def stat(self, name: str) -> torch.Tensor:
        """One statistic as a float tensor [batch, rows, positions] (also 'js' and 'tv' when compared)."""
        if name == "rank":
            return torch.where(self.rank >= 0, self.rank.float(), torch.tensor(float("nan")))
        if name in ("entropy", "kl", "ce", "prob"):
            return getattr(self, name)
        if name in ("js", "tv"):
            value = getattr(self, name)
            if value is None:
                raise ValueError(f"no {name}: build the trajectory with compare_with=another lens")
            return value
        raise ValueError(f"unknown statistic {name!r}: choose from {', '.join(STATISTICS)}, js, tv")

    def mean_by_row(self, name: str) -> list[float]:
        """Per-row mean of a statistic over all (valid) positions of all sequences; NaNs ignored."""
        value = self.stat(name)
        return [float(value[:, r].nanmean()) for r in range(self.num_rows)]


# ---------------------------------------------------------------------------------------------- from_ids pieces


def _check_ids_and_lengths(input_ids: torch.Tensor, lengths: Sequence[int] | None) -> tuple[torch.Tensor, list[int]]:
    """``input_ids`` as int64 [batch, positions] and the true length of each sequence (default: all of it).

    Raises:
        ValueError: If a length is not in 1 .. positions, or there is not one length per sequence.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    input_ids = input_ids.long()
    batch, seq = input_ids.shape
    lengths = [seq] * batch if lengths is None else [int(n) for n in lengths]
    if len(lengths) != batch or any(not 0 < n <= seq for n in lengths):
        raise ValueError(f"lengths {lengths} do not fit input_ids of shape {tuple(input_ids.shape)}")
    return input_ids, lengths


def _check_rows(lens: Lens, layers: Sequence[int] | None, compare_with: Lens | None) -> list[int]:
    """The sorted, distinct lens layers to read (default all of them), each checked against the lens.

    Raises:
        ValueError: If ``compare_with`` reads a different number of layers than ``lens``.
        IndexError: If a layer is out of the lens's range.
    """
    if compare_with is not None and compare_with.num_layers != lens.num_layers:
        raise ValueError("compare_with reads a different number of layers than lens")
    rows = list(range(lens.num_layers)) if layers is None else sorted({int(i) for i in layers})
    for i in rows:
        lens._check_index(i)
    return rows


def _run_model(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All hidden states of the model on ``input_ids`` (already on the model's device), padding masked out.

    Only the base model runs: the output row is computed chunk by chunk from the last (final-normed) hidden
    state, so the model's own [batch, positions, vocab] logits would only cost memory.
    """
    return hidden_states(model, input_ids, attention_mask=attention_mask)


def _next_and_target_ids(
    input_ids: torch.Tensor, lengths: list[int], valid: torch.Tensor, target: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of every position and the token tracked for rank and probability; -1 where there is none.

    The next token is missing at the last position of each sequence and on padding; a fixed ``target`` applies to
    every valid position.
    """
    batch, seq = input_ids.shape
    next_ids = torch.full((batch, seq), -1, dtype=torch.long)
    next_ids[:, :-1] = input_ids[:, 1:]
    next_ids[~(torch.arange(seq)[None, :] + 1 < torch.tensor(lengths)[:, None])] = -1
    target_ids = next_ids if target is None else torch.where(valid, torch.tensor(int(target)), torch.tensor(-1))
    return next_ids, target_ids


def _row_statistics(
    logp: torch.Tensor,
    final: torch.Tensor,
    other: torch.Tensor | None,
    nxt: torch.Tensor,
    tgt: torch.Tensor,
    k: int,
) -> dict[str, torch.Tensor]:
    """The statistics of one row over one chunk of positions, moved to the CPU.

    Args:
        logp: The row's float32 log-probabilities, [batch, chunk, vocab].
        final: The model's own log-probabilities at the same positions (the KL reference).
        other: The compared lens's log-probabilities (for js and tv), or None.
        nxt: Next-token ids [batch, chunk], -1 where there is none (ce is NaN there).
        tgt: Tracked token ids [batch, chunk], -1 where there is none (rank -1, prob NaN there).
        k: How many top tokens to keep.
    """
    nan = float("nan")
    p = logp.exp()
    vals, idx = logp.topk(k, dim=-1)
    ce = -logp.gather(-1, nxt.clamp_min(0)[..., None])[..., 0]
    tgt_logp = logp.gather(-1, tgt.clamp_min(0)[..., None])
    tgt_rank = (logp > tgt_logp).sum(-1)
    tp = tgt_logp[..., 0].exp()
    has_tgt = tgt >= 0
    stats = {
        "top_ids": idx,
        "top_probs": vals.exp(),
        "entropy": _plogq(p, logp, torch.zeros_like(logp)).neg(),
        "kl": _plogq(final.exp(), final, logp).clamp_min(0.0),
        "ce": torch.where(nxt >= 0, ce, torch.full_like(ce, nan)),
        "rank": torch.where(has_tgt, tgt_rank, torch.full_like(tgt_rank, -1)),
        "prob": torch.where(has_tgt, tp, torch.full_like(tp, nan)),
    }
    if other is not None:
        stats["js"] = js_divergence(logp, other)
        stats["tv"] = tv_distance(logp, other)
    return {name: value.cpu() for name, value in stats.items()}


def _read_chunk(
    acc: _Accumulator,
    positions: slice,
    lens: Lens,
    compare_with: Lens | None,
    hidden: list[torch.Tensor],
    rows: list[int],
    nxt: torch.Tensor,
    tgt: torch.Tensor,
    k: int,
) -> None:
    """Every row's statistics over one chunk of ``positions`` (``hidden``: all hidden states cut to the chunk).

    The lens rows come first, the model's own output last. One row's [batch, chunk, vocab] log-probabilities
    (two with ``compare_with``) exist at a time, besides the output row's, which every row's KL needs.
    """
    # The model's own distribution: the last hidden state is already final-normed, only the head applies.
    final = torch.log_softmax(lens.unembed.head(hidden[-1]).float(), dim=-1)
    for r, i in enumerate(rows):
        logp = torch.log_softmax(lens(hidden[i], i).float(), dim=-1)
        other = None if compare_with is None else torch.log_softmax(compare_with(hidden[i], i).float(), dim=-1)
        acc.write(r, positions, _row_statistics(logp, final, other, nxt, tgt, k))
        del logp, other
    # Both lenses share the output row, so with compare_with it is compared with itself (js = tv = 0).
    other = None if compare_with is None else final
    acc.write(len(rows), positions, _row_statistics(final, final, other, nxt, tgt, k))


@dataclass
class _Accumulator:
    """The output tensors of a trajectory ([batch, rows, positions], top-k with a trailing [k]), on the CPU,
    filled one row and one chunk of positions at a time."""

    top_ids: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    rank: torch.Tensor
    prob: torch.Tensor
    js: torch.Tensor | None
    tv: torch.Tensor | None

    @classmethod
    def empty(cls, shape: tuple[int, int, int], k: int, *, compared: bool) -> _Accumulator:
        """Tensors of ``shape`` = (batch, rows, positions): NaN statistics, rank -1, js and tv only if ``compared``."""
        nan = float("nan")
        return cls(
            top_ids=torch.zeros((*shape, k), dtype=torch.long),
            top_probs=torch.zeros((*shape, k)),
            entropy=torch.full(shape, nan),
            ce=torch.full(shape, nan),
            kl=torch.full(shape, nan),
            rank=torch.full(shape, -1, dtype=torch.long),
            prob=torch.full(shape, nan),
            js=torch.zeros(shape) if compared else None,
            tv=torch.zeros(shape) if compared else None,
        )

    def write(self, row: int, positions: slice, stats: dict[str, torch.Tensor]) -> None:
        """Store the `_row_statistics` of one row over one chunk of positions."""
        for name, value in stats.items():
            getattr(self, name)[:, row, positions] = value

    def mask_padding(self, valid: torch.Tensor) -> None:
        """NaN for the distribution statistics at padding positions (ce, rank and prob are masked by their ids)."""
        pad = ~valid[:, None, :].expand(self.entropy.shape)
        for t in (self.entropy, self.kl, self.js, self.tv):
            if t is not None:
                t[pad] = float("nan")
