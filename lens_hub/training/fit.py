"""The closed-form fit: each translator solved by ridge regression from moments of hidden states.

Why: the paper's recipe starts every translator at zero and spends nearly all its compute sending every token of
every layer through the unembedding (``d x vocab`` GEMMs, forward and backward). A translator is affine, and its
output is what the head normalises, so the closest affine map in squared error to the residual ``y`` that enters
the head's norm (``t = y - x`` for ``x = hidden_states[l]``) is a least-squares problem whose only inputs are first
and second moments. The fit needs forward passes and ``4 d^2`` FLOPs per token and layer; no unembedding.
It optimises squared error, not KL; the KL polish (`lens_hub.training.train`) starts from it and corrects the rest.

What is fitted: the input of the first module `lens_hub.core.lens.Unembed.normalize` applies (the final norm; OPT-350m's
``project_out`` when there is no final norm; ``hidden_states[-1]`` when there is neither). Whatever the head does
after that (the norm itself, OPT's projection, Cohere and Granite logit scaling, Gemma soft-capping) is applied
unchanged to the translator's output, exactly as in the lens.

Requirements and error bounds:

* Regress ``t = y - x`` on ``x``, so the ridge pulls ``W`` towards zero (the identity, i.e. the logit lens) and
  ``W = A - I`` for the fitted map ``y ~ A x + b``. The bias is not penalised: the moments are centred.
* Precision that holds over long runs: each batch's cross-products are computed in float32 from states centred
  within the batch (accurate even for outlier dimensions whose mean dwarfs their spread) and added to float64
  sums; the final centring ``S/n - m m^T`` happens in float64. The batch size changes the result only by the
  rounding of one batch's products, and sums from several processes add as one process's do.
* Cost: ``4 d^2`` FLOPs per token and fitted layer (two ``[d, n] x [n, d]`` products), against about ``24 d^2`` per
  layer for the model's own forward pass (12 d^2 parameters a layer in the usual shape): the moments are about a
  sixth of the forward passes' arithmetic. bench/RESULTS.md has the measured split.
* The ridge is relative: ``lambda = ridge * trace(cov(x)) / d`` per layer, so one default fits models whose hidden
  states differ in scale by orders of magnitude (bench/RESULTS.md measures the choice of the default).
* Memory: two float64 ``[d, d]`` sums per fitted layer, ``16 d^2`` bytes (SmolLM2-135M: 5.3 MB a layer; an 8B
  model with d 4096: 268 MB a layer, 8.6 GB for 32 layers). Layers are fitted in groups that fit ``memory`` bytes,
  one set of forward passes per group.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..core.lens import BaseTunedLens
from ..core.models import hidden_states
from ..core.options import DEFAULT_RIDGE
from ..errors import FitError, FitWarning
from .data import TokenData

UPDATE_TOKENS = 4096  # tokens pooled per moment update (several small forward passes make one update)


def moment_bytes(hidden_size: int) -> int:
    """Bytes of accumulated moments per fitted layer (two float64 ``[d, d]`` sums; the ``[d]`` sums are small)."""
    return 16 * hidden_size * hidden_size


class Moments:
    """Running float64 sums of ``x``, ``t = y - x``, ``x x^T`` and ``x t^T`` for a group of layers.

    The sums are raw (not centred), so sums over disjoint data add: `all_reduce` gives on every process the moments
    of all processes' data together, and `update` over batches gives those of the whole set.
    """

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        device: torch.device,
        *,
        linear: bool = True,
    ) -> None:
        d = hidden_size
        f64 = dict(dtype=torch.float64, device=device)
        self.linear = linear  # False: only first moments (a bias-only fit needs no d x d sums)
        self.count = torch.zeros((), **f64)
        self.sum_x = torch.zeros(num_layers, d, **f64)
        self.sum_t = torch.zeros(num_layers, d, **f64)
        shape = (num_layers, d, d) if linear else (num_layers, 0, 0)
        self.sum_xx = torch.zeros(shape, **f64)
        self.sum_xt = torch.zeros(shape, **f64)

    @property
    def num_layers(self) -> int:
        return int(self.sum_x.shape[0])

    def update(self, xs: torch.Tensor | list[torch.Tensor], y: torch.Tensor) -> None:
        """Add one batch: ``xs[i]`` holds layer i's states ``[n, d]`` (any dtype), ``y`` the head's input ``[n, d]``.

        Layers are processed one at a time, so the temporaries are a few ``[n, d]`` tensors and two ``[d, d]`` ones.
        """
        y = y.reshape(-1, y.shape[-1]).float()
        n = y.shape[0]
        for i in range(self.num_layers):
            x = xs[i].reshape(-1, y.shape[-1]).float()
            t = y - x
            mx, mt = x.mean(0).double(), t.mean(0).double()
            self.sum_x[i] += mx * n
            self.sum_t[i] += mt * n
            if not self.linear:
                continue
            # Both sides centred: x - mean(x) in float32 still sums to ~n eps |mean|, which t's mean would amplify.
            xc = x - x.mean(0)
            self.sum_xx[i] += (xc.T @ xc).double().addr_(mx, mx, alpha=n)
            self.sum_xt[i] += (xc.T @ (t - t.mean(0))).double().addr_(mx, mt, alpha=n)
        self.count += n

    def all_reduce(self) -> None:
        """Sum the moments over all processes of the default process group (in place, on every process)."""
        for tensor in (self.count, self.sum_x, self.sum_t, self.sum_xx, self.sum_xt):
            if tensor.numel():
                dist.all_reduce(tensor)

    def nonfinite(self) -> tuple[list[int], bool]:
        """Positions (in this group) of layers whose sums of ``x`` are not finite, and whether the target's are not.

        A NaN or inf anywhere in a layer's states reaches its sums, so this checks every value added so far.
        """
        bad_x = ~torch.isfinite(self.sum_x).all(1)
        bad_t = ~torch.isfinite(self.sum_t).all(1)
        layers = [int(i) for i in torch.nonzero(bad_x).flatten()]
        return layers, bool((bad_t & ~bad_x).any())

    def solve(self, ridge: float, *, intercept: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge solution per layer: ``W`` [layers, d, d] and ``b`` [layers, d] with ``x + W x + b ~ y``.

        Args:
            ridge: Relative strength: ``lambda = ridge * trace(cov(x)) / d`` (0: plain least squares, the
                minimum-norm solution where ``x``'s covariance is singular).
            intercept: Fit ``b`` (centred moments); False fits ``W`` alone on uncentred moments.

        Returns:
            float64 tensors; for a first-moments-only group ``W`` is zero and ``b`` the mean of ``y - x``.
        """
        n = self.count
        mx, mt = self.sum_x / n, self.sum_t / n
        if not self.linear:
            return torch.zeros(self.num_layers, mx.shape[1], mx.shape[1], dtype=mx.dtype, device=mx.device), mt
        cxx, cxt = self.sum_xx / n, self.sum_xt / n
        if intercept:
            cxx = cxx - mx[:, :, None] * mx[:, None, :]
            cxt = cxt - mx[:, :, None] * mt[:, None, :]
        d = cxx.shape[-1]
        scale = torch.diagonal(cxx, dim1=1, dim2=2).sum(-1).clamp_min(torch.finfo(cxx.dtype).tiny) / d
        system = cxx + (ridge * scale)[:, None, None] * torch.eye(d, dtype=cxx.dtype, device=cxx.device)
        factor, info = torch.linalg.cholesky_ex(system)
        if bool((info == 0).all()):
            coef = torch.cholesky_solve(cxt, factor)
        else:  # singular (ridge 0 on too few tokens, or constant states): the minimum-norm least-squares solution
            coef = torch.linalg.pinv(system, hermitian=True) @ cxt
        weight = coef.transpose(1, 2)  # t ~ x @ coef, and a translator computes x @ W^T
        bias = mt - torch.einsum("lij,lj->li", weight, mx) if intercept else torch.zeros_like(mt)
        return weight, bias


