"""Training: the fused step equals the reference step, the recipe lowers KL, resuming is exact, data is checked."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import SAMPLE, TOKENIZER, assert_png, gpt2_real_vocab, random_lens, run_cli, run_hidden, save_model
from safetensors.torch import save_file
from tiny_models import FAMILIES, tiny_model
from transformers import AutoTokenizer

from lens_hub import TunedLens
from lens_hub.analysis.evaluate import evaluate
from lens_hub.core.config import EvaluationInfo, LayerMetrics
from lens_hub.errors import CheckpointError, DataError, TrainSettingsError
from lens_hub.training.checkpoint import list_checkpoints
from lens_hub.training.data import TokenData, load_token_data, tokenize
from lens_hub.training.losses import fused_lens_losses, reference_lens_losses
from lens_hub.training.settings import TrainSettings
from lens_hub.training.train import _interrupt_deferred, hidden_states, plan_for, train_lens


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def tokens(tokenizer):
    return load_token_data(SAMPLE, tokenizer, seq_len=32)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gptj", "opt", "gpt_neox"])
@pytest.mark.parametrize("chunk", [3, 1000])
def test_fused_kl_matches_the_reference_step(family, chunk):
    model = tiny_model(family).requires_grad_(False)
    lens = random_lens(model)
    hs = run_hidden(model, batch=2, seq=9).hidden_states
    layers = [0, 1, 2]
    reference = torch.tensor(reference_lens_losses(lens, hs, layers))
    ref_grads = [p.grad.clone() for p in lens.parameters()]
    lens.zero_grad()
    fused = fused_lens_losses(lens, hs, layers, chunk=chunk)
    fused.sum().backward()
    torch.testing.assert_close(fused.detach(), reference, rtol=1e-4, atol=1e-6)
    for p, g in zip(lens.parameters(), ref_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)


def test_fused_cross_entropy_matches_torch():
    model = tiny_model("llama").requires_grad_(False)
    lens = random_lens(model)
    out = run_hidden(model, batch=2, seq=9)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    fused = fused_lens_losses(lens, out.hidden_states, [0, 2], loss="ce", input_ids=ids, chunk=5)
    fused.sum().backward()
    grads = [None if p.grad is None else p.grad.clone() for p in lens.parameters()]
    lens.zero_grad()
    expected = torch.stack(
        [F.cross_entropy(lens(out.hidden_states[i][:, :-1], i).flatten(0, 1), ids[:, 1:].flatten()) for i in (0, 2)]
    )
    expected.sum().backward()
    torch.testing.assert_close(fused.detach(), expected.detach())
    for p, g in zip(lens.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_forward_works_for_every_family(family):
    model = tiny_model(family).requires_grad_(False)
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    hs = hidden_states(model, ids)
    with torch.no_grad():
        assert all(
            torch.equal(a, b) for a, b in zip(hs, model(ids, output_hidden_states=True).hidden_states, strict=True)
        )
    losses = fused_lens_losses(TunedLens.from_model(model), hs, [0, 1, 2])
    assert losses.shape == (3,)
    assert torch.isfinite(losses).all()


def test_the_paper_recipe_lowers_heldout_kl_at_every_layer(tmp_path, tokens):
    model = gpt2_real_vocab()
    train, held = tokens.split(16)
    before = evaluate(model, held).logit["kl"]
    settings = TrainSettings(init="zero", steps=15, tokens_per_step=256, seq_len=32, batch_size=8, quiet=True)
    lens = train_lens(model, train, settings, tmp_path / "lens")
    after = evaluate(model, held, lens).tuned["kl"]
    assert all(a < 0.8 * b for a, b in zip(after, before, strict=True)), (before, after)
    cfg = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert cfg["training"]["steps"] == 15
    assert cfg["training"]["num_tokens"] == 15 * 256
    assert cfg["training"]["learning_rate"] == 0.1
    assert cfg["training"]["optimizer"] == "sgd"
    assert cfg["training"]["dataset"] == str(SAMPLE)
    assert cfg["training"]["init"] == "zero" and cfg["training"]["fit_tokens"] is None


def _small(**kw):
    defaults = dict(steps=6, tokens_per_step=64, seq_len=32, batch_size=2, checkpoint_every=2, quiet=True)
    return TrainSettings(**{**defaults, **kw})


class _Crash(Exception):
    pass


def test_resumed_run_ends_with_the_same_weights(tmp_path, tokens):
    model = gpt2_real_vocab()
    full = train_lens(model, tokens, _small(), tmp_path / "full")

    def crash(step, _losses):
        if step == 3:
            raise _Crash

    with pytest.raises(_Crash):
        train_lens(model, tokens, _small(), tmp_path / "resumed", on_step=crash)
    kept = list_checkpoints(tmp_path / "resumed" / "checkpoints")
    assert [p.name for p in kept] == ["step-000000", "step-000002"]  # step 0: the fitted lens
    # Checkpoints of earlier versions also hold RNG states, which resuming ignores (nothing in a run is random).
    save_file({"cpu": torch.zeros(8, dtype=torch.uint8)}, kept[-1] / "rng.safetensors")
    seen = []
    resumed = train_lens(model, tokens, _small(), tmp_path / "resumed", on_step=lambda s, _: seen.append(s))
    assert seen == [3, 4, 5, 6]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoints_are_safe_small_and_rotated(tmp_path, tokens):
    model = gpt2_real_vocab()
    train_lens(model, tokens, _small(keep_checkpoints=2), tmp_path)
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in kept] == ["step-000004", "step-000006"]
    files = sorted(f.name for f in kept[-1].iterdir())
    assert files == ["lens.safetensors", "optimizer.safetensors", "state.json"]  # no RNG states: nothing is random
    lens_bytes = (tmp_path / "lens.safetensors").stat().st_size
    # The lens and AdamW's two moments, no frozen model weights (the embedding alone is 6 MB here).
    assert sum(f.stat().st_size for f in kept[-1].iterdir()) < 4 * lens_bytes


def test_resuming_with_other_settings_is_refused(tmp_path, tokens):
    model = gpt2_real_vocab()
    train_lens(model, tokens, _small(), tmp_path)
    with pytest.raises(CheckpointError, match=r"different settings \(lr\).*--restart; in Python, restart\(out\)"):
        train_lens(model, tokens, _small(lr=0.5), tmp_path)
    # Each other setting is named with both values, its flag and the fix (the refusal above changed nothing).
    with pytest.raises(CheckpointError) as refused:
        train_lens(model, tokens, _small(steps=8, fit_ridge=0.5), tmp_path)
    message = str(refused.value)
    assert "different settings (fit_ridge, steps)" in message
    assert "steps (--steps): 6 in the checkpoint, 8 now" in message
    assert "fit_ridge (--ridge): 0.001 in the checkpoint, 0.5 now" in message
    assert "rerun with the checkpoint's settings" in message and "another folder (--out)" in message
    assert "(--restart; in Python, restart(out))" in message


def test_too_little_data_is_refused_before_training(tmp_path, tokens):
    with pytest.raises(DataError, match=r"need 10000 sequences of 32 tokens .* gives \d+\. Add data"):
        train_lens(gpt2_real_vocab(), tokens, _small(steps=5000), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_layer_subset_bias_only_adam_warmup(tmp_path, tokens):
    model = gpt2_real_vocab()
    lens = train_lens(model, tokens, _small(layers=[1], optimizer="adam", warmup_steps=2), tmp_path / "a")
    assert lens.translators[1].weight.abs().sum() > 0
    assert lens.translators[0].weight.abs().sum() == 0
    assert lens.translators[2].bias.abs().sum() == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["training"]["layers"] == [1]
    lens = train_lens(model, tokens, _small(bias_only=True), tmp_path / "b")
    assert all(t.weight.abs().sum() == 0 and t.bias.abs().sum() > 0 for t in lens.translators)
    with pytest.raises(ValueError, match=r"layers \[7\] \(--layers\) do not exist"):
        train_lens(model, tokens, _small(layers=[7]), tmp_path / "c")


def test_fine_tuning_starts_from_an_existing_lens(tmp_path, tokens):
    model = gpt2_real_vocab()
    start = random_lens(model, seed=3)
    start.save(tmp_path / "start")
    tuned = train_lens(model, tokens, _small(steps=1, lr=1e-9, init_from=str(tmp_path / "start")), tmp_path / "ft")
    torch.testing.assert_close(tuned.translators[0].weight, start.translators[0].weight, rtol=0, atol=1e-6)


def test_a_local_init_from_path_is_not_recorded_but_a_hub_name_is(tmp_path, tokens):
    model = gpt2_real_vocab()
    start = random_lens(model, seed=3)
    metrics = LayerMetrics(kl=[1.0, 1.0, 1.0])
    # The starting lens's own evaluation: it describes that lens, not the fine-tuned one.
    start.config = start.config.model_copy(update={"evaluation": EvaluationInfo(tuned=metrics, logit=metrics)})
    local = tmp_path / "my-private-dir" / "start"
    start.save(local)
    train_lens(model, tokens, _small(steps=1, init_from=str(local)), tmp_path / "ft")
    text = (tmp_path / "ft" / "config.json").read_text()
    assert str(local) not in text and "my-private-dir" not in text
    cfg = json.loads(text)
    assert cfg["training"]["init_from"] is None
    assert cfg["evaluation"] is None
    hub = TunedLens.load(local, model)  # as if fetched from the Hub
    train_lens(model, tokens, _small(steps=1, init_from="hf://org/lens@v1"), tmp_path / "hub", lens=hub)
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["training"]["init_from"] == "hf://org/lens@v1"


def test_provenance_fills_the_typed_fields_and_the_kernel_that_ran(tmp_path):
    model = tiny_model("gpt2")  # a 96-token vocabulary keeps Triton's CPU interpreter fast
    ids = torch.randint(3, 96, (8, 16), generator=torch.Generator().manual_seed(0))
    data = TokenData(ids, num_bytes=512, num_tokens_read=128, source="tiny.txt")
    settings = _small(steps=2, tokens_per_step=64, seq_len=16, batch_size=2, optimizer="adam", layers=[0, 2])
    train_lens(model, data, settings, tmp_path / "auto", dataset_name="corpus")
    training = json.loads((tmp_path / "auto" / "config.json").read_text())["training"]
    assert training == {
        "dataset": "corpus",
        "init": "fit",
        "fit_tokens": 128,  # all 8 sequences of 16
        "fit_ridge": 1e-3,
        "num_tokens": 128,
        "steps": 2,
        "loss": "kl",
        "layers": [0, 2],
        "optimizer": "adam",
        "learning_rate": pytest.approx(2e-4),  # the polish's AdamW default 1e-3, x 2/10 for a 2-step polish
        "momentum": None,  # AdamW has none
        "weight_decay": 1e-3,
        "warmup_steps": 0,
        "grad_clip": 1.0,
        "tokens_per_step": 64,
        "seq_len": 16,
        "batch_size": 2,
        "world_size": 1,
        "seed": 0,
        "bias_only": False,
        "init_from": None,
        "kernel": "eager",  # "auto" off CUDA
        "tokens_per_byte": 0.25,
        "lens_hub_version": training["lens_hub_version"],
        "hyperparameters": {},
    }
    assert training["lens_hub_version"]
    for kernel, loss, ran in (("triton", "kl", "triton"), ("auto", "ce", "eager")):
        out = tmp_path / f"{kernel}-{loss}"
        train_lens(model, data, _small(steps=1, tokens_per_step=32, seq_len=16, kernel=kernel, loss=loss), out)
        assert json.loads((out / "config.json").read_text())["training"]["kernel"] == ran
    with pytest.raises(TrainSettingsError, match="kernel='triton'"):  # an explicit choice is not quietly replaced
        train_lens(model, data, _small(steps=1, tokens_per_step=32, seq_len=16, kernel="triton", loss="ce"), tmp_path)


def test_tokens_per_step_must_be_a_multiple_of_one_forward_pass(tmp_path, tokens):
    fix = r"use tokens_per_step 64 or 128, or change batch_size / seq_len"
    with pytest.raises(TrainSettingsError, match=rf"tokens_per_step 100 \(--tokens-per-step\) .* {fix}"):
        plan_for(_small(tokens_per_step=100), 32, 1)
    with pytest.raises(TrainSettingsError, match=r"batch_size 2 x seq_len 32 x 2 processes\); use .* 128 or 256"):
        plan_for(_small(tokens_per_step=200), 32, 2)
    with pytest.raises(TrainSettingsError, match=r"tokens_per_step 16 .* use tokens_per_step 64 or 128"):
        plan_for(_small(tokens_per_step=16), 32, 1)  # less than one forward pass is not rounded up either
    assert plan_for(_small(tokens_per_step=192), 32, 1).accum == 3
    with pytest.raises(TrainSettingsError, match="tokens_per_step 100"):
        train_lens(gpt2_real_vocab(), tokens, _small(tokens_per_step=100), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zero_steps_are_refused_unless_the_fit_trains(tmp_path, tokens):
    for start in (dict(init="zero"), dict(init_from=str(tmp_path))):
        refused = r"steps \(--steps\) must be at least 1, not 0.*steps=0 is for init='fit'"
        with pytest.raises(TrainSettingsError, match=refused):
            train_lens(gpt2_real_vocab(), tokens, _small(steps=0, **start), tmp_path / "out")
        assert not (tmp_path / "out").exists()
    with pytest.raises(TrainSettingsError, match=r"steps \(--steps\) must be at least 1, not -1"):
        plan_for(_small(steps=-1), 32, 1)


def test_data_sources_and_bits_per_byte(tmp_path, tokenizer):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Hello world")
    (tmp_path / "docs" / "b.jsonl").write_text(json.dumps({"body": "Goodbye moon"}) + "\n\n")
    data = load_token_data(tmp_path / "docs", tokenizer, seq_len=2, text_column="body")
    eos = tokenizer.eos_token_id
    assert data.sequences.flatten().tolist() == [eos, 15496, 995, eos, 10248, 16390][: data.sequences.numel()]
    assert data.num_bytes == len("Hello world") + len("Goodbye moon")
    assert data.bits_per_byte(math.log(2)) == pytest.approx(data.num_tokens_read / data.num_bytes)
    with pytest.raises(DataError, match=r"b.jsonl:1: no text field 'text'; pass --text-column"):
        load_token_data(tmp_path / "docs", tokenizer, seq_len=2)
    with pytest.raises(DataError, match="less than one sequence"):
        tokenize(["Hi"], tokenizer, seq_len=50)
    with pytest.raises(DataError, match="does not exist"):
        load_token_data(tmp_path / "nope.txt", tokenizer, seq_len=2)


def test_model_cross_entropy_matches_transformers(tokens):
    model = gpt2_real_vocab()
    held = tokens.split(4)[1]
    result = evaluate(model, held, TunedLens.from_model(model))
    with torch.no_grad():
        nats = model(held.sequences, labels=held.sequences).loss.item()
    assert result.model_cross_entropy == pytest.approx(nats * held.tokens_per_byte / math.log(2), rel=1e-5)
    assert result.tuned == result.logit  # an untrained lens is the logit lens


def test_cli_train_then_eval_with_json_png_and_store(tmp_path):
    save_model(tmp_path)
    small = ["--steps", "4", "--tokens-per-step", "64", "--seq-len", "32", "--batch-size", "2", "--device", "cpu"]
    done = run_cli("train", "model", "--data", str(SAMPLE), "--out", "lens", *small, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "saved 3-layer tuned lens" in done.stdout
    again = run_cli("train", "model", "--data", str(SAMPLE), "--out", "lens", *small, cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # resumes at the end: nothing to redo
    ev = run_cli(
        "eval",
        "./lens",
        "--model",
        "model",
        "--data",
        str(SAMPLE),
        "--seq-len",
        "32",
        "--max-sequences",
        "8",
        "--json",
        "eval.json",
        "--png",
        "eval.png",
        "--store",
        "--transfer",
        "--device",
        "cpu",
        cwd=tmp_path,
    )
    assert ev.returncode == 0, ev.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["schema"] == "lens-hub-eval/1"
    assert len(report["tuned"]["kl"]) == len(report["transfer"]) == 3
    assert_png((tmp_path / "eval.png").read_bytes())
    stored = json.loads((tmp_path / "lens" / "config.json").read_text())["evaluation"]
    assert stored["tuned"]["kl"] == report["tuned"]["kl"]


def _torchrun(cwd, *args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "lens_hub.cli",
            "train",
            "model",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_torchrun_two_processes_match_one_with_and_without_fsdp(tmp_path):
    save_model(tmp_path)
    common = ["--data", str(SAMPLE), "--steps", "3", "--tokens-per-step", "128", "--seq-len", "32", "--device", "cpu"]
    one = run_cli("train", "model", "--out", "one", "--batch-size", "4", *common, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    model = gpt2_real_vocab()
    reference = TunedLens.load(tmp_path / "one", model)
    for out, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        two = _torchrun(tmp_path, "--out", out, "--batch-size", "2", *common, *extra)
        assert two.returncode == 0, two.stderr[-3000:]
        assert two.stdout.count("saved 3-layer tuned lens") == 1  # only rank 0 talks
        config = json.loads((tmp_path / out / "config.json").read_text())
        assert config["training"]["world_size"] == 2
        assert config["training"]["batch_size"] == 2
        for x, y in zip(
            reference.state_dict().values(), TunedLens.load(tmp_path / out, model).state_dict().values(), strict=True
        ):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_fsdp_needs_several_processes(tmp_path):
    save_model(tmp_path)
    done = run_cli("train", "model", "--data", str(SAMPLE), "--out", "x", "--fsdp", "--device", "cpu", cwd=tmp_path)
    assert done.returncode != 0
    assert "torchrun --nproc-per-node" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_ctrl_c_during_the_update_is_held_until_the_step_is_logged_and_saved():
    finished, before = [], signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal

    def update_log_and_checkpoint() -> None:
        with _interrupt_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the update
            finished.append("update, log line and checkpoint")

    try:
        with pytest.raises(KeyboardInterrupt):
            update_log_and_checkpoint()
        assert finished == ["update, log line and checkpoint"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as before afterwards
        with _interrupt_deferred():  # no Ctrl-C: nothing raised
            finished.append("next step")
        assert finished[-1] == "next step"

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job or nohup: SIGINT stays ignored
        update_log_and_checkpoint()
        assert finished[-1] == "update, log line and checkpoint"
    finally:
        signal.signal(signal.SIGINT, before)
