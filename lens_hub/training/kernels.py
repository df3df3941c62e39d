"""A Triton kernel for the memory-bound half of the lens step: softmax, KL and its gradient, in two passes.

After the unembedding GEMM, the eager step makes about ten passes over the ``[rows, vocab]`` logits (cast to
fp32, max, ``sum p z``, subtract, exp, sum, divide, subtract ``p``, cast back), about 50 bytes of memory traffic
per logit. This kernel reads each row twice and writes it once, in the logits' own dtype (about 10 bytes per bf16
logit): pass 1 keeps a running max and sum of exponentials (online softmax) and ``sum p z``; pass 2 overwrites
the logits with the gradient ``softmax(z) - p``.

Triton is optional: without it (or off CUDA) the step falls back to the eager code in `lens_hub.training.losses`.
Setting ``TRITON_INTERPRET=1`` runs the kernel on the CPU, which is how the tests check it.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

__all__ = ["kl_rows_", "triton_usable"]


@functools.cache
def _kernel():  # compiled lazily: importing lens_hub never needs Triton
    import triton
    import triton.language as tl

    @triton.jit
    def kl_rows(z_ptr, p_ptr, out_ptr, tokens, z_stride, p_stride, VOCAB: tl.constexpr, BLOCK: tl.constexpr):
        # One program per row; row r belongs to token r % tokens (rows are [layers, tokens] flattened). VOCAB is
        # a compile-time constant: one compilation per model, and a loop bound the interpreter accepts.
        row = tl.program_id(0).to(tl.int64)
        z_row = z_ptr + row * z_stride
        p_row = p_ptr + (row % tokens) * p_stride
        cols = tl.arange(0, BLOCK)
        running_max = -float("inf")
        running_sum = 0.0
        cross = 0.0
        for start in range(0, VOCAB, BLOCK):
            mask = start + cols < VOCAB
            z = tl.load(z_row + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
            p = tl.load(p_row + start + cols, mask=mask, other=0.0)
            new_max = tl.maximum(running_max, tl.max(z, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
            running_max = new_max
            cross += tl.sum(p * tl.where(mask, z, 0.0), axis=0)  # no 0 * -inf in the masked tail
        lse = running_max + tl.log(running_sum)
        tl.store(out_ptr + row, lse - cross)
        for start in range(0, VOCAB, BLOCK):
            mask = start + cols < VOCAB
            z = tl.load(z_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            p = tl.load(p_row + start + cols, mask=mask, other=0.0)
            grad = tl.exp(z - lse) - p
            tl.store(z_row + start + cols, grad.to(z_ptr.dtype.element_ty), mask=mask)

    return kl_rows


def triton_usable(device: torch.device, *, interpreter: bool = False) -> bool:
    """Whether the Triton kernel runs, and computes the right thing, on ``device``.

    True on CUDA with Triton installed or, if ``interpreter`` is set, on the CPU under Triton's interpreter
    (``TRITON_INTERPRET=1`` before Triton is imported; for tests, very slow); in both cases only once a small
    self-check against PyTorch has passed on that device. A failed self-check warns once and returns False, so the
    step falls back to eager code instead of failing a training run.
    """
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if not (device.type == "cuda" or (interpreter and device.type == "cpu" and os.environ.get("TRITON_INTERPRET"))):
        return False
    problem = _self_check(str(device))
    if problem:
        warnings.warn(
            f"lens-hub's Triton kernel failed its self-check on {device} ({problem}); using the eager step",
            stacklevel=2,
        )
    return problem is None


@functools.cache
def _self_check(device: str) -> str | None:
    """None if the kernel matches PyTorch on a small problem on ``device`` in each logits dtype; else what failed."""
    try:
        g = torch.Generator().manual_seed(0)
        probs = torch.softmax(torch.randn(2, 300, generator=g) * 2, -1).to(device)
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)):
            logits = (torch.randn(6, 300, generator=g) * 3).to(device, dtype)
            z = logits.float()
            expected_rows = z.logsumexp(-1) - (probs.repeat(3, 1) * z).sum(-1)
            expected_grad = z.softmax(-1) - probs.repeat(3, 1)
            rows = kl_rows_(logits, probs, block=128)
            if not torch.allclose(rows, expected_rows, atol=1e-4) or not torch.allclose(
                logits.float(), expected_grad, atol=tol
            ):
                return f"results differ from PyTorch's for {dtype} logits"
    except Exception as exc:  # a compiler or driver failure: any of them means "do not use the kernel"
        return f"{type(exc).__name__}: {exc}"
    return None


def kl_rows_(
    logits: torch.Tensor, target_probs: torch.Tensor, *, block: int = 4096, num_warps: int = 8
) -> torch.Tensor:
    """Per row, ``logsumexp(z) - sum(p * z)``; overwrites ``logits`` with ``softmax(z) - p`` (the KL gradient).

    Adding the target's negative entropy ``sum(p log p)`` to the returned value gives ``KL(p || softmax(z))``.

    Args:
        logits: ``[rows, vocab]`` (fp32, bf16 or fp16, unit stride along vocab); row ``r`` is compared with
            ``target_probs[r % tokens]``.
        target_probs: ``[tokens, vocab]`` fp32 probabilities, unit stride along vocab.
        block: Vocabulary entries per iteration (a power of two).
        num_warps: Warps per row (GPU only): 8 x 32 threads give each thread 16 logits of a 4096 block.

    Returns:
        ``[rows]`` fp32.
    """
    rows, vocab = logits.shape
    tokens = target_probs.shape[0]
    if target_probs.shape[1] != vocab or rows % tokens or logits.stride(1) != 1 or target_probs.stride(1) != 1:
        raise ValueError(f"kl_rows_: logits {tuple(logits.shape)} do not fit targets {tuple(target_probs.shape)}")
    if target_probs.dtype != torch.float32:
        raise ValueError("kl_rows_: target probabilities must be float32")
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    _kernel()[(rows,)](
        logits,
        target_probs,
        out,
        tokens,
        logits.stride(0),
        target_probs.stride(0),
        VOCAB=vocab,
        BLOCK=block,
        num_warps=num_warps,
    )
    return out