def head_input_module(lens: BaseTunedLens) -> nn.Module | None:
    """The module whose input the translators' outputs stand for: the first one `Unembed.normalize` applies."""
    parts = lens.unembed.parts
    return parts.final_norm if parts.final_norm is not None else parts.post_norm


@contextmanager
def capture_head_input(lens: BaseTunedLens) -> Iterator[list[torch.Tensor]]:
    """Collect the input of the lens's head (see `head_input_module`) during the model's forward passes.

    Yields a list that each forward pass appends one tensor to; with no norm or projection it stays empty and the
    head's input is ``hidden_states[-1]`` itself.
    """
    module = head_input_module(lens)
    captured: list[torch.Tensor] = []
    if module is None:
        yield captured
        return

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if tensors:
            captured.append(tensors[0].detach())

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


def states_and_head_input(
    lens: BaseTunedLens, model: nn.Module, input_ids: torch.Tensor
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """One forward pass: all hidden states, and the residual that enters the head's norm (``[B, T, d]``).

    Raises:
        FitError: The head's norm ran other than once in the forward pass (its input is then ambiguous).
    """
    with capture_head_input(lens) as captured:
        hs = hidden_states(model, input_ids)
    if head_input_module(lens) is None:
        return hs, hs[-1]
    if len(captured) != 1:
        raise FitError(
            f"the final norm of {type(model).__name__} ran {len(captured)} times in one forward pass, so its input "
            "cannot be read as the residual the lens's head normalises; train with init='zero' (--init zero), or name "
            "the modules "
            "with ArchitectureSpec(final_norm=...)."
        )
    return hs, captured[0]


@dataclass
class FitReport:
    """What a fit did (recorded in the lens's provenance and printed by the trainer)."""

    tokens: int  # tokens of all processes that the moments summarise
    layers: list[int]
    ridge: float
    passes: int  # forward passes over the data: one per group of layers that fit the memory budget
    forward_seconds: float  # this process's time in the model's forward passes
    fit_seconds: float  # this process's time accumulating moments and solving


def layer_groups(layers: list[int], hidden_size: int, memory: int, *, linear: bool = True) -> list[list[int]]:
    """Split ``layers`` into consecutive groups whose moments fit ``memory`` bytes (at least one layer a group)."""
    per_layer = moment_bytes(hidden_size) if linear else 16 * hidden_size
    size = max(1, memory // per_layer)
    return [layers[i : i + size] for i in range(0, len(layers), size)]


def default_memory(device: torch.device) -> int:
    """Bytes the moments may use by default: half of what is free on ``device`` (the GPU, or the host's RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): assume 4 GiB
        return 4 << 30


def fit_lens(
    lens: BaseTunedLens,
    model: nn.Module,
    data: TokenData,
    sequences: torch.Tensor,
    layers: list[int],
    *,
    batch_size: int = 8,
    ridge: float = DEFAULT_RIDGE,
    memory: int | None = None,
    bias_only: bool = False,
    autocast: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FitReport:
    """Fit the translators of ``layers`` in closed form, in place, from the sequences ``data.sequences[sequences]``.

    Under ``torchrun`` each process passes its own share of the sequences; the moments are summed over processes
    before the solve, so every process ends with the same lens.

    Args:
        lens: The lens to fit (its other translators are left as they are).
        model: The frozen base model, on the lens's device.
        data: Token sequences.
        sequences: Indices into ``data.sequences`` that this process reads.
        layers: Translators to fit.
        batch_size: Sequences per forward pass.
        ridge: Relative ridge strength (see `Moments.solve`).
        memory: Bytes the moments may take (default: half of what is free); layers are fitted in groups, one set of
            forward passes per group, when all of them do not fit.
        bias_only: Fit only the biases, ``b = mean(y - x)``, on a lens whose weights are zero.
        autocast: bf16 autocast for the forward passes on CUDA (as in training).
        progress: Called with (batches done, batches in all) after each forward pass.

    Raises:
        FitError: No sequences, or non-finite hidden states (naming the layers).
    """
    if bias_only and any(bool(lens.translators[i].weight.any()) for i in layers):
        raise FitError("a bias-only fit needs zero translator weights; fit biases only on a fresh lens")
    world = dist.get_world_size() if dist.is_initialized() else 1
    count = torch.tensor([len(sequences)])
    if world > 1:
        dist.all_reduce(count)
    if int(count) == 0:
        raise FitError("the fit got no sequences; give it data (or train with init='zero', --init zero)")
    device = lens.unembed.parts.output_embedding.weight.device
    d = lens.config.hidden_size
    groups = layer_groups(layers, d, memory if memory is not None else default_memory(device), linear=not bias_only)
    batches = [sequences[i : i + batch_size] for i in range(0, len(sequences), batch_size)]
    total, done = len(batches) * len(groups), 0
    forward_s = fit_s = 0.0
    use_autocast = autocast and device.type == "cuda"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    solved: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []
    for group in groups:
        moments = Moments(len(group), d, device, linear=not bias_only)
        pending: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        for k, batch in enumerate(batches):
            t0 = time.perf_counter()
            ids = data.sequences[batch].to(device)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
                hs, y = states_and_head_input(lens, model, ids)
            pending.append(([hs[i] for i in group], y))
            del hs
            sync()
            t1 = time.perf_counter()
            # Small batches are pooled up to UPDATE_TOKENS: one large product per layer runs faster than many.
            if sum(p[1].shape[0] * p[1].shape[1] for p in pending) >= UPDATE_TOKENS or k == len(batches) - 1:
                with torch.no_grad(), _tensor_core_products(device):
                    moments.update(
                        [torch.cat([p[0][j] for p in pending]) for j in range(len(group))],
                        torch.cat([p[1] for p in pending]),
                    )
                pending = []
                _check_finite(moments, group)  # one host sync per update: stop at the first bad batch
                sync()
            forward_s, fit_s = forward_s + t1 - t0, fit_s + time.perf_counter() - t1
            done += 1
            if progress is not None:
                progress(done, total)
        t0 = time.perf_counter()
        if world > 1:
            moments.all_reduce()
        with torch.no_grad():
            weight, bias = moments.solve(ridge, intercept=lens.config.bias)
            dtype = lens.translators[group[0]].weight.dtype
            solved.append((group, weight.to(dtype), bias.to(dtype)))
        sync()
        fit_s += time.perf_counter() - t0
    with torch.no_grad():  # written only now: a refusal in a later group leaves the lens as it was
        for group, weight, bias in solved:
            for k, i in enumerate(group):
                translator = lens.translators[i]
                if not bias_only:
                    translator.weight.copy_(weight[k])
                if translator.bias is not None:
                    translator.bias.copy_(bias[k])
    n = int(moments.count)
    if n < d and not bias_only:
        warnings.warn(
            f"the fit saw {n:,} tokens, fewer than the hidden size {d}: the regression is underdetermined and the "
            f"ridge ({ridge:g}) decides the solution. Fit on at least {10 * d:,} tokens (fit_tokens, --fit-tokens) "
            "for a lens that generalises.",
            FitWarning,
            stacklevel=2,
        )
    return FitReport(n, list(layers), ridge, len(groups), forward_s, fit_s)


@contextmanager
def _tensor_core_products(device: torch.device) -> Iterator[None]:
    """On CUDA, run float32 products on TF32 tensor cores (float32 accumulation) for the duration.

    The inputs are rounded to 10 mantissa bits, a relative 2^-11 per element of states already centred; the noise
    averages out over a batch's tokens (tests/test_fit.py checks a fit from states rounded so is the same lens).
    Elsewhere (the CPU) nothing changes.
    """
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def _check_finite(moments: Moments, group: list[int]) -> None:
    """Refuse non-finite hidden states, naming the layers (or the final norm's input, which every layer shares)."""
    layers, target = moments.nonfinite()
    if not layers and not target:
        return
    what = f"hidden states of layers {[group[k] for k in layers]}" if layers else "the final norm's input"
    raise FitError(
        f"the {what} hold NaN or infinite values, so no translator can be fitted to them. Load the model in a "
        "wider dtype (float32), or leave those layers out (layers, --layers)."
    )
