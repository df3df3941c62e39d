"""The closed-form fit: exact on linear data, batch- and process-invariant moments, the head's input for every family,
better than the logit lens on held-out text, refusals that name the layer, and its place in a training run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SAMPLE, TOKENIZER, gpt2_real_vocab, run_cli, save_model
from safetensors.torch import load_file
from tiny_models import FAMILIES, tiny_model
from transformers import AutoTokenizer

from lens_hub import TunedLens
from lens_hub.analysis.evaluate import evaluate
from lens_hub.core.options import DEFAULT_RIDGE
from lens_hub.errors import FitError, FitWarning, TrainingInterrupted, TrainSettingsError
from lens_hub.training.checkpoint import list_checkpoints
from lens_hub.training.data import load_token_data
from lens_hub.training.fit import Moments, fit_lens, layer_groups, moment_bytes, states_and_head_input
from lens_hub.training.settings import TrainSettings
from lens_hub.training.train import train_lens

WORKER = Path(__file__).parent / "fit_worker.py"


@pytest.fixture(scope="module")
def tokens():
    return load_token_data(SAMPLE, AutoTokenizer.from_pretrained(TOKENIZER), seq_len=32)


def _linear_data(d=12, n=600, layers=2, seed=0):
    """States with large, unequal means (outlier dimensions) and targets that are exactly affine in them."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-0.5, 0.5, d)
    xs = [torch.randn(n, d, generator=g) * scale + 40 * torch.randn(d, generator=g) for _ in range(layers)]
    a = torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)
    b = 5 * torch.randn(d, generator=g)
    return xs, a, b


