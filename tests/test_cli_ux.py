"""What a new user trips over: help pages, one-line errors for mistakes, Ctrl-C during training, fast refusals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer.main
from helpers import SAMPLE, gpt2_real_vocab, random_lens, save_model, sigint_as_in_a_terminal
from tiny_models import tiny_model
from typer.testing import CliRunner

import lens_hub
from lens_hub import IncompatibleLensError, TunedLens
from lens_hub.cli import app
from lens_hub.core.config import EvaluationInfo, LayerMetrics
from lens_hub.errors import TrainSettingsError
from lens_hub.registry.schema import RegistryEntry
from lens_hub.registry.store import write_entry

pytestmark = pytest.mark.usefixtures("own_lens_cache")


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def _commands(group: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the CLI, subcommands of groups (registry ...) included."""
    found = [path]
    for name, sub in getattr(group, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_the_command_list_covers_groups():
    assert ("download",) in COMMANDS and ("registry", "validate") in COMMANDS


def _command(path: tuple[str, ...]) -> object:
    found = typer.main.get_command(app)
    for name in path:
        found = found.commands[name]  # type: ignore[attr-defined]
    return found


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_help_page_renders_with_whole_option_names_in_80_columns(command):
    # In-process: --help runs no model, so a subprocess would add only its start-up time.
    done = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert done.exit_code == 0 and done.exception is None, done.output
    assert "Usage" in done.output
    names = [o for p in _command(command).params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    text = done.output.replace("│", " ")
    cut = [name for name in names if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)]
    assert not cut, f"option names cut or missing in 80 columns: {cut}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding ``model/``: a tiny 3-layer GPT-2 with the real GPT-2 tokenizer."""
    root = tmp_path_factory.mktemp("ux")
    save_model(root)
    return root


SMALL = ["--steps", "2", "--tokens-per-step", "64", "--seq-len", "32", "--batch-size", "2", "--device", "cpu"]


def _one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    flat = " ".join(done.stderr.replace("│", " ").split())
    for needle in needles:
        assert needle in flat, done.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "model", "--data", str(SAMPLE), "--out", "o", *SMALL, "--layers", "99"], ["0..2"]),
        (["show", "model", "hello world", "--layers", "99"], ["0..2"]),
        (["train", "model", "--data", str(SAMPLE), "--out", "o", *SMALL, "--layers", "1-"], ["ranges like", "'1-'"]),
        (["train", "model", "--data", str(SAMPLE), "--out", "o", *SMALL, "--layers", "a"], ["ranges like", "'a'"]),
        (["train", "model", "--data", str(SAMPLE), "--out", "o", *SMALL, "--layers", "3-1"], ["ranges like"]),
        (["show", "model", "hello world", "--top-k", "0"], ["--top-k"]),
        (["show", "model", "   "], ["TEXT is empty"]),
        (["show", "model", "word " * 100], ["longer than the model's window of 64"]),
        (["train", "smollm2-offlin", "--data", str(SAMPLE), "--out", "o"], ["ModelNotFoundError", "smollm2-offline"]),
        (["show", "./modle", "hello"], ["ModelNotFoundError", "'model'"]),
    ],
    ids=["train-99", "show-99", "open-range", "letters", "reversed", "top-k", "empty", "too-long", "name", "dir"],
)
def test_user_mistakes_are_one_clear_line(workdir, args, needles):
    _one_line_error(_cli(*args, cwd=workdir), *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_only_machine_names_the_fix(workdir):
    done = _cli("show", "model", "hello", "--device", "cuda", cwd=workdir)
    _one_line_error(done, "DeviceError", "use --device cpu")


def test_cheap_checks_run_before_the_model_loads(workdir, tmp_path):
    # The model does not exist either: reporting the data path proves the data was checked first.
    done = _cli("train", "no-such-model", "--data", "missing.txt", "--out", "o", cwd=workdir)
    _one_line_error(done, "DataError", "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    done = _cli("train", "no-such-model", "--data", str(tmp_path / "empty.txt"), "--out", "o", cwd=workdir)
    _one_line_error(done, "DataError", "empty")
    done = _cli("train", "no-such-model", "--data", str(SAMPLE), "--out", "o", "--optimizer", "lbfgs", cwd=workdir)
    _one_line_error(done, "--optimizer")


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        (["--log", "nonsense"], "unknown logger 'nonsense'"),
        (["--kernel", "triton", "--loss", "ce"], "computes the KL loss only"),
        (["--kernel", "triton", "--device", "cpu"], "runs on CUDA devices, not cpu"),
    ],
    ids=["log", "triton-ce", "triton-cpu"],
)
def test_settings_are_refused_before_the_model_loads(options, refused, monkeypatch):
    # In-process: the settings refuse themselves first, so the missing model is never looked for.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    done = CliRunner().invoke(app, ["train", "no-such-model", "--data", str(SAMPLE), "--out", "o", *options])
    assert isinstance(done.exception, TrainSettingsError), done.output
    assert refused in str(done.exception)


