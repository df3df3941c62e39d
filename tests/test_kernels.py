"""The Triton softmax/KL kernel, run by Triton's interpreter on the CPU: same function as float64 and the eager step;
compiled for Hopper without a GPU: wide loads, no spills."""

import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import run_hidden
from tiny_models import tiny_model

from lens_hub import TunedLens
from lens_hub.errors import TrainSettingsError
from lens_hub.training import losses
from lens_hub.training.losses import fused_lens_losses, reference_lens_losses

pytest.importorskip("triton", reason="Triton is installed with the test extra on Linux x86-64")


@pytest.fixture
def interpreter():
    from lens_hub.training import kernels

    assert kernels.triton_usable(torch.device("cpu"), interpreter=True)  # conftest set TRITON_INTERPRET=1
    return kernels


@pytest.fixture
def kernel_calls(monkeypatch) -> list[tuple[int, ...]]:
    """The logits shape of every call the fused step makes to the Triton kernel.

    The real kernel runs: the wrapper only records the call and hands it on. `lens_hub.training.losses` imported the
    function by name, so its binding there is the one the step uses.
    """
    calls: list[tuple[int, ...]] = []
    real = losses.kl_rows_

    def counting(logits: torch.Tensor, target_probs: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls.append(tuple(logits.shape))
        return real(logits, target_probs, **kwargs)

    monkeypatch.setattr(losses, "kl_rows_", counting)
    return calls


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize(("layers", "tokens", "vocab", "block"), [(3, 5, 1000, 256), (2, 4, 512, 512), (1, 3, 77, 64)])
def test_kernel_equals_float64_softmax_kl(interpreter, dtype, rtol, layers, tokens, vocab, block):
    g = torch.Generator().manual_seed(vocab + layers)
    logits = (torch.randn(layers * tokens, vocab, generator=g) * 4).to(dtype)
    probs = torch.softmax(torch.randn(tokens, vocab, generator=g) * 3, -1)
    z, p = logits.double(), probs.double().repeat(layers, 1)
    expected_rows = torch.logsumexp(z, -1) - (p * z).sum(-1)
    expected_grad = torch.softmax(z, -1) - p

    rows = interpreter.kl_rows_(logits, probs, block=block)  # overwrites every logit with its gradient

    torch.testing.assert_close(rows.double(), expected_rows, rtol=1e-6, atol=1e-5)
    error = (logits.double() - expected_grad).norm() / expected_grad.norm()
    assert error < rtol
    kl = rows.double() + (p * p.log()).sum(-1)
    assert (kl > -1e-5).all()  # a KL is never negative


def test_kernel_refuses_mismatched_shapes(interpreter):
    with pytest.raises(ValueError, match="do not fit"):
        interpreter.kl_rows_(torch.zeros(7, 10), torch.full((2, 10), 0.1))
    with pytest.raises(ValueError, match="float32"):
        interpreter.kl_rows_(torch.zeros(4, 10), torch.full((2, 10), 0.1, dtype=torch.float64))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_triton_step_equals_the_eager_step(family, kernel_calls):
    model = tiny_model(family, initializer_range=0.2)
    hs = run_hidden(model).hidden_states
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(std=0.05)
    results = {}
    calls = {}
    for kernel in ("eager", "triton", "auto"):
        lens.zero_grad()
        kernel_calls.clear()
        step_losses = fused_lens_losses(lens, hs, list(range(lens.num_layers)), chunk=5, kernel=kernel)
        step_losses.sum().backward()
        calls[kernel] = list(kernel_calls)
        results[kernel] = (step_losses.detach(), [p.grad.clone() for p in lens.parameters()])
    # 2 x 7 tokens in chunks of 5: the kernel reads each chunk's logits of every layer (padding cut off).
    vocab = model.config.vocab_size
    assert calls["triton"] == [(lens.num_layers * c, vocab) for c in (5, 5, 4)]
    assert calls["eager"] == [] and calls["auto"] == []  # off CUDA, auto never picks the slow interpreter
    torch.testing.assert_close(results["triton"][0], results["eager"][0], rtol=1e-5, atol=1e-6)
    assert torch.equal(results["auto"][0], results["eager"][0])
    assert results["eager"][0].min() > 0.01  # random translators: far from the final layer
    for ours, theirs in zip(results["triton"][1], results["eager"][1], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_under_bf16_autocast_triton_eager_and_reference_agree_to_bf16_precision(kernel_calls):
    # The GPU's setting: a bf16 model under autocast, so the logits the kernel reads and writes are bf16.
    model = tiny_model("llama", initializer_range=0.2).to(torch.bfloat16)
    hs = run_hidden(model).hidden_states
    lens = TunedLens.from_model(model)
    layers = list(range(lens.num_layers))
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(std=0.05)
    results = {}
    calls = {}
    for kernel in ("eager", "triton", "reference"):
        lens.zero_grad()
        kernel_calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if kernel == "reference":
                step_losses = torch.tensor(reference_lens_losses(lens, hs, layers))
            else:
                step_losses = fused_lens_losses(lens, hs, layers, chunk=5, kernel=kernel)
                step_losses.sum().backward()
        calls[kernel] = len(kernel_calls)
        results[kernel] = (step_losses.detach(), [p.grad.clone() for p in lens.parameters()])
    assert calls == {"eager": 0, "triton": 3, "reference": 0}  # the Triton results did come from the kernel
    reference_losses, reference_grads = results["reference"]
    for kernel in ("eager", "triton"):
        losses, grads = results[kernel]
        torch.testing.assert_close(losses, reference_losses, rtol=5e-3, atol=1e-3)
        for ours, theirs in zip(grads, reference_grads, strict=True):
            assert (ours - theirs).norm() / theirs.norm() < 2e-2  # bf16 logits: ~3 significant digits


def test_auto_falls_back_to_eager_where_the_kernel_does_not_apply():
    model = tiny_model("gemma2")  # soft-capped logits: post-processing the kernel does not do
    hs = run_hidden(model).hidden_states
    lens = TunedLens.from_model(model)
    layers = list(range(lens.num_layers))
    auto = fused_lens_losses(lens, hs, layers, kernel="auto")
    torch.testing.assert_close(auto, fused_lens_losses(lens, hs, layers, kernel="eager"))
    with pytest.raises(
        TrainSettingsError, match="needs Triton on a CUDA device, the KL loss and no logit post-processing"
    ):
        fused_lens_losses(lens, hs, layers, kernel="triton")
    with pytest.raises(TrainSettingsError, match="unknown kernel 'cuda'"):
        fused_lens_losses(lens, hs, layers, kernel="cuda")


_COMPILE_FOR_HOPPER = """
import subprocess, sys
from pathlib import Path
import triton
from triton.backends.compiler import GPUTarget
from lens_hub.training.kernels import _kernel

signature = {"z_ptr": "*bf16", "p_ptr": "*fp32", "out_ptr": "*fp32", "tokens": "i32", "z_stride": "i64",
             "p_stride": "i64", "VOCAB": "constexpr", "BLOCK": "constexpr"}
# What a launch specialises on for SmolLM2: 16-byte aligned tensors, a row stride of 49152 (divisible by 16).
aligned = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 4, 5)}
source = triton.compiler.ASTSource(_kernel(), signature, {"VOCAB": 49152, "BLOCK": 4096}, aligned)
kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
Path("kl.ptx").write_text(kernel.asm["ptx"])
Path("kl.cubin").write_bytes(kernel.asm["cubin"])
report = subprocess.run([bin_dir / "ptxas", "-v", "-arch=sm_90a", "kl.ptx", "-o", "check.cubin"],
                        capture_output=True, text=True, check=True).stderr
sass = subprocess.run([bin_dir / "cuobjdump", "--dump-sass", "kl.cubin"], capture_output=True, text=True,
                      check=True).stdout
print(report)
print(sass)
"""


@pytest.mark.dependency_internals  # ptxas's report format and the SASS Triton emits
def test_kernel_compiles_for_hopper_with_wide_loads_and_no_spills(tmp_path):
    # No GPU here: Triton compiles for sm_90a and its bundled ptxas and cuobjdump report on the machine code.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_HOPPER], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 bytes spill stores, 0 bytes spill loads" in done.stdout
    assert "0 bytes stack frame" in done.stdout
    registers = int(re.search(r"Used (\d+) registers", done.stdout).group(1))
    assert registers <= 128  # at least two 256-thread programs per multiprocessor
    assert "LDG.E.128" in done.stdout and "STG.E.128" in done.stdout  # 16-byte loads and stores of the logits
    assert "LDL" not in done.stdout and "STL" not in done.stdout  # nothing in local memory
