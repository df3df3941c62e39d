"""Lens training losses: a fused, chunked KL/CE over all layers, and the reference step it replaces.

The lens step costs far more than the model: every token of every layer goes through the unembedding (2 d V
flops) forward and backward. The reference implementation loops over layers, materialises fp32 log-softmax over the
whole vocabulary per layer and syncs the host per layer. `fused_lens_losses` instead

* runs all layers of a chunk of tokens through the head in one GEMM ([layers x chunk, d] @ [d, V]);
* computes the gradient with respect to the logits analytically (``softmax(z) - p``) during the forward pass, so
  no [tokens x vocab] tensor is kept for the backward pass and none exists for more than one chunk at a time;
* returns per-layer losses as one tensor, so the host syncs once per step at most.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..core.lens import BaseTunedLens
from ..core.options import KERNELS, Kernel, Loss  # noqa: F401 - Kernel and Loss are re-exported for the trainer
from ..errors import TrainSettingsError
from .kernels import kl_rows_, triton_usable

DEFAULT_CHUNK_ELEMENTS = 1 << 26  # logits per chunk (layers x tokens x vocab): 256 MiB in fp32


class _HeadKL(torch.autograd.Function):
    """Per-layer mean KL(target || softmax(head(x))) (or CE), with the gradient computed in the forward pass."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,  # [L, N, d] normalised lens states
        target: torch.Tensor,  # [N, d] final-normed states (KL) or [N] int64 next-token labels (CE)
        head: object,  # lens.unembed
        chunk: int,
        use_triton: bool,  # the fused Triton softmax/KL (KL loss, no post-processing; see lens_hub.training.kernels)
    ) -> torch.Tensor:
        num_layers, n, d = x.shape
        weight = head.parts.output_embedding.weight  # type: ignore[attr-defined]
        grad = torch.empty_like(x)
        losses = torch.zeros(num_layers, dtype=torch.float32, device=x.device)
        kl = target.dtype != torch.int64
        if use_triton:
            padded_weight, padded_bias = _padded_head(weight, head.parts.output_embedding.bias)  # type: ignore[attr-defined]
            vocab = weight.shape[0]
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            c = stop - start
            xc = x[:, start:stop].reshape(-1, d)
            if kl:  # the target distribution of this chunk's tokens
                with torch.no_grad():
                    log_p = head.head(target[start:stop]).float().log_softmax(-1)  # type: ignore[attr-defined]
                p = log_p.exp()
                neg_entropy = (p * log_p).sum(-1)  # [c]
            if use_triton:
                u = F.linear(xc, padded_weight, padded_bias)  # [L c, padded vocab]; padded logits are 0
                rows = kl_rows_(u[:, :vocab], p).view(num_layers, c)  # u now holds softmax - p (padding: still 0)
                losses += (rows + neg_entropy).sum(1)
                grad[:, start:stop] = (u.to(weight.dtype) @ padded_weight).view(num_layers, c, d)
                continue
            u = F.linear(xc, weight, head.parts.output_embedding.bias)  # type: ignore[attr-defined]
            post = head.has_postprocessing  # type: ignore[attr-defined]
            if post:  # only the cheap elementwise post-processing (soft-capping, scaling) goes through autograd
                with torch.enable_grad():
                    u = u.detach().requires_grad_()
                    z_post = head.postprocess(u).float()  # type: ignore[attr-defined]
                z = z_post.detach().clone()
            else:
                z = u.float()
            z = z.view(num_layers, c, -1)
            # One exp per logit: e = exp(z - max) gives both log-sum-exp and softmax. In place, no extra copies.
            zmax = z.amax(-1, keepdim=True)
            if kl:
                cross = torch.einsum("lcv,cv->lc", z, p)  # sum_v p z, per layer and token
            else:
                labels = target[start:stop]
                cross = z.gather(2, labels.view(1, c, 1).expand(num_layers, c, 1)).squeeze(2)
            e = z.sub_(zmax).exp_()
            sums = e.sum(-1, keepdim=True)
            lse = (zmax + sums.log()).squeeze(-1)  # [L, c]
            row = (neg_entropy - cross + lse) if kl else (lse - cross)
            losses += row.sum(1)
            dz = e.div_(sums)  # softmax
            if kl:
                dz.sub_(p)
            else:
                dz.scatter_add_(
                    2,
                    labels.view(1, c, 1).expand(num_layers, c, 1),
                    torch.full((num_layers, c, 1), -1.0, device=dz.device),
                )
            dz = dz.view(num_layers * c, -1)
            du = torch.autograd.grad(z_post, u, dz)[0] if post else dz
            grad[:, start:stop] = (du.to(weight.dtype) @ weight).view(num_layers, c, d)
        ctx.save_for_backward(grad)
        ctx.n = n
        return losses / n

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_losses: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        scale = (grad_losses / ctx.n).to(grad.dtype)[:, None, None]
        return grad * scale, None, None, None, None