def test_eval_store_and_registry_status_are_checked_before_any_work(tmp_path):
    # The model does not exist: a refusal that names --store proves nothing was loaded or evaluated first.
    (tmp_path / "lens.safetensors").write_bytes(b"")
    for lens in ("logit", str(tmp_path / "lens.safetensors")):
        done = CliRunner().invoke(app, ["eval", lens, "--model", "no-such-model", "--data", str(SAMPLE), "--store"])
        assert done.exit_code == 2 and "--store" in done.output and "is not one" in done.output, done.output
    done = CliRunner().invoke(app, ["registry", "list", "--status", "verifed"])
    assert done.exit_code == 2 and "'verifed' is not one of" in done.output.replace("\n", " "), done.output


def test_bias_only_with_a_bias_free_lens_is_one_line(workdir, tmp_path):
    TunedLens.from_model(lens_hub.load_model(str(workdir / "model")), bias=False).save(tmp_path / "nobias")
    args = ["train", "model", "--data", str(SAMPLE), "--out", str(tmp_path / "o"), *SMALL, "--bias-only"]
    done = _cli(*args, "--init-from", str(tmp_path / "nobias"), cwd=workdir)
    _one_line_error(done, "TrainSettingsError", "bias_only (--bias-only)")


def test_an_unknown_model_offline_fails_fast_without_network(tmp_path):
    with pytest.raises(lens_hub.ModelNotFoundError, match="HF_HUB_OFFLINE"):
        lens_hub.load_model_and_tokenizer("someone/not-cached-model")


def test_load_model_is_public(workdir):
    assert {"load_model", "load_model_and_tokenizer", "ModelNotFoundError"} <= set(lens_hub.__all__)
    model = lens_hub.load_model(str(workdir / "model"))
    assert model.config.n_layer == 3


def test_train_progress_and_saved_message_name_the_trained_layers(workdir, tmp_path):
    done = _cli(
        "train", "model", "--data", str(SAMPLE), "--out", str(tmp_path / "l"), *SMALL, "--layers", "0,2", cwd=workdir
    )
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    assert "KL bits/byte: L0 " in flat and " L2 " in flat and "early/mid/late" not in flat
    assert "saved tuned lens to" in flat and "(layers 0, 2 trained of 3; others identity)" in flat


def test_ctrl_c_saves_a_checkpoint_and_rerunning_resumes(workdir, tmp_path):
    out = tmp_path / "lens"
    # Many short steps (16 tokens each), checkpoints never due: what is saved is the interrupt's checkpoint.
    args = ["train", "model", "--data", str(SAMPLE), "--out", str(out), "--steps", "1900", "--tokens-per-step", "16"]
    args += ["--seq-len", "16", "--batch-size", "1", "--device", "cpu", "--checkpoint-every", "100000"]
    args += ["--log", "jsonl", "--init", "zero"]  # no fit first: its 1900 x 16 tokens of forwards are not tested here

    def interrupted_run() -> tuple[subprocess.CompletedProcess[str], int]:
        log = out / "train_log.jsonl"
        before = len(log.read_text().splitlines()) if log.exists() else 0
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "lens_hub.cli", *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) <= before):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
        return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr), steps[-1]

    first, last = interrupted_run()
    assert first.returncode == 130, first.stderr
    assert "Traceback" not in first.stderr
    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert checkpoints, first.stderr
    step = int(checkpoints[-1].name.split("-")[1])
    assert 1 <= step <= last
    flat = " ".join(first.stderr.split())
    assert f"step {step} of 1900 is saved in" in flat and "rerun the same command" in flat
    assert "lens-hub train model --data" in flat
    second, _ = interrupted_run()
    assert second.returncode == 130
    assert f"resuming from step {step} of 1900" in " ".join(second.stdout.split())