def test_the_fit_recovers_an_exactly_affine_map():
    xs, a, b = _linear_data(layers=1)
    y = xs[0] @ a.T + b
    moments = Moments(1, 12, torch.device("cpu"))
    for start in range(0, 600, 64):  # streamed in uneven batches
        moments.update([xs[0][start : start + 64]], y[start : start + 64])
    weight, bias = moments.solve(0.0)
    torch.testing.assert_close(weight[0] + torch.eye(12, dtype=torch.float64), a.double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(bias[0], b.double(), rtol=0, atol=1e-3)  # states of ~40 carry float32 rounding
    # The default ridge barely moves a well-determined fit; a strong one pulls W towards zero (the identity lens).
    default, _ = moments.solve(DEFAULT_RIDGE)
    strong, _ = moments.solve(10.0)
    assert (default - weight).abs().max() < 0.05
    assert strong.norm() < 0.5 * weight.norm()


def test_moments_streamed_in_batches_equal_those_of_the_whole_set():
    xs, a, b = _linear_data(layers=3)
    y = xs[1] @ a.T + b + torch.randn(600, 12, generator=torch.Generator().manual_seed(1))
    whole, streamed = Moments(3, 12, torch.device("cpu")), Moments(3, 12, torch.device("cpu"))
    whole.update(xs, y)
    for start in range(0, 600, 7):
        streamed.update([x[start : start + 7] for x in xs], y[start : start + 7])
    assert int(streamed.count) == int(whole.count) == 600
    for name in ("sum_x", "sum_t", "sum_xx", "sum_xt"):
        torch.testing.assert_close(getattr(streamed, name), getattr(whole, name), rtol=1e-6, atol=1e-6)
    for got, want in zip(streamed.solve(DEFAULT_RIDGE), whole.solve(DEFAULT_RIDGE), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_two_gloo_processes_sum_the_same_moments_as_one(tmp_path):
    xs, a, b = _linear_data(layers=2)
    y = xs[0] @ a.T + b
    torch.save({"xs": torch.stack(xs), "y": y}, tmp_path / "data.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path / "data.pt"), str(tmp_path / f"rank{rank}.safetensors")],
            env=os.environ
            | {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
    one = Moments(2, 12, torch.device("cpu"))
    one.update(xs, y)
    for rank in range(2):
        got = load_file(tmp_path / f"rank{rank}.safetensors")
        for name in ("count", "sum_x", "sum_t", "sum_xx", "sum_xt"):
            torch.testing.assert_close(got[name], getattr(one, name), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_target_is_what_the_heads_norm_reads_in_every_family(family):
    model = tiny_model(family, initializer_range=0.2)
    lens = TunedLens.from_model(model)
    ids = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hs, y = states_and_head_input(lens, model, ids)
        # The head's own normalisation of y is the model's final (normed) state: y is the residual the lens's
        # translators must produce, whatever the family puts between it and the logits (OPT: project_out).
        torch.testing.assert_close(lens.unembed.normalize(y), hs[-1], rtol=1e-4, atol=1e-5)
    assert len(hs) == lens.num_layers + 1


def test_a_norm_that_runs_twice_is_refused():
    model = tiny_model("llama")
    lens = TunedLens.from_model(model)
    norm = model.model.norm

    def norm_again(_module, _args, output):
        norm(output[0] if isinstance(output, tuple) else output)

    handle = model.model.layers[-1].register_forward_hook(norm_again)
    try:
        with pytest.raises(FitError, match=r"final norm of LlamaForCausalLM ran 2 times.*init='zero' \(--init zero\)"):
            states_and_head_input(lens, model, torch.ones(1, 4, dtype=torch.long))
    finally:
        handle.remove()


def test_a_fitted_lens_beats_the_logit_lens_and_the_polish_improves_it(tmp_path, tokens):
    # Wide initial weights make the model far from linear between layers, so KL has more to add to the fit.
    model = tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=3, initializer_range=1.0)
    train, held = tokens.split(16)
    logit = evaluate(model, held).logit["kl"]
    small = dict(seq_len=32, batch_size=8, quiet=True)
    fitted = train_lens(model, train, TrainSettings(steps=0, **small), tmp_path / "fit")
    fit_kl = evaluate(model, held, fitted).tuned["kl"]
    assert all(f < 0.5 * g for f, g in zip(fit_kl, logit, strict=True)), (logit, fit_kl)
    polished = train_lens(model, train, TrainSettings(steps=20, tokens_per_step=512, **small), tmp_path / "polish")
    polished_kl = evaluate(model, held, polished).tuned["kl"]
    assert all(p < f for p, f in zip(polished_kl, fit_kl, strict=True)), (fit_kl, polished_kl)
    training = json.loads((tmp_path / "fit" / "config.json").read_text())["training"]
    assert training["init"] == "fit" and training["steps"] == 0 and training["num_tokens"] == 0
    assert training["optimizer"] is None and training["learning_rate"] is None  # no step: no optimizer ran
    assert training["fit_tokens"] == len(train.sequences) * 32 and training["fit_ridge"] == DEFAULT_RIDGE


def test_non_finite_hidden_states_are_refused_naming_the_layer(tokens):
    model = gpt2_real_vocab()
    lens = TunedLens.from_model(model)
    poison = model.transformer.h[1].register_forward_hook(
        lambda _m, _a, out: (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
    )
    order = torch.arange(8)
    try:
        # Block 1's output is hidden_states[2]: lens layer 2 (layers 0 and 1 read what comes before it).
        with pytest.raises(FitError, match=r"hidden states of layers \[2\] hold NaN"):
            fit_lens(lens, model, tokens, order, [0, 1, 2], batch_size=4)
    finally:
        poison.remove()
    poison = model.transformer.ln_f.register_forward_pre_hook(lambda _m, args: (args[0] * float("inf"),))
    try:
        with pytest.raises(FitError, match=r"the final norm's input hold"):
            fit_lens(lens, model, tokens, order, [0, 1], batch_size=4)
    finally:
        poison.remove()
    assert all(not t.weight.any() for t in lens.translators)  # nothing half-fitted is left behind


def test_layer_groups_in_several_passes_give_the_same_lens(tokens):
    model = gpt2_real_vocab()
    assert layer_groups([0, 1, 2], 32, moment_bytes(32) * 2) == [[0, 1], [2]]
    assert layer_groups([0, 1, 2], 32, 1) == [[0], [1], [2]]  # never fewer than one layer a pass
    one, three = TunedLens.from_model(model), TunedLens.from_model(model)
    order = torch.arange(12)
    report = fit_lens(one, model, tokens, order, [0, 1, 2], batch_size=4, memory=1 << 30)
    split = fit_lens(three, model, tokens, order, [0, 1, 2], batch_size=4, memory=moment_bytes(32))
    assert (report.passes, split.passes) == (1, 3)
    assert report.tokens == split.tokens == 12 * 32
    for x, y in zip(one.state_dict().values(), three.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_fewer_tokens_than_the_hidden_size_warn_and_still_give_a_finite_lens(tokens):
    model = tiny_model("gpt2", vocab_size=50257, n_embd=64, n_layer=2, initializer_range=0.2)
    lens = TunedLens.from_model(model)
    with pytest.warns(FitWarning, match=r"saw 32 tokens, fewer than the hidden size 64.*--fit-tokens"):
        fit_lens(lens, model, tokens, torch.arange(1), [0, 1], batch_size=1)
    assert all(torch.isfinite(p).all() for p in lens.parameters())


def test_bias_only_and_bias_free_fits(tokens):
    model = gpt2_real_vocab()
    order = torch.arange(8)
    lens = TunedLens.from_model(model)
    fit_lens(lens, model, tokens, order, [0, 1, 2], batch_size=4, bias_only=True)
    with torch.no_grad():
        hs, y = states_and_head_input(lens, model, tokens.sequences[order])
    assert all(not t.weight.any() for t in lens.translators)
    torch.testing.assert_close(lens.translators[1].bias, (y - hs[1]).mean((0, 1)), rtol=1e-4, atol=1e-5)
    no_bias = TunedLens.from_model(model, bias=False)
    fit_lens(no_bias, model, tokens, order, [0, 1], batch_size=4)
    assert no_bias.translators[0].weight.abs().sum() > 0 and no_bias.translators[2].weight.abs().sum() == 0


def test_a_resumed_run_starts_from_the_fitted_checkpoint_without_refitting(tmp_path, tokens):
    model = gpt2_real_vocab()
    settings = TrainSettings(steps=4, tokens_per_step=64, seq_len=32, batch_size=2, checkpoint_every=2, quiet=True)
    full = train_lens(model, tokens, settings, tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_at_first_step(step, _losses):
        raise Stop

    with pytest.raises(Stop):
        train_lens(model, tokens, settings, tmp_path / "resumed", on_step=stop_at_first_step)
    assert [p.name for p in list_checkpoints(tmp_path / "resumed" / "checkpoints")] == ["step-000000"]
    forwards = []
    counter = model.transformer.register_forward_hook(lambda *_: forwards.append(1))
    try:
        resumed = train_lens(model, tokens, settings, tmp_path / "resumed")
    finally:
        counter.remove()
    assert len(forwards) == 4 * 1  # one forward pass a step (64 tokens = 2 x 32): the polish only, no refit
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(Exception, match=r"different settings \(fit_ridge\)"):
        train_lens(model, tokens, TrainSettings(**{**settings.to_dict(), "fit_ridge": 0.5}), tmp_path / "resumed")


def test_fit_settings_are_checked_before_anything_runs(tmp_path, tokens):
    with pytest.raises(TrainSettingsError, match="init='zero' and init_from='x' are alternatives"):
        TrainSettings(init="zero", init_from="x")
    with pytest.raises(TrainSettingsError, match=r"fit_tokens 16 \(--fit-tokens\) is less than one sequence of 32"):
        train_lens(gpt2_real_vocab(), tokens, TrainSettings(steps=0, seq_len=32, fit_tokens=16), tmp_path / "a")
    with pytest.raises(Exception, match=r"fit_tokens 10,000,000 \(--fit-tokens\) needs 312500 sequences .* lower"):
        train_lens(gpt2_real_vocab(), tokens, TrainSettings(steps=0, seq_len=32, fit_tokens=10**7), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    defaults, paper = TrainSettings(), TrainSettings(init="zero")
    assert (defaults.steps, defaults.optimizer, defaults.learning_rate) != (
        paper.steps,
        paper.optimizer,
        paper.learning_rate,
    )
    assert (paper.steps, paper.tokens_per_step, paper.optimizer, paper.learning_rate) == (250, 1 << 18, "sgd", 0.1)
    assert TrainSettings(init_from="x").learning_rate == 0.1  # fine-tuning keeps the paper's defaults
    # A short polish takes proportionally shorter steps (AdamW would overshoot the well-fitted late layers).
    assert TrainSettings(steps=4).learning_rate == pytest.approx(4e-4)
    assert TrainSettings(steps=40).learning_rate == TrainSettings(steps=10).learning_rate == 1e-3
    assert (
        TrainSettings(steps=4, lr=0.01).learning_rate == 0.01
        and TrainSettings(init="zero", steps=4).learning_rate == 0.1
    )


def test_ctrl_c_during_the_fit_saves_nothing_and_says_so(tmp_path, tokens):
    model = gpt2_real_vocab()
    calls = []

    def interrupt(*_):
        calls.append(1)
        if len(calls) == 2:  # the second forward pass of the fit
            raise KeyboardInterrupt

    handle = model.transformer.register_forward_hook(interrupt)
    try:
        with pytest.raises(TrainingInterrupted, match="interrupted during the closed-form fit") as stop:
            train_lens(model, tokens, TrainSettings(steps=2, tokens_per_step=64, seq_len=32, batch_size=2), tmp_path)
    finally:
        handle.remove()
    assert stop.value.during_fit and stop.value.checkpoint is None
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "lens.safetensors").exists()


def test_cli_fit_only_and_the_paper_recipe(tmp_path):
    save_model(tmp_path)
    small = ["--seq-len", "32", "--batch-size", "2", "--device", "cpu"]
    fit = run_cli("train", "model", "--data", str(SAMPLE), "--out", "fit", "--steps", "0", *small, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    flat = " ".join(fit.stdout.split())
    assert "fitted 3 translators in closed form on" in flat and f"ridge {DEFAULT_RIDGE:g}" in flat
    assert json.loads((tmp_path / "fit" / "config.json").read_text())["training"]["init"] == "fit"
    paper = ["--init", "zero", "--steps", "2", "--tokens-per-step", "64"]
    zero = run_cli("train", "model", "--data", str(SAMPLE), "--out", "zero", *paper, *small, cwd=tmp_path)
    assert zero.returncode == 0, zero.stderr
    assert "fitted" not in zero.stdout
    training = json.loads((tmp_path / "zero" / "config.json").read_text())["training"]
    assert (training["init"], training["optimizer"], training["learning_rate"]) == ("zero", "sgd", 0.1)
    both = run_cli(
        "train", "model", "--data", str(SAMPLE), "--out", "x", "--init", "fit", "--init-from", "fit", cwd=tmp_path
    )
    assert both.returncode != 0 and "Traceback" not in both.stderr
    assert "are alternatives" in " ".join(both.stderr.split())
    helped = run_cli("train", "--help", cwd=tmp_path)
    assert "--init" in helped.stdout and "--fit-tokens" in helped.stdout and "--ridge" in helped.stdout


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 values cut to TF32's 10 mantissa bits (truncated, the worse case of its rounding)."""
    return (t.float().contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32)


def test_states_at_tf32_precision_give_the_same_lens(tokens):
    # On CUDA the products run on TF32 tensor cores; rounding even the raw (uncentred) states to its precision
    # must leave the fitted translators all but unchanged.
    model = gpt2_real_vocab()
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        hs, y = states_and_head_input(lens, model, tokens.sequences[:32])
    exact, rounded = Moments(3, 32, torch.device("cpu")), Moments(3, 32, torch.device("cpu"))
    exact.update(hs[:3], y)
    rounded.update([_tf32(h) for h in hs[:3]], _tf32(y))
    for got, want in zip(rounded.solve(DEFAULT_RIDGE), exact.solve(DEFAULT_RIDGE), strict=True):
        assert (got - want).norm() < 1e-2 * want.norm()