def _padded_head(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head with zero rows added up to a multiple of 64, so that every row of logits starts 16-byte aligned and
    the kernel loads 16 bytes at a time (GPT-2's 50,257 would otherwise force 2-byte loads). The zero rows give zero
    logits, which the kernel never reads and which add nothing to the gradient GEMM."""
    extra = -weight.shape[0] % 64
    if not extra:
        return weight, bias
    weight = F.pad(weight, (0, 0, 0, extra))
    return weight, None if bias is None else F.pad(bias, (0, extra))


def lens_states(lens: BaseTunedLens, hidden_states: tuple[torch.Tensor, ...], layers: list[int]) -> torch.Tensor:
    """Translated and final-normed states of the chosen layers, stacked: [len(layers), N, d]."""
    h = torch.stack([hidden_states[i] for i in layers]).flatten(1, 2)  # [L, N, d]
    ts = [lens.translators[i] for i in layers]
    w = torch.stack([t.weight for t in ts])
    x = h.to(w.dtype)
    y = torch.bmm(x, w.transpose(1, 2))
    if ts[0].bias is not None:
        y = y + torch.stack([t.bias for t in ts])[:, None, :]
    return lens.unembed.normalize((x + y).to(h.dtype))


def chunk_size(num_layers: int, vocab: int, budget: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so that a chunk's logits (layers x tokens x vocab) stay within ``budget`` elements."""
    return max(1, budget // max(1, num_layers * vocab))


def choose_kernel(kernel: str, loss: str, lens: BaseTunedLens, device: torch.device) -> Literal["eager", "triton"]:
    """The softmax/KL implementation a step runs: the one rule, used by `fused_lens_losses` and recorded by the trainer.

    ``"auto"`` is Triton for the KL loss without logit post-processing where `triton_usable` says the kernel runs on
    ``device``, else eager; ``"eager"`` is eager; an explicit ``"triton"`` runs Triton (on the CPU only under Triton's
    interpreter) or is refused, never quietly replaced.

    Raises:
        TrainSettingsError: An unknown kernel, or ``"triton"`` where it cannot run.
    """
    if kernel not in KERNELS:
        raise TrainSettingsError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    fits = loss == "kl" and not lens.unembed.has_postprocessing
    if kernel == "eager" or (kernel == "auto" and not fits):
        return "eager"
    usable = fits and triton_usable(device, interpreter=kernel == "triton")
    if kernel == "triton" and not usable:
        raise TrainSettingsError(
            "kernel='triton' (--kernel triton) needs Triton on a CUDA device, the KL loss and no logit "
            "post-processing; use kernel='auto' to fall back to the eager step"
        )
    return "triton" if usable else "eager"


def fused_lens_losses(
    lens: BaseTunedLens,
    hidden_states: tuple[torch.Tensor, ...],
    layers: list[int],
    *,
    loss: str = "kl",
    input_ids: torch.Tensor | None = None,
    chunk: int | None = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """Per-layer training losses (mean over tokens, nats) for one batch, as a differentiable [len(layers)] tensor.

    Args:
        lens: The lens being trained.
        hidden_states: ``hidden_states`` of the model's forward pass (``num_layers + 1`` tensors [B, T, d]).
        layers: Which translators to train.
        loss: ``"kl"``: KL(final-layer distribution || lens distribution), no token shift (the paper's
            objective); ``"ce"``: cross-entropy against the next token (needs ``input_ids``).
        chunk: Tokens per chunk (default: keep a chunk's logits under ~256 MiB).
        kernel: ``"eager"``: PyTorch operations; ``"triton"``: the fused Triton softmax/KL of
            `lens_hub.training.kernels` (KL loss without logit post-processing only); ``"auto"``: Triton on CUDA
            where it applies, else eager.

    Raises:
        ValueError: An unknown loss, a missing ``input_ids``.
        TrainSettingsError: An unknown kernel, or ``"triton"`` where it cannot run (see `choose_kernel`).
    """
    use_triton = choose_kernel(kernel, loss, lens, hidden_states[0].device) == "triton"
    vocab = lens.unembed.parts.vocab_size
    chunk = chunk or chunk_size(len(layers), vocab)
    if loss == "kl":
        x = lens_states(lens, hidden_states, layers)
        target = hidden_states[-1].flatten(0, 1)
    elif loss == "ce":
        if input_ids is None:
            raise ValueError("the cross-entropy loss needs input_ids")
        x = lens_states(lens, tuple(h[:, :-1] for h in hidden_states), layers)
        target = input_ids[:, 1:].reshape(-1)
    else:
        raise ValueError(f"unknown loss {loss!r}; use 'kl' or 'ce'")
    return _HeadKL.apply(x, target, lens.unembed, chunk, use_triton)


def reference_lens_losses(
    lens: BaseTunedLens, hidden_states: tuple[torch.Tensor, ...], layers: list[int], *, scale: float = 1.0
) -> list[float]:
    """The reference step, as tuned-lens 0.2.0 does it: loop over layers, full-vocabulary fp32 log-softmax per
    layer, ``backward`` per layer, and a host sync (``.item()``) per layer. Gradients accumulate in the lens."""
    with torch.no_grad():
        log_p = lens.unembed.head(hidden_states[-1]).float().log_softmax(-1)
    out = []
    for i in layers:
        log_q = lens(hidden_states[i], i).float().log_softmax(-1)
        kl = torch.sum(log_p.exp() * (log_p - log_q), dim=-1).mean()
        (kl * scale).backward()
        out.append(kl.item())
    return out