def test_a_lens_of_another_model_is_refused_naming_the_flag_that_loads_it_anyway(workdir, tmp_path):
    # Same architecture, other weights: the unembedding fingerprint differs, which an expert may override.
    other = random_lens(gpt2_real_vocab(seed=7)).save(tmp_path / "other-lens")
    refused = _cli("show", "model", "hello world", "--lens", str(other), cwd=workdir)
    _one_line_error(refused, "IncompatibleLensError", "fingerprint", "--allow-mismatch")

    shown = _cli("show", "model", "hello world", "--lens", str(other), "--allow-mismatch", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    (warning,) = [line for line in shown.stderr.splitlines() if "warn" in line.lower()]  # one line, no traceback
    assert warning.startswith("warning: Lens loaded despite a mismatch") and "fingerprint" in warning, shown.stderr

    # Fine-tuning a lens of another model (a base model's lens for its chat variant, say) is the same opt-out.
    args = ["train", "model", "--data", str(SAMPLE), "--out", str(tmp_path / "tuned"), *SMALL, "--init-from"]
    _one_line_error(_cli(*args, str(other), cwd=workdir), "--allow-mismatch")
    tuned = _cli(*args, str(other), "--allow-mismatch", cwd=workdir)
    assert tuned.returncode == 0, tuned.stderr
    assert TunedLens.load(tmp_path / "tuned", gpt2_real_vocab()).config.training.init == "lens"


def test_rerunning_a_finished_run_says_it_is_complete(workdir, tmp_path):
    args = ["train", "model", "--data", str(SAMPLE), "--out", str(tmp_path / "l"), *SMALL, "--log", "jsonl"]
    assert _cli(*args, cwd=workdir).returncode == 0
    again = _cli(*args, cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert "training is already complete" in " ".join(again.stdout.split())
    assert len((tmp_path / "l" / "train_log.jsonl").read_text().splitlines()) == 2  # nothing retrained


def test_registry_facts_refuse_a_model_before_any_request(loopback_hub, tmp_path):
    model = tiny_model("llama")
    entry = RegistryEntry.model_validate(
        {
            "model": "loopback/big-model",
            "aliases": ["big"],
            "facts": {"model_type": "gpt2", "hidden_size": 768, "num_layers": 12, "vocab_size": 50257},
            "lenses": [
                {
                    "version": "1.0.0",
                    "default": True,
                    "format": "safetensors",
                    "status": "verified",
                    "location": {"repo_id": "loopback/big-lens", "subfolder": "", "revision": "a" * 40},
                    "files": [
                        {"path": "config.json", "size": 10, "sha256": "0" * 64},
                        {"path": "lens.safetensors", "size": 10, "sha256": "0" * 64},
                    ],
                }
            ],
        }
    )
    write_entry(tmp_path / "reg", entry)
    loopback_hub.clear_log()
    with pytest.raises(IncompatibleLensError, match="hidden_size 768 but the model has 32"):
        TunedLens.from_pretrained("big", model=model, registry=tmp_path / "reg")
    assert loopback_hub.requests == []


def test_info_shows_training_and_evaluation(gpt2_model, tmp_path):
    from lens_hub.core.config import TrainingInfo

    lens = random_lens(gpt2_model)
    evaluation = EvaluationInfo(
        dataset="heldout.txt",
        tuned=LayerMetrics(kl=[0.5, 0.25, 0.125], cross_entropy=[2.0, 1.5, 1.25]),
        logit=LayerMetrics(kl=[3.0, 2.0, 0.875], cross_entropy=[5.0, 4.0, 2.0]),
        model_cross_entropy=1.0,
    )
    training = TrainingInfo(dataset="corpus.txt", steps=7, loss="kl", optimizer="sgd", learning_rate=0.1)
    lens.config = lens.config.model_copy(update={"evaluation": evaluation, "training": training})
    lens.save(tmp_path / "lens")
    done = _cli("info", str(tmp_path / "lens"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "training" in done.stdout and "corpus.txt" in done.stdout
    assert "evaluation on heldout.txt (bits per byte" in done.stdout
    assert "0.125" in done.stdout and "0.875" in done.stdout and "model's own cross-entropy: 1.000" in done.stdout


def test_push_dry_run_needs_no_token(loopback_hub, gpt2_model, tmp_path, monkeypatch):
    from lens_hub.hub.publish import push

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    lens = random_lens(gpt2_model)
    lens.config = lens.config.model_copy(update={"base_model": "loopback/tiny-gpt2"})
    lens_dir = lens.save(tmp_path / "lens")
    result = push(lens_dir, "loopback/tiny-gpt2-lens", dry_run=True, registry=tmp_path / "reg")
    assert result.dry_run and result.version == "1.0.0"
    assert not [r for r in loopback_hub.requests if r.method not in ("GET", "HEAD")]


# ------------------------------------------------------------------------- progress, warnings and errors in a log

PROGRESS_NOW = {"LENS_HUB_PROGRESS_INTERVAL": "0"}  # a plain progress line at every update, not every 10 s


@pytest.fixture(scope="module")
def train_log(workdir, tmp_path_factory) -> subprocess.CompletedProcess[str]:
    """``lens-hub train`` with its output piped (as into a log): 4 polish steps after a fit on 16 tokens, fewer than
    the hidden size (32), which warns (FitWarning)."""
    out = tmp_path_factory.mktemp("log") / "lens"
    args = ["train", "model", "--data", str(SAMPLE), "--out", str(out), "--steps", "4", "--tokens-per-step", "32"]
    args += ["--seq-len", "16", "--batch-size", "2", "--fit-tokens", "16", "--device", "cpu"]
    return _cli(*args, cwd=workdir, env=PROGRESS_NOW)


def test_training_prints_progress_lines_to_a_log(train_log):
    assert train_log.returncode == 0, train_log.stderr
    lines = train_log.stdout.splitlines()
    steps = [line for line in lines if re.match(r"polishing: \d/4 steps, \d+\.\d s", line)]
    assert [int(line.split(":")[1].split("/")[0]) for line in steps] == [1, 2, 3, 4], train_log.stdout
    assert "ETA" in steps[0] and "tok/s" in steps[0] and "KL bits/byte: L0" in steps[0]
    assert any(line.startswith("fitting: 1/1 forward passes") for line in lines), train_log.stdout


def test_lens_hubs_warnings_are_one_clean_line(train_log):
    warned = [line for line in train_log.stderr.splitlines() if "fewer than the hidden size" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: the fit saw 16 tokens"), train_log.stderr
    assert "FitWarning" not in train_log.stderr and ".py:" not in train_log.stderr


def test_progress_lines_are_spaced_by_the_interval_and_a_terminal_gets_a_bar():
    import io

    from rich.console import Console

    from lens_hub.core.progress import ProgressReport

    log = Console(file=io.StringIO(), width=200)  # not a terminal
    with ProgressReport("work", log, total=5, unit="items", interval=1e9) as report:
        for done in range(1, 6):
            report.update(done, info="busy")
    lines = log.file.getvalue().splitlines()
    # The first update, then nothing for the interval, then the final state when it closes.
    assert [line.split(",")[0] for line in lines] == ["work: 1/5 items", "work: 5/5 items"], lines
    assert "ETA" not in lines[-1] and lines[-1].endswith("busy")
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True, width=200)
    with ProgressReport("work", terminal, total=2, unit="items", interval=0) as report:
        report.update(1)
        report.update(2)
    assert "work: 1/2 items" not in terminal.file.getvalue() and "2/2" in terminal.file.getvalue()


def test_usage_and_library_errors_read_the_same():
    from helpers import invoke

    usage = invoke("train")  # click's refusal: a missing argument
    library = invoke("info", "no-such-lens-dir")  # lens-hub's: LensFormatError
    assert (usage.returncode, library.returncode) == (2, 1)
    assert usage.stderr.startswith("error: Missing argument 'MODEL'."), usage.stderr
    assert "Try 'lens-hub train --help' for help." in usage.stderr
    assert library.stderr.startswith("error: LensFormatError: "), library.stderr
    for done in (usage, library):
        assert not re.search(r"(?<!\w)Error:", done.stderr) and "╭" not in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
