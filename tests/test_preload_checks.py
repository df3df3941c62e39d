"""Waiting and failing: what a command can refute without its model is refused before the model loads (a load takes
most of a minute), naming the flag; a misspelt model name fails without asking the Hub."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import SAMPLE, TOKENIZER, gpt2_real_vocab, invoke, random_lens
from tiny_models import tiny_config, tiny_model

import lens_hub
from lens_hub import TunedLens
from lens_hub.core import models
from lens_hub.errors import LensHubError

README = Path(__file__).parent.parent / "README.md"
PROMPTS = SAMPLE.parent / "prompt-injection"
LOADING = "loading model"  # what lens_hub.core.models logs as each model load starts


@pytest.fixture(scope="module")
def no_weights(tmp_path_factory) -> Path:
    """A model directory with the config and tokenizer of a tiny 3-layer GPT-2 (window 64) but no weights: every
    check before the load can run, and the load itself fails."""
    folder = tmp_path_factory.mktemp("models") / "no-weights"
    tiny_config("gpt2", vocab_size=50257, n_embd=32, n_layer=3).save_pretrained(folder)
    for file in TOKENIZER.glob("*.json"):
        shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture
def loads(caplog) -> Callable[[], list[str]]:
    """``loads()``: the model loads started so far in the test (the log lines of lens_hub.core.models)."""
    caplog.set_level(logging.INFO, logger="lens_hub.core.models")
    return lambda: [r.getMessage() for r in caplog.records if r.getMessage().startswith(LOADING)]


def _flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def _refused(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    flat = _flat(done.stderr)
    for needle in needles:
        assert needle in flat, done.stderr
    return flat


@pytest.fixture(scope="module")
def other_lens(tmp_path_factory) -> Path:
    """A lens of another architecture (2 layers of 64, against the model's 3 of 32)."""
    return random_lens(tiny_model("gpt2", n_embd=64, n_layer=2)).save(tmp_path_factory.mktemp("other") / "lens")


def _cases(model: str, other: str) -> list[tuple[list[str], list[str]]]:
    detect = [
        "detect",
        model,
        "--normal",
        str(PROMPTS / "normal.jsonl"),
        "--anomalous",
        str(PROMPTS / "injected.jsonl"),
    ]
    data = ["--data", str(SAMPLE)]
    return [
        (["show", model, "hello", "--layers", "0,45"], ["--layers", "[45]", "0..2"]),
        (["eval", "logit", "--model", model, *data, "--layers", "0,45"], ["--layers", "[45]", "0..2"]),
        ([*detect, "--layers", "0,45"], ["--layers", "[45]", "0..2"]),
        (["train", model, *data, "--out", "o", "--layers", "0,45"], ["--layers", "[45]", "0..2"]),
        (["show", model, "hello", "--lens", "./no-such-lens"], ["LensNotFoundError", "--lens ./no-such-lens"]),
        (["show", model, "hello", "--compare", "./no-such-lens"], ["LensNotFoundError", "--compare ./no-such-lens"]),
        (["eval", "./no-such-lens", "--model", model, *data], ["LensNotFoundError", "LENS ./no-such-lens"]),
        ([*detect, "--lens", "./no-such-lens"], ["LensNotFoundError", "--lens ./no-such-lens"]),
        (["train", model, *data, "--out", "o", "--init-from", "./no-such-lens"], ["--init-from ./no-such-lens"]),
        (["eval", "logit", "--model", model, "--data", "nothere.txt"], ["DataError", "--data nothere.txt"]),
        (["show", model, "hello", "--lens", other], ["IncompatibleLensError", "hidden_size 64", "num_layers 2"]),
    ]


CASE_IDS = [
    "show-layers",
    "eval-layers",
    "detect-layers",
    "train-layers",
    "show-lens",
    "show-compare",
    "eval-lens",
    "detect-lens",
    "train-init-from",
    "eval-data",
    "show-other-lens",
]


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_arguments_are_refused_before_the_model_loads(case, no_weights, other_lens, loads, tmp_path):
    # The model has a config and a tokenizer but no weights: a load would fail with ModelNotFoundError instead.
    args, needles = _cases(str(no_weights), str(other_lens))[case]
    flat = _refused(invoke(*args, cwd=tmp_path), *needles)
    assert "ModelNotFoundError" not in flat
    assert loads() == []


@pytest.mark.parametrize(
    "args",
    [
        ["show", "MODEL", "hello", "--lens", "someone/a-hub-lens"],  # a Hub id: fetched after the load
        ["show", "MODEL", "hello", "--lens", "LENS", "--layers", "0,2"],  # a lens that fits, layers that exist
        ["eval", "LENS", "--model", "MODEL", "--data", str(SAMPLE), "--seq-len", "32"],
    ],
    ids=["hub-id", "fitting-lens", "eval"],
)
def test_arguments_that_can_work_reach_the_load(args, no_weights, loads, tmp_path):
    lens = TunedLens.from_model(gpt2_real_vocab()).save(tmp_path / "lens")
    args = [{"MODEL": str(no_weights), "LENS": str(lens)}.get(a, a) for a in args]
    _refused(invoke(*args, cwd=tmp_path), "ModelNotFoundError")  # the weights are missing: the load was tried
    assert len(loads()) == 1


def test_eval_of_data_shorter_than_a_sequence_names_seq_len(no_weights, loads, tmp_path):
    (tmp_path / "short.txt").write_text("Only a few words here.\n")
    done = invoke("eval", "logit", "--model", str(no_weights), "--data", "short.txt", "--seq-len", "32", cwd=tmp_path)
    flat = _refused(done, "DataError", "short.txt holds 8 tokens", "seq_len 32 tokens", "--seq-len")
    assert "ModelNotFoundError" not in flat
    assert loads() == []
    # --seq-len is capped by the model's window (64 here) before the data is measured against it.
    done = invoke("eval", "logit", "--model", str(no_weights), "--data", "short.txt", "--seq-len", "4096", cwd=tmp_path)
    _refused(done, "seq_len 64 tokens", "--seq-len")


# ---------------------------------------------------------------- the shipped sample and the README's train command


@pytest.fixture(scope="module")
def smollm2_without_weights(tmp_path_factory) -> Path:
    """A lens-hub cache whose converted SmolLM2 holds the real config and tokenizer (from the GGUF) but no weights:
    ``smollm2-offline`` passes every check before the load with its real tokenizer, and its load then fails."""
    try:
        models.smollm2_gguf_path()
    except LensHubError as exc:
        pytest.skip(str(exc))
    cache = tmp_path_factory.mktemp("lens_hub_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LENS_HUB_CACHE", str(cache / "empty"))  # nothing converted: read from the GGUF
        config, tokenizer = models.load_config(models.OFFLINE_NAME), models.load_tokenizer(models.OFFLINE_NAME)
    target = cache / "models" / "SmolLM2-135M-Instruct"
    tokenizer.save_pretrained(target)
    config.save_pretrained(target)
    return cache


def _commands(text: str, start: str) -> list[list[str]]:
    """The command lines of ``text`` that begin with ``start``, continuation lines joined, comments dropped."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip().startswith(start)]


def _train_examples() -> list[list[str]]:
    from lens_hub.cli.app import _root

    found = _commands(README.read_text(), "lens-hub train smollm2-offline")
    found += _commands((_root.__doc__ or "").replace("\\\\", "\\"), "lens-hub train smollm2-offline")
    return found


def test_the_train_examples_are_found():
    assert len(_train_examples()) == 2  # the README's and the root --help's


@pytest.mark.parametrize("example", _train_examples(), ids=["readme", "root-help"])
def test_the_train_example_passes_every_check_before_the_load(example, smollm2_without_weights, loads, monkeypatch):
    # The data is found and long enough for the run's steps and fit: what fails is only the (missing) weights.
    monkeypatch.setenv("LENS_HUB_CACHE", str(smollm2_without_weights))
    done = invoke(*example[1:], cwd=smollm2_without_weights)
    flat = _refused(done, "ModelNotFoundError", "cannot be loaded")
    assert "DataError" not in flat and "TrainSettingsError" not in flat
    assert loads() == [
        f"{LOADING} {models.OFFLINE_NAME} from {smollm2_without_weights / 'models' / 'SmolLM2-135M-Instruct'}"
    ]
    # Too many steps for the sample: refused before the load, with the numbers and the flags to lower.
    flat = _refused(invoke(*example[1:], "--steps", "400", cwd=smollm2_without_weights), "DataError")
    assert re.search(
        r"400 steps of [\d,]+ tokens need [\d,]+ sequences of \d+ tokens \([\d,]+ tokens\), but "
        r"sample:persuasion-ch1-8.txt gives \d+\.",
        flat,
    ), flat
    assert "--steps" in flat and "--tokens-per-step" in flat and "--seq-len" in flat
    assert len(loads()) == 1


def test_a_missing_sample_lists_the_shipped_ones(no_weights, tmp_path):
    done = invoke("train", str(no_weights), "--data", "sample:austen.txt", "--out", "o", cwd=tmp_path)
    _refused(done, "DataError", "--data sample:austen.txt", "persuasion-ch1-8.txt", "prompt-injection/normal.jsonl")


# ---------------------------------------------------------------- model names


def test_the_offline_name_is_matched_in_any_case(smollm2_without_weights, loads, monkeypatch, tmp_path):
    monkeypatch.setenv("LENS_HUB_CACHE", str(smollm2_without_weights))
    for name in ("SmolLM2-offline", "SMOLLM2-OFFLINE"):
        models.check_model_name(name)
        assert models.config_num_layers(models.load_config(name)) == 30
    # The layer count comes from the config: --layers 0,45 on the 30-layer model is refused without a load.
    done = invoke("show", "SmolLM2-Offline", "hello", "--layers", "0,45", cwd=tmp_path)
    _refused(done, "LayerRangeError", "--layers", "0..29")
    assert loads() == []


def test_a_misspelt_offline_name_asks_no_hub(tmp_path):
    # Online, with the Hub at a loopback port that accepts connections but never answers: asking it would hang (and
    # leave a connection behind); a typo of smollm2-offline must come back with the suggestion without asking.
    with socket.socket() as hub:
        hub.bind(("127.0.0.1", 0))
        hub.listen(8)
        hub.setblocking(False)
        env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}"}
        env["LENS_HUB_CACHE"] = str(tmp_path / "cache")
        done = subprocess.run(
            [sys.executable, "-m", "lens_hub.cli", "show", "smollm2-ofline", "hello"],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
        )  # fmt: skip
        _refused(done, "ModelNotFoundError", "Did you mean 'smollm2-offline'?", "the Hub was not asked")
        with pytest.raises(BlockingIOError):
            hub.accept()  # no connection was made


@pytest.fixture
def converted_copy(own_lens_cache, tmp_path, monkeypatch) -> Path:
    """A converted offline SmolLM2 in the lens-hub cache (a tiny model stands in for it), and an empty Hugging Face
    cache."""
    target = own_lens_cache / "models" / "SmolLM2-135M-Instruct"
    gpt2_real_vocab().save_pretrained(target)
    for file in TOKENIZER.glob("*.json"):
        shutil.copy(file, target / file.name)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return target


def test_the_hub_id_loads_the_converted_copy_offline(converted_copy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = lens_hub.load_model_and_tokenizer(models.SMOLLM2_ID)
    assert model.config.n_layer == 3  # the copy in the cache
    assert model.name_or_path == models.SMOLLM2_ID and tokenizer.eos_token_id is not None
    with pytest.raises(lens_hub.ModelNotFoundError, match="HF_HUB_OFFLINE"):
        lens_hub.load_model(models.SMOLLM2_ID, revision="main")  # a revision the copy cannot claim to be


def test_the_hub_id_needs_the_hub_without_a_converted_copy(own_lens_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with pytest.raises(lens_hub.ModelNotFoundError, match="HF_HUB_OFFLINE"):
        lens_hub.load_model(models.SMOLLM2_ID)


def test_once_the_hub_fails_the_hub_id_the_offline_copy_is_taken_without_asking_again(converted_copy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(models, "_HUB_FAILED", set())  # this process's memory, fresh
    assert models.resolve_model_name(models.SMOLLM2_ID) == models.SMOLLM2_ID  # online: the Hub is asked first
    attempts = []

    def unreachable():  # what transformers raises when the Hub cannot be reached
        attempts.append(1)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    assert models._or_offline_copy(models.SMOLLM2_ID, None, unreachable, lambda: "offline copy") == "offline copy"
    # The model's look-ups after that (its config, its tokenizer) go to the copy at once: no second wait on the Hub.
    assert models.resolve_model_name(models.SMOLLM2_ID) == models.OFFLINE_NAME
    assert models.load_tokenizer(models.SMOLLM2_ID).eos_token_id is not None and attempts == [1]
    assert models.resolve_model_name(models.SMOLLM2_ID, revision="main") == models.SMOLLM2_ID  # a pinned one is not
