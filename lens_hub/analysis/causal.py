"""Causal basis extraction: the directions of a hidden state that a lens's prediction depends on most, and
ablating them in the model itself.

Causal Basis Extraction (Belrose et al. 2023, arXiv 2303.08112, section "Causal basis extraction") ranks
directions of the residual stream by their *influence* on a lens: the expected KL divergence between the lens's
output on ``h`` and on ``h`` with its component along a unit vector ``v`` removed,
``E_h[KL(lens(h) || lens(r(h, v)))]``. `extract_causal_bases` finds, per layer, ``k`` orthonormal vectors
greedily: ``v_1`` maximises the influence, each next ``v_j`` maximises it among unit vectors orthogonal to
``v_1 .. v_{j-1}``. Each maximisation is gradient ascent (L-BFGS with a strong-Wolfe line search) on an
unconstrained vector ``u`` mapped to the sphere with the earlier vectors projected out, started from the best of a
few candidates (the top principal directions of the data and random directions). A vector's *energy* is its
influence, ablated on its own.

Removing the component along a subspace with orthonormal basis ``B`` [d, k] (`remove_subspace`) keeps the
orthogonal part of ``h`` and replaces its coordinates ``c = h B``:

- ``"zero"``: by 0 (``h - c B^T``);
- ``"mean"``: by the mean's, ``mean B`` (the paper's choice: the ablated state stays on the data's average);
- ``"resample"``: by those of another token of the same batch (a random derangement of the tokens).

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
from torch import nn

from ..core.adapters import ArchitectureSpec, find_model_parts
from ..core.lens import Lens
from ..errors import CausalBasisError

AblationMode = Literal["zero", "mean", "resample"]
MODES: tuple[str, ...] = ("zero", "mean", "resample")
ROW_ELEMENTS = 1 << 24  # logits per chunk of tokens in the influence objective: 64 MiB in fp32


@dataclass(frozen=True)
class CausalBasis:
    """An ordered orthonormal basis of the directions a lens depends on most at one layer.

    Attributes:
        layer: The layer (``hidden_states[layer]``) the basis is for.
        vectors: [d, k] orthonormal columns, in the order the greedy search found them.
        energies: [k] float64: the influence of each vector ablated on its own, the expected
            KL(lens(h) || lens(h ablated along it)) over the tokens it was extracted on, in nats per token.
        mode: The ablation used (``"zero"``, ``"mean"`` or ``"resample"``).
        mean: [d] the mean hidden state of those tokens (what ``"mean"`` ablation uses; pass it on to
            `ablate_subspace` to ablate the model the same way).
    """

    layer: int
    vectors: torch.Tensor
    energies: torch.Tensor
    mode: str
    mean: torch.Tensor

    @property
    def k(self) -> int:
        """Number of basis vectors."""
        return self.vectors.shape[1]


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise CausalBasisError(f"unknown ablation mode {mode!r}; use one of {', '.join(map(repr, MODES))}")


def _as_basis(basis: torch.Tensor, d: int) -> torch.Tensor:
    """``basis`` as a [d, k] matrix with orthonormal columns (a [d] vector is one column)."""
    b = basis.unsqueeze(-1) if basis.dim() == 1 else basis
    if b.dim() != 2 or b.shape[0] != d:
        raise CausalBasisError(
            f"basis must be a [{d}] vector or a [{d}, k] matrix (columns = directions) for hidden size {d}, got "
            f"shape {list(basis.shape)}"
        )
    gram = b.double().T @ b.double()
    if not torch.allclose(gram, torch.eye(b.shape[1], dtype=torch.float64, device=b.device), atol=1e-4):
        raise CausalBasisError(
            "the basis columns are not orthonormal; orthonormalise them first, e.g. torch.linalg.qr(basis).Q"
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

    Returns:
        A new tensor like ``h`` (same shape and dtype; computed in at least float32).

    Raises:
        CausalBasisError: An unknown mode, a basis of the wrong shape or not orthonormal, or ``"resample"`` with a
            single token.
    """
    _check_mode(mode)
    d = h.shape[-1]
    work = torch.promote_types(h.dtype, torch.float32)
    b = _as_basis(basis, d).to(h.device, work)
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


