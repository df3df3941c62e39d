"""Causal basis extraction: the directions of a hidden state that a lens's prediction depends on most, and
ablating them in the model itself.

Causal Basis Extraction (Belrose et al. 2023, arXiv 2303.08112, section "Causal basis extraction") ranks
directions of the residual stream by their *influence* on a lens: the expected KL divergence between the lens's
output on ``h`` and on ``h`` with its component along a unit vector ``v`` removed,
``E_h[KL(lens(h) || lens(r(h, v)))]`` (or, given next-token labels, the expected increase of their
cross-entropy). `extract_causal_bases` finds, per layer, ``k`` orthonormal vectors greedily: ``v_1`` maximises
the influence, each next ``v_j`` maximises it among unit vectors orthogonal to ``v_1 .. v_{j-1}``. Each
maximisation is gradient ascent (L-BFGS with a strong-Wolfe line search) on an unconstrained vector ``u`` mapped to
the sphere with the earlier vectors projected out, run from several starting directions: the top singular
direction of the lens's linear read-out (the paper's start), and the most influential of a few candidates (further
singular directions of the read-out, principal directions of the data, random directions), all restricted to the
directions still allowed. The best end point wins. A vector's *energy* is its influence, ablated on its own.

The search is local, so it can miss: if a later vector has more energy than an earlier one, that later vector
was allowed for the earlier step too, which therefore did not find its maximum. The search then goes back to the
earlier step with the vectors found since as extra starting points, and continues from there (the energy of that
step only rises, so this cannot cycle). After ``k`` such redos the vectors are sorted by energy instead, as the
paper's code does, which keeps the basis and each vector's own energy. Either way the energies along a returned
basis never increase. With ``orthonormal=False`` the vectors are not held orthogonal: each is a maximum of its own
influence on the whole sphere, away from the span of the earlier ones.

Removing the component along a subspace with orthonormal basis ``B`` [d, k] (`remove_subspace`) keeps the
orthogonal part of ``h`` and replaces its coordinates ``c = h B``:

- ``"zero"``: by 0 (``h - c B^T``);
- ``"mean"``: by the mean's, ``mean B`` (the paper's choice: the ablated state stays on the data's average);
- ``"resample"``: by those of another token of the same batch (a random derangement of the tokens).

A basis whose columns are only linearly independent (``orthonormal=False``) stands for its column space.

`ablate_subspace` does the same inside the model, to the hidden state the lens reads at that layer
(``hidden_states[layer]``, the input of ``layers[layer]``), so a lens's causal basis can be compared with the
model's own use of it: `model_ablation_kl` measures how much the model's output distribution moves.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..core.adapters import ArchitectureSpec, find_model_parts
from ..core.lens import Lens
from ..errors import CausalBasisError

AblationMode = Literal["zero", "mean", "resample"]
MODES: tuple[str, ...] = ("zero", "mean", "resample")
ROW_ELEMENTS = 1 << 24  # logits per chunk of tokens in the influence objective: 64 MiB in fp32
IGNORE_INDEX = -100  # a label the cross-entropy objective skips (Hugging Face's convention for padding)
# Without orthogonalisation, a search result counts as a new direction only if at least this sine of an angle
# separates it from the span of the directions found before (a climb back to an earlier maximum ends far closer).
NEW_DIRECTION_SIN = 0.1
# A later direction "beats" an earlier one only by more than the objective's round-off (cross-entropy rises
# can be negative, hence abs).
BEAT_REL, BEAT_ABS = 1e-4, 1e-9
CLIMB_RTOL = 1e-6  # a climb stops once its objective changes by less than this fraction of its starting value


@dataclass(frozen=True)
class CausalBasis:
    """An ordered basis of the directions a lens depends on most at one layer.

    Attributes:
        layer: The layer (``hidden_states[layer]``) the basis is for.
        vectors: [d, k] unit columns in greedy order (see `extract_causal_bases`): orthonormal, unless extracted
            with ``orthonormal=False`` (then only linearly independent; pass ``orthonormal=False`` to the ablation
            functions to use them as a basis of their span).
        energies: [k] float64, never increasing: the influence of each vector ablated on its own over the tokens
            it was extracted on, in nats per token: the expected KL(lens(h) || lens(h ablated along it)), or for
            ``objective == "ce"`` the expected increase of the labels' cross-entropy.
        mode: The ablation used (``"zero"``, ``"mean"`` or ``"resample"``).
        mean: [d] the mean hidden state of those tokens (what ``"mean"`` ablation uses; pass it on to
            `ablate_subspace` to ablate the model the same way).
        objective: ``"kl"`` (KL to the lens's clean output) or ``"ce"`` (cross-entropy of given labels).
        orthonormal: Whether ``vectors`` are orthonormal.
    """

    layer: int
    vectors: torch.Tensor
    energies: torch.Tensor
    mode: str
    mean: torch.Tensor
    objective: str = "kl"
    orthonormal: bool = True

    @property
    def k(self) -> int:
        """Number of basis vectors."""
        return self.vectors.shape[1]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise CausalBasisError(f"unknown ablation mode {mode!r}; use one of {', '.join(map(repr, MODES))}")


def _as_basis(basis: torch.Tensor, d: int, orthonormal: bool = True) -> torch.Tensor:
    """``basis`` as a [d, k] matrix with orthonormal columns (a [d] vector is one column).

    With ``orthonormal=False`` the columns need only be linearly independent; the result is an orthonormal basis
    of their span.
    """
    b = basis.unsqueeze(-1) if basis.dim() == 1 else basis
    if b.dim() != 2 or b.shape[0] != d:
        raise CausalBasisError(
            f"basis must be a [{d}] vector or a [{d}, k] matrix (columns = directions) for hidden size {d}, got "
            f"shape {list(basis.shape)}"
        )
    if not orthonormal:
        q, r = torch.linalg.qr(b.double())
        diag = r.diagonal().abs()
        if b.shape[1] > d or not bool((diag > 1e-6 * b.double().norm(dim=0).max()).all()):
            raise CausalBasisError("the basis columns are linearly dependent: they do not span a subspace of rank k")
        return q.to(b.dtype)
    gram = b.double().T @ b.double()
    if not torch.allclose(gram, torch.eye(b.shape[1], dtype=torch.float64, device=b.device), atol=1e-4):
        raise CausalBasisError(
            "the basis columns are not orthonormal; orthonormalise them first, e.g. torch.linalg.qr(basis).Q, or "
            "pass orthonormal=False to remove their span"
        )
    return b


def derangement(
    n: int, *, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """A random permutation of ``0 .. n-1`` that moves every element (a cyclic shift of a random order).

    Args:
        n: Number of elements, at least 2.
        generator: Source of randomness (default: torch's global one).
        device: Where the result lives.

    Returns:
        ``perm`` [n] int64 with ``perm[i] != i`` for every ``i``.
    """
    if n < 2:
        raise CausalBasisError("resample ablation needs at least two tokens to take coordinates from")
    order = torch.randperm(n, generator=generator).to(device)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm


def remove_subspace(
    h: torch.Tensor,
    basis: torch.Tensor,
    mode: AblationMode = "zero",
    *,
    mean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    orthonormal: bool = True,
) -> torch.Tensor:
    """Remove the information in ``h`` along the subspace spanned by ``basis``.

    The component of ``h`` orthogonal to the subspace is kept; its coordinates ``c = h @ basis`` are replaced by 0
    (``"zero"``), by those of ``mean`` (``"mean"``), or by those of another token (``"resample"``, a random
    derangement of all leading positions).

    Args:
        h: Hidden states [..., d]; every leading position is a token.
        basis: [d, k] with orthonormal columns, or one unit vector [d].
        mode: ``"zero"``, ``"mean"`` or ``"resample"``.
        mean: [d] the state whose coordinates ``"mean"`` puts in (default: the mean of ``h`` over its tokens).
        generator: Randomness of ``"resample"``.
        orthonormal: With False, ``basis`` needs only linearly independent columns (e.g. a `CausalBasis`
            extracted with ``orthonormal=False``), and their whole span is removed.

    Returns:
        A new tensor like ``h`` (same shape and dtype; computed in at least float32).

    Raises:
        CausalBasisError: An unknown mode, a basis of the wrong shape, not orthonormal (or with
            ``orthonormal=False`` linearly dependent), or ``"resample"`` with a single token.
    """
    _check_mode(mode)
    d = h.shape[-1]
    work = torch.promote_types(h.dtype, torch.float32)
    b = _as_basis(basis, d, orthonormal).to(h.device, work)
    x = h.reshape(-1, d).to(work)
    coords = x @ b
    if mode == "zero":
        new = torch.zeros_like(coords)
    elif mode == "mean":
        ref = x.mean(0) if mean is None else mean.reshape(d).to(h.device, work)
        new = (ref @ b).expand_as(coords)
    else:
        new = coords[derangement(x.shape[0], generator=generator, device=h.device)]
    return (x + (new - coords) @ b.T).reshape(h.shape).to(h.dtype)


def _kl_sum(log_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Sum over rows of KL(p || softmax(logits_q)), in nats."""
    return (log_p.exp() * (log_p - logits_q.float().log_softmax(-1))).sum()


def _ablated(h: torch.Tensor, ref: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``h`` with its coordinate along unit vector ``v`` replaced by ``ref``'s (rows of ``ref`` or one [d] row)."""
    return h - ((h - ref) @ v)[:, None] * v


def _next_token_targets(labels: torch.Tensor, lead: torch.Size, vocab: int) -> torch.Tensor:
    """The flat [tokens] next-token target of each position of hidden states with leading shape ``lead``.

    ``labels`` has that shape and follows Hugging Face's ``labels=``: position ``t`` is scored against
    ``labels[..., t + 1]``; the last position of each sequence, and labels of ``IGNORE_INDEX``, get no target.
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise CausalBasisError(f"labels must be integer token ids, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(lead) or len(lead) < 1:
        raise CausalBasisError(
            f"labels must have the hidden states' leading shape {list(lead)} (token ids, as for a model's labels=: "
            f"position t is scored against labels[..., t + 1]), got shape {list(labels.shape)}"
        )
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise CausalBasisError(f"labels must be token ids below the vocabulary size {vocab} or {IGNORE_INDEX}")
    targets = torch.full_like(labels, IGNORE_INDEX, dtype=torch.long)
    targets[..., :-1] = labels[..., 1:]
    targets = targets.reshape(-1)
    if not bool((targets != IGNORE_INDEX).any()):
        raise CausalBasisError("the labels leave no position with a next-token target (sequences of length 1?)")
    return targets


class _Influence:
    """One layer's objective, chunked over tokens: the expected KL(lens(h) || lens(h ablated along v)), or with
    next-token ``targets`` the expected increase of their cross-entropy (only tokens with a target count)."""

    def __init__(
        self,
        lens: Lens,
        h: torch.Tensor,
        layer: int,
        ref: torch.Tensor,
        rows: int,
        targets: torch.Tensor | None = None,
    ) -> None:
        if targets is not None:
            keep = targets != IGNORE_INDEX
            h, targets = h[keep], targets[keep].to(h.device)
            ref = ref if ref.dim() == 1 else ref[keep]
        self.lens, self.h, self.layer, self.ref, self.rows, self.targets = lens, h, layer, ref, rows, targets
        with torch.no_grad():
            # The clean log-probabilities are kept ([tokens, vocab] floats); the search is meant for a few thousand
            # tokens. The cross-entropy objective keeps only one clean sum per chunk.
            self.clean = [self._clean(s) for s in self.slices()]

    def slices(self) -> Iterator[slice]:
        for start in range(0, self.h.shape[0], self.rows):
            yield slice(start, start + self.rows)

    def _ref(self, s: slice) -> torch.Tensor:
        return self.ref if self.ref.dim() == 1 else self.ref[s]

    def _clean(self, s: slice) -> torch.Tensor:
        logits = self.lens(self.h[s], self.layer).float()
        if self.targets is None:
            return logits.log_softmax(-1)
        return F.cross_entropy(logits, self.targets[s], reduction="sum")

    def _score(self, s: slice, clean: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Summed over the chunk: KL to the clean output, or the labels' cross-entropy minus the clean one."""
        logits = self.lens(_ablated(self.h[s], self._ref(s), v), self.layer)
        if self.targets is None:
            return _kl_sum(clean, logits)
        return F.cross_entropy(logits.float(), self.targets[s], reduction="sum") - clean

    @torch.no_grad()
    def value(self, v: torch.Tensor) -> float:
        total = sum(float(self._score(s, c, v)) for s, c in zip(self.slices(), self.clean, strict=True))
        return total / self.h.shape[0]

    def value_and_grad(self, u: torch.Tensor, project: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        """Influence at ``v = unit(u without the span of project)`` and its gradient with respect to ``u``."""
        total, grad = 0.0, torch.zeros_like(u)
        for s, clean in zip(self.slices(), self.clean, strict=True):
            with torch.enable_grad():
                leaf = u.detach().requires_grad_(True)
                w = leaf if project is None else leaf - project @ (project.T @ leaf)
                score = self._score(s, clean, w / w.norm()) / self.h.shape[0]
                # Gradient for u alone: the lens's and the model's own parameters keep their .grad untouched.
                (g,) = torch.autograd.grad(score, leaf)
            total += float(score.detach())
            grad += g
        return total, grad


def _unit_orthogonal(x: torch.Tensor, project: torch.Tensor | None) -> torch.Tensor | None:
    """``x`` with the span of ``project``'s columns removed (twice, for round-off), normalised; None if ~0."""
    norm = x.norm()
    for _ in range(2):
        if project is not None:
            x = x - project @ (project.T @ x)
    return None if x.norm() <= 1e-6 * norm else x / x.norm()


@torch.no_grad()
def _readout_gram(lens: Lens, layer: int, d: int, wtw: torch.Tensor) -> torch.Tensor:
    """[d, d] Gram matrix ``M^T M`` of the linear part ``M`` of the lens's read-out at ``layer``: translator, any
    output projection, output embedding (``wtw`` is the embedding's ``W^T W``). The final norm is left out, as in
    the paper's starting points: its gain and scale depend on the state."""
    eye = torch.eye(d, device=wtw.device)
    zero = torch.zeros(1, d, device=wtw.device)
    post = lens.unembed.parts.post_norm
    dtype = lens.unembed.dtype

    def read(x: torch.Tensor) -> torch.Tensor:
        x = lens.transform_hidden(x, layer)
        return (x if post is None else post(x.to(dtype))).double()

    rows = read(eye) - read(zero)  # row i: the image of basis vector e_i (an affine map's bias cancels)
    return rows @ wtw @ rows.T


def _embedding_gram(lens: Lens, device: torch.device) -> torch.Tensor:
    """``W^T W`` of the output embedding [vocab, d'], in float64, accumulated over chunks of the vocabulary."""
    weight = lens.unembed.parts.output_embedding.weight.detach()
    out = torch.zeros(weight.shape[1], weight.shape[1], dtype=torch.float64, device=device)
    for start in range(0, weight.shape[0], 8192):
        chunk = weight[start : start + 8192].to(device, torch.float64)
        out += chunk.T @ chunk
    return out


class _Directions:
    """Top eigenvectors of a symmetric [d, d] matrix restricted to the orthogonal complement of some directions.

    The full eigendecomposition is done once; each restriction is a Rayleigh-Ritz step in the span of the top
    ``pool`` eigenvectors with the excluded directions projected out, cheap for any number of steps.
    """

    def __init__(self, gram: torch.Tensor, pool: int) -> None:
        self.gram = gram
        _, vecs = torch.linalg.eigh(gram)
        self.pool = vecs.flip(1)[:, : min(pool, gram.shape[0])]

    def top(self, n: int, project: torch.Tensor | None) -> list[torch.Tensor]:
        if n <= 0:
            return []
        x = self.pool
        if project is not None:
            p = project.to(x)
            x = x - p @ (p.T @ x)
            x = x[:, x.norm(dim=0) > 1e-3]  # pool directions that lay (almost) inside the excluded span
            if x.shape[1] == 0:
                return []
            x = torch.linalg.qr(x).Q
        _, vecs = torch.linalg.eigh(x.T @ self.gram @ x)
        return list((x @ vecs.flip(1)[:, :n]).T)


class _Search:
    """The greedy search of one layer: each step is the best of several L-BFGS climbs on the sphere."""

    def __init__(
        self,
        objective: _Influence,
        readout: _Directions,
        data: _Directions,
        *,
        starts: int,
        candidates: int,
        max_iter: int,
        orthonormal: bool,
        generator: torch.Generator,
    ) -> None:
        self.objective, self.readout, self.data = objective, readout, data
        self.starts, self.candidates, self.max_iter = starts, candidates, max_iter
        self.orthonormal, self.generator = orthonormal, generator

    def _starting_points(self, project: torch.Tensor | None) -> list[torch.Tensor]:
        """The starting directions of one step, restricted to the complement of ``project``: the read-out's top
        singular direction (the paper's start), then the best of the other candidates by their influence."""
        like = self.objective.h
        n = self.candidates
        pool = [*self.readout.top(n, project), *self.data.top(n, project)]
        pool += [torch.randn(like.shape[1], generator=self.generator) for _ in range(n)]
        units = [v for v in (_unit_orthogonal(x.to(like), project) for x in pool) if v is not None]
        first, rest = units[:1], sorted(units[1:], key=self.objective.value, reverse=True)
        return [*first, *rest[: self.starts - len(first)]]

    def _climb(self, start: torch.Tensor, project: torch.Tensor | None) -> torch.Tensor | None:
        """L-BFGS ascent of the influence from ``start`` over unit vectors orthogonal to ``project``."""
        u = start.clone().requires_grad_(True)
        # Changes below this are round-off of a float32 objective of that size: stop there, not at max_iter.
        tolerance = CLIMB_RTOL * abs(self.objective.value(start))
        opt = torch.optim.LBFGS([u], max_iter=self.max_iter, tolerance_change=tolerance, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            value, grad = self.objective.value_and_grad(u, project)
            u.grad = -grad  # L-BFGS minimises: ascend the influence
            return torch.tensor(-value)

        opt.step(closure)
        return _unit_orthogonal(u.detach(), project)

    def _best(
        self,
        points: list[torch.Tensor],
        warm: list[torch.Tensor],
        project: torch.Tensor | None,
        away_from: torch.Tensor | None,
    ) -> tuple[torch.Tensor, float] | None:
        """The best end point of the climbs from ``points`` and ``warm``, or ``warm`` point itself, that lies far
        enough from the span of ``away_from``'s orthonormal columns (None: anywhere)."""
        best: tuple[torch.Tensor, float] | None = None
        ends = [self._climb(start, project) for start in [*points, *warm]]
        for v in [*ends, *warm]:  # a warm point counts as it is: it is what shows that a step missed its maximum
            if v is None:
                continue
            if away_from is not None and float((v - away_from @ (away_from.T @ v)).norm()) < NEW_DIRECTION_SIN:
                continue  # back at (the span of) earlier directions: not a new one
            value = self.objective.value(v)
            if best is None or value > best[1]:
                best = (v, value)
        return best

    def step(self, found: list[torch.Tensor], warm: list[torch.Tensor]) -> tuple[torch.Tensor, float] | None:
        """The next direction and its energy, given the directions found so far and extra starting points."""
        span = torch.linalg.qr(torch.stack(found, 1)).Q if found else None
        points = self._starting_points(span)
        if not self.orthonormal:
            # Climb on the whole sphere from starts outside the earlier span; keep only genuinely new directions.
            free = self._best(points, warm, None, span)
            if free is not None:
                return free
        allowed = [v for v in (_unit_orthogonal(x, span) for x in warm) if v is not None]
        return self._best(points, allowed, span, None)


def _greedy(search: _Search, k: int) -> tuple[list[torch.Tensor], list[float]]:
    """``k`` directions in greedy order, with energies that never increase (see the module docstring)."""
    found: list[torch.Tensor] = []
    energies: list[float] = []
    warm: list[torch.Tensor] = []
    backtracks = 0
    while len(found) < k:
        result = search.step(found, warm)
        if result is None:  # every start collapsed onto earlier directions: cannot happen for k <= d
            raise CausalBasisError(f"the search for direction {len(found) + 1} found no allowed direction")
        v, energy = result
        beaten = next((i for i, e in enumerate(energies) if energy > e + BEAT_REL * abs(e) + BEAT_ABS), None)
        if beaten is not None and backtracks < k:
            # v was allowed at step `beaten` too, so that step missed its maximum: redo it, starting also from
            # v and the directions found since.
            backtracks += 1
            warm = [*found[beaten:], v]
            del found[beaten:], energies[beaten:]
            continue
        found.append(v)
        energies.append(energy)
    # Out of backtracks (or within round-off): sort, which keeps the basis and each vector's own energy.
    order = sorted(range(k), key=lambda j: -energies[j])
    return [found[j] for j in order], [energies[j] for j in order]


def extract_causal_bases(
    lens: Lens,
    hidden_states: Sequence[torch.Tensor],
    k: int,
    *,
    layers: Sequence[int] | None = None,
    mode: AblationMode = "mean",
    max_iter: int = 25,
    candidates: int = 8,
    seed: int = 0,
    starts: int = 4,
    labels: torch.Tensor | None = None,
    orthonormal: bool = True,
) -> dict[int, CausalBasis]:
    """Causal Basis Extraction: per layer, the ``k`` directions (orthonormal by default) whose ablation moves the lens
    most.

    Greedy (see the module docstring): ``v_j`` maximises the expected KL(lens(h) || lens(h ablated along v))
    over unit vectors orthogonal to ``v_1 .. v_{j-1}``, by L-BFGS from ``starts`` starting directions, keeping the
    best end point; a step that a later vector shows to have missed its maximum is redone. The lens and the model
    are not modified (no parameter's ``.grad`` is touched).

    Args:
        lens: The lens (a `lens_hub.TunedLens` or `lens_hub.LogitLens`).
        hidden_states: ``outputs.hidden_states`` of the model (``hidden_states[i]`` [..., d] is what the lens
            reads at layer ``i``; every leading position is one token, so drop padding first). It keeps
            ``tokens x vocab`` floats per layer: a few thousand tokens are plenty.
        k: Directions per layer, ``1 .. d``.
        layers: The layers to extract (default: every layer of the lens).
        mode: How a direction is ablated: ``"mean"`` (the paper's), ``"zero"`` or ``"resample"``.
        max_iter: L-BFGS iterations per climb.
        candidates: Starting directions screened per vector, of each of three kinds: the top singular
            directions of the lens's linear read-out (translator, output projection and output embedding; the
            top one is the paper's only start), the top principal directions of the part of the data that
            ablation changes, and random directions; all restricted to the directions still allowed.
        seed: Seed of the random directions and of the ``"resample"`` derangement.
        starts: L-BFGS climbs per vector (the cost grows in proportion): from the read-out's top singular
            direction and from the ``starts - 1`` other candidates of highest influence. The best end point wins.
        labels: Next-token labels: maximise the increase of their cross-entropy under the lens instead of the KL
            to its clean output. Token ids shaped like the hidden states' leading dimensions (e.g. the model's
            ``input_ids``, as for its ``labels=``): the prediction at position ``t`` is scored against
            ``labels[..., t + 1]``; the last position of each sequence and labels of -100 are not scored (they
            still count for the mean and as resampling sources). The energies are then increases of
            cross-entropy, in nats per scored token.
        orthonormal: With False, each ``v_j`` maximises the influence over the whole sphere, from starting
            directions orthogonal to the earlier vectors, and only end points clearly outside the span of the
            earlier vectors count (the sine of the angle above ``NEW_DIRECTION_SIN``), so the vectors are unit
            and linearly independent but not orthogonal: each is a maximum of its own influence rather than the
            best direction left after the earlier ones. If no climb leaves that span, the step falls back to the
            orthogonal search.

    Returns:
        ``{layer: CausalBasis}`` in the order of ``layers``.

    Raises:
        CausalBasisError: A bad ``k``, ``starts``, ``candidates``, ``mode``, layer or ``labels``, or hidden states
            of the wrong size.
    """
    _check_mode(mode)
    if starts < 1 or candidates < 1:
        raise CausalBasisError(
            f"starts and candidates must be at least 1, got starts={starts}, candidates={candidates}"
        )
    chosen = list(range(lens.num_layers)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < lens.num_layers or i >= len(hidden_states)]
    if bad:
        raise CausalBasisError(
            f"layers {bad} are out of range: the lens reads hidden_states[0..{lens.num_layers - 1}] and "
            f"{len(hidden_states)} hidden states were given"
        )
    generator = torch.Generator().manual_seed(seed)
    vocab = lens.unembed.parts.vocab_size
    embedding_gram: torch.Tensor | None = None
    bases: dict[int, CausalBasis] = {}
    for layer in chosen:
        d = hidden_states[layer].shape[-1]
        if not 1 <= k <= d:
            raise CausalBasisError(f"k must be between 1 and the hidden size {d}, got {k}")
        h = hidden_states[layer].detach().reshape(-1, d).float()
        if h.shape[0] < 2:
            raise CausalBasisError("causal basis extraction needs at least two tokens of hidden states")
        targets = None if labels is None else _next_token_targets(labels, hidden_states[layer].shape[:-1], vocab)
        mean = h.mean(0)
        ref = {"zero": torch.zeros_like(mean), "mean": mean}.get(mode)
        if ref is None:  # resample: each token's coordinate comes from one fixed other token
            ref = h[derangement(h.shape[0], generator=generator, device=h.device)]
        objective = _Influence(lens, h, layer, ref, max(1, ROW_ELEMENTS // vocab), targets)
        if embedding_gram is None:
            embedding_gram = _embedding_gram(lens, h.device)
        pool = k + candidates  # eigenvectors kept for the restricted starting directions
        readout = _Directions(_readout_gram(lens, layer, d, embedding_gram), pool)
        centred = (h - ref).double()  # the part of h that ablation changes: where ablating can move anything
        search = _Search(
            objective,
            readout,
            _Directions(centred.T @ centred, pool),
            starts=starts,
            candidates=candidates,
            max_iter=max_iter,
            orthonormal=orthonormal,
            generator=generator,
        )
        found, energies = _greedy(search, k)
        bases[layer] = CausalBasis(
            layer=layer,
            vectors=torch.stack(found, 1),
            energies=torch.tensor(energies, dtype=torch.float64),
            mode=mode,
            mean=mean,
            objective="kl" if labels is None else "ce",
            orthonormal=orthonormal,
        )
    return bases


@torch.no_grad()
def subspace_influence(
    lens: Lens,
    h: torch.Tensor,
    layer: int,
    basis: torch.Tensor,
    *,
    mode: AblationMode = "mean",
    mean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    labels: torch.Tensor | None = None,
    orthonormal: bool = True,
) -> float:
    """Expected KL(lens(h) || lens(h with the whole subspace removed)) over the tokens of ``h``, in nats.

    Args:
        lens: The lens.
        h: Hidden states [..., d] at ``layer``.
        layer: The layer ``h`` comes from.
        basis: [d, k] orthonormal columns (e.g. ``CausalBasis.vectors``) or a unit vector [d].
        mode: ``"zero"``, ``"mean"`` or ``"resample"`` (see `remove_subspace`).
        mean: The mean state for ``"mean"`` (default: the mean of ``h``).
        generator: Randomness of ``"resample"``.
        labels: Next-token labels shaped like ``h``'s leading dimensions (as in `extract_causal_bases`): return
            the expected increase of their cross-entropy instead, over the scored positions.
        orthonormal: With False, ``basis`` needs only linearly independent columns; their span is removed.
    """
    d = h.shape[-1]
    x = h.reshape(-1, d)
    ablated = remove_subspace(x, basis, mode, mean=mean, generator=generator, orthonormal=orthonormal)
    vocab = lens.unembed.parts.vocab_size
    if labels is not None:
        targets = _next_token_targets(labels, h.shape[:-1], vocab).to(x.device)
        keep = targets != IGNORE_INDEX
        x, ablated, targets = x[keep], ablated[keep], targets[keep]
    rows = max(1, ROW_ELEMENTS // vocab)
    total = 0.0
    for start in range(0, x.shape[0], rows):
        s = slice(start, start + rows)
        clean, moved = lens(x[s], layer).float(), lens(ablated[s], layer).float()
        if labels is None:
            total += float(_kl_sum(clean.log_softmax(-1), moved))
        else:
            total += float(F.cross_entropy(moved, targets[s], reduction="sum"))
            total -= float(F.cross_entropy(clean, targets[s], reduction="sum"))
    return total / x.shape[0]


@contextmanager
def ablate_subspace(
    model: nn.Module,
    layer: int,
    basis: torch.Tensor,
    mode: AblationMode = "mean",
    *,
    mean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    architecture: ArchitectureSpec | None = None,
    orthonormal: bool = True,
) -> Iterator[nn.Module]:
    """Ablate a subspace of the model's residual stream at ``layer`` while the context is open.

    A forward pre-hook on ``layers[layer]`` (located with `lens_hub.core.adapters.find_model_parts`) applies
    `remove_subspace` to the layer's input hidden state, which is ``hidden_states[layer]``, what a lens reads at
    ``layer``. Every later layer, and the output, then see the ablated state (``hidden_states[layer]`` itself, as
    the model reports it, is recorded before the hook). The hook is removed when the context exits, also on an
    exception.

    Example::

        basis = extract_causal_bases(lens, hidden, k=4, layers=[5])[5]
        with ablate_subspace(model, 5, basis.vectors, "mean", mean=basis.mean):
            ablated_logits = model(ids).logits

    Args:
        model: A Hugging Face causal LM.
        layer: ``0 .. num_layers - 1``.
        basis: [d, k] orthonormal columns, or a unit vector [d].
        mode: ``"zero"``, ``"mean"`` or ``"resample"`` (a derangement of all tokens of each forward pass).
        mean: [d] the mean state ``"mean"`` puts in (e.g. ``CausalBasis.mean``). Default: the mean over the tokens
            of each forward pass, which needs more than one token (so pass it when generating token by token).
        generator: Randomness of ``"resample"``.
        architecture: Explicit module paths, for models the built-in probes do not cover.
        orthonormal: With False, ``basis`` needs only linearly independent columns; their span is ablated.

    Yields:
        The model.

    Raises:
        CausalBasisError: A layer out of range, a bad mode or basis, or (inside a forward pass) ``"mean"``
            without ``mean`` on a single token.
    """
    _check_mode(mode)
    parts = find_model_parts(model, architecture)
    if not 0 <= layer < parts.num_layers:
        raise CausalBasisError(
            f"layer {layer} is out of range: the model has layers 0..{parts.num_layers - 1} (the hidden state a lens "
            "reads at layer i is the input of layer i)"
        )
    b = _as_basis(basis, parts.hidden_size, orthonormal)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            h, where = args[0], "args"
        elif isinstance(kwargs.get("hidden_states"), torch.Tensor):
            h, where = kwargs["hidden_states"], "kwargs"
        else:
            raise CausalBasisError(
                f"{type(module).__name__} was called without a hidden-state tensor to ablate (no positional "
                "argument and no hidden_states= keyword)"
            )
        if mode == "mean" and mean is None and h.shape[:-1].numel() < 2:
            raise CausalBasisError(
                "mean ablation without mean= takes the mean over the tokens of each forward pass, but this one has "
                "a single token (so nothing would change); pass mean=, e.g. CausalBasis.mean"
            )
        new = remove_subspace(h, b, mode, mean=mean, generator=generator)
        if where == "args":
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}

    handle = parts.layers[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield model
    finally:
        handle.remove()


@torch.no_grad()
def model_ablation_kl(
    model: nn.Module,
    input_ids: torch.Tensor,
    layer: int,
    basis: torch.Tensor,
    mode: AblationMode = "mean",
    *,
    mean: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    orthonormal: bool = True,
) -> float:
    """How far the model's own output moves when a subspace is ablated at ``layer`` (`ablate_subspace`).

    Args:
        model: A Hugging Face causal LM.
        input_ids: [batch, seq] tokens.
        layer: ``0 .. num_layers - 1``.
        basis: [d, k] orthonormal columns, or a unit vector [d].
        mode: ``"zero"``, ``"mean"`` or ``"resample"``.
        mean: The mean state for ``"mean"`` (default: the mean over the tokens of ``input_ids``).
        generator: Randomness of ``"resample"``.
        attention_mask: Passed to the model; masked positions are left out of the average.
        orthonormal: With False, ``basis`` needs only linearly independent columns; their span is ablated.

    Returns:
        The mean over positions of KL(output distribution || output distribution with the ablation), in nats.
    """
    log_p = model(input_ids, attention_mask=attention_mask).logits.float().log_softmax(-1)
    with ablate_subspace(model, layer, basis, mode, mean=mean, generator=generator, orthonormal=orthonormal):
        log_q = model(input_ids, attention_mask=attention_mask).logits.float().log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    if attention_mask is not None:
        keep = attention_mask.bool()
        return float(kl[keep].mean())
    return float(kl.mean())