class _Influence:
    """The influence objective of one layer: expected KL(lens(h) || lens(h ablated along v)), chunked over tokens."""

    def __init__(self, lens: Lens, h: torch.Tensor, layer: int, ref: torch.Tensor, rows: int) -> None:
        self.lens, self.h, self.layer, self.ref, self.rows = lens, h, layer, ref, rows
        with torch.no_grad():
            # The clean targets are kept ([tokens, vocab] floats); the search is meant for a few thousand tokens.
            self.log_p = [lens(h[s], layer).float().log_softmax(-1) for s in self.slices()]

    def slices(self) -> Iterator[slice]:
        for start in range(0, self.h.shape[0], self.rows):
            yield slice(start, start + self.rows)

    def _ref(self, s: slice) -> torch.Tensor:
        return self.ref if self.ref.dim() == 1 else self.ref[s]

    @torch.no_grad()
    def value(self, v: torch.Tensor) -> float:
        total = sum(
            float(_kl_sum(lp, self.lens(_ablated(self.h[s], self._ref(s), v), self.layer)))
            for s, lp in zip(self.slices(), self.log_p, strict=True)
        )
        return total / self.h.shape[0]

    def value_and_grad(self, u: torch.Tensor, project: torch.Tensor | None) -> tuple[float, torch.Tensor]:
        """Influence at ``v = unit(u without the span of project)`` and its gradient with respect to ``u``."""
        total, grad = 0.0, torch.zeros_like(u)
        for s, lp in zip(self.slices(), self.log_p, strict=True):
            with torch.enable_grad():
                leaf = u.detach().requires_grad_(True)
                w = leaf if project is None else leaf - project @ (project.T @ leaf)
                v = w / w.norm()
                kl = _kl_sum(lp, self.lens(_ablated(self.h[s], self._ref(s), v), self.layer)) / self.h.shape[0]
                # Gradient for u alone: the lens's and the model's own parameters keep their .grad untouched.
                (g,) = torch.autograd.grad(kl, leaf)
            total += float(kl.detach())
            grad += g
        return total, grad


def _unit_orthogonal(x: torch.Tensor, project: torch.Tensor | None) -> torch.Tensor | None:
    """``x`` with the span of ``project``'s columns removed (twice, for round-off), normalised; None if ~0."""
    norm = x.norm()
    for _ in range(2):
        if project is not None:
            x = x - project @ (project.T @ x)
    return None if x.norm() <= 1e-6 * norm else x / x.norm()


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
) -> dict[int, CausalBasis]:
    """Causal Basis Extraction: per layer, the ``k`` orthonormal directions whose ablation moves the lens most.

    Greedy (see the module docstring): ``v_j`` maximises the expected KL(lens(h) || lens(h ablated along v))
    over unit vectors orthogonal to ``v_1 .. v_{j-1}``, by L-BFGS from the best of ``candidates`` starting
    directions. The lens and the model are not modified (no parameter's ``.grad`` is touched).

    Args:
        lens: The lens (a `lens_hub.TunedLens` or `lens_hub.LogitLens`).
        hidden_states: ``outputs.hidden_states`` of the model (``hidden_states[i]`` [..., d] is what the lens
            reads at layer ``i``; every leading position is one token, so drop padding first). It keeps
            ``tokens x vocab`` floats per layer: a few thousand tokens are plenty.
        k: Directions per layer, ``1 .. d``.
        layers: The layers to extract (default: every layer of the lens).
        mode: How a direction is ablated: ``"mean"`` (the paper's), ``"zero"`` or ``"resample"``.
        max_iter: L-BFGS iterations per direction.
        candidates: Starting directions tried per vector (half from the top principal directions of the
            centred states, half random); the one with the highest influence is optimised.
        seed: Seed of the random starting directions and of the ``"resample"`` derangement.

    Returns:
        ``{layer: CausalBasis}`` in the order of ``layers``.

    Raises:
        CausalBasisError: A bad ``k``, ``mode`` or layer, or hidden states of the wrong size.
    """
    _check_mode(mode)
    chosen = list(range(lens.num_layers)) if layers is None else list(layers)
    bad = [i for i in chosen if not 0 <= i < lens.num_layers or i >= len(hidden_states)]
    if bad:
        raise CausalBasisError(
            f"layers {bad} are out of range: the lens reads hidden_states[0..{lens.num_layers - 1}] and "
            f"{len(hidden_states)} hidden states were given"
        )
    generator = torch.Generator().manual_seed(seed)
    bases: dict[int, CausalBasis] = {}
    for layer in chosen:
        d = hidden_states[layer].shape[-1]
        if not 1 <= k <= d:
            raise CausalBasisError(f"k must be between 1 and the hidden size {d}, got {k}")
        h = hidden_states[layer].detach().reshape(-1, d).float()
        if h.shape[0] < 2:
            raise CausalBasisError("causal basis extraction needs at least two tokens of hidden states")
        mean = h.mean(0)
        ref = {"zero": torch.zeros_like(mean), "mean": mean}.get(mode)
        if ref is None:  # resample: each token's coordinate comes from one fixed other token
            ref = h[derangement(h.shape[0], generator=generator, device=h.device)]
        vocab = lens.unembed.parts.vocab_size
        objective = _Influence(lens, h, layer, ref, max(1, ROW_ELEMENTS // vocab))
        # Principal directions of the part of h that ablation changes: where ablating can move anything at all.
        principal = torch.linalg.svd(h - ref, full_matrices=False).Vh
        found: list[torch.Tensor] = []
        energies: list[float] = []
        for _ in range(k):
            project = torch.stack(found, 1) if found else None
            starts = [principal[i] for i in range(min(len(principal), max(1, candidates // 2)))]
            starts += [torch.randn(d, generator=generator).to(h) for _ in range(max(1, candidates - len(starts)))]
            units = [v for v in (_unit_orthogonal(s, project) for s in starts) if v is not None]
            u = max(units, key=objective.value).clone()
            opt = torch.optim.LBFGS([u.requires_grad_(True)], max_iter=max_iter, line_search_fn="strong_wolfe")

            def closure(
                u: torch.Tensor = u, project: torch.Tensor | None = project, objective: _Influence = objective
            ) -> torch.Tensor:
                value, grad = objective.value_and_grad(u, project)
                u.grad = -grad  # L-BFGS minimises: ascend the influence
                return torch.tensor(-value)

            opt.step(closure)
            v = _unit_orthogonal(u.detach(), project)
            if v is None:  # cannot happen for a finite optimum; guard the division anyway
                raise CausalBasisError(f"the search for direction {len(found) + 1} at layer {layer} collapsed")
            found.append(v)
            energies.append(objective.value(v))
        bases[layer] = CausalBasis(
            layer=layer,
            vectors=torch.stack(found, 1),
            energies=torch.tensor(energies, dtype=torch.float64),
            mode=mode,
            mean=mean,
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
    """
    d = h.shape[-1]
    x = h.reshape(-1, d)
    ablated = remove_subspace(x, basis, mode, mean=mean, generator=generator)
    rows = max(1, ROW_ELEMENTS // lens.unembed.parts.vocab_size)
    total = 0.0
    for start in range(0, x.shape[0], rows):
        s = slice(start, start + rows)
        total += float(_kl_sum(lens(x[s], layer).float().log_softmax(-1), lens(ablated[s], layer)))
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
    b = _as_basis(basis, parts.hidden_size)

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

    Returns:
        The mean over positions of KL(output distribution || output distribution with the ablation), in nats.
    """
    log_p = model(input_ids, attention_mask=attention_mask).logits.float().log_softmax(-1)
    with ablate_subspace(model, layer, basis, mode, mean=mean, generator=generator):
        log_q = model(input_ids, attention_mask=attention_mask).logits.float().log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    if attention_mask is not None:
        keep = attention_mask.bool()
        return float(kl[keep].mean())
    return float(kl.mean())
