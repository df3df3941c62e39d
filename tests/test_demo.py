"""The demo's checks are real checks: they raise DemoCheckError, also under ``python -O`` (which strips asserts)."""

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap

import pytest
from rich.console import Console

CHECK = textwrap.dedent(
    """
    from pathlib import Path
    from rich.console import Console
    from lens_hub.cli.demo import DemoCheckError, _summarise
    from lens_hub.analysis.evaluate import EvalResult
    from lens_hub.cli.workflows import WorkflowResult

    def result(tuned_kl):
        evaluation = EvalResult(
            dataset="d", num_tokens=8, tokens_per_byte=0.25, model_cross_entropy=1.0, layers=[0, 10, 20],
            logit={"kl": [3.0, 2.0, 1.0]}, tuned={"kl": tuned_kl} if tuned_kl else None,
        )
        return WorkflowResult(lens=None, out=Path("."), data=None, evaluation=evaluation)

    console = Console(file=open("/dev/null", "w"))
    _summarise(result([1.0, 1.0, 0.5]), console)  # beats the logit lens everywhere: passes
    for bad in ([1.0, 2.5, 0.5], None):
        try:
            _summarise(result(bad), console)
        except DemoCheckError as exc:
            print("refused:", exc)
        else:
            print("accepted")
    """
)


def test_demo_checks_raise_even_under_python_dash_o():
    for flags in ([], ["-O"]):
        done = subprocess.run([sys.executable, *flags, "-c", CHECK], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "refused: the tuned lens does not beat the logit lens at every trained layer",
            "refused: the run recorded no held-out evaluation",
        ]


def test_quiet_progress_silences_library_bars_and_restores_them():
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from lens_hub.core.models import quiet_progress

    before = (are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled())
    with quiet_progress():
        assert are_progress_bars_disabled()
        assert not hf_logging.is_progress_bar_enabled()
    assert (are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()) == before


def test_a_demo_run_removes_its_hub_and_its_closing_line_works_as_printed(tmp_path, monkeypatch, own_lens_cache):
    """The whole demo, on a tiny local model instead of SmolLM2 (seconds instead of minutes), then its closing line
    run as printed in a fresh shell: no HF_HOME, no offline mode, and a Hub endpoint nothing listens on."""
    from helpers import TOKENIZER, gpt2_real_vocab

    from lens_hub.cli.demo import run_demo

    model_dir = tmp_path / "model"
    gpt2_real_vocab(n_positions=256).save_pretrained(model_dir)
    for f in TOKENIZER.glob("*.json"):
        shutil.copy(f, model_dir / f.name)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    report = io.StringIO()
    console = Console(file=report, width=100)
    run_demo(
        tmp_path / "out",
        "The capital of",
        console,
        layers=[1],
        steps=0,
        model_name=str(model_dir),
        base_model="loopback/m",
    )

    text = report.getvalue()
    assert not list((tmp_path / "tmp").glob("lens-hub-demo-*"))  # the loopback Hub's storage is gone
    assert "The loopback Hub's temporary storage" in " ".join(text.split())
    assert (tmp_path / "out" / "published" / "registry" / "loopback--m.yaml").is_file()
    hint = next(line for line in text.splitlines() if " -c " in line)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{unused}", HF_HOME=str(tmp_path / "another-hf-home"))
    (tmp_path / "elsewhere").mkdir()
    done = subprocess.run(["bash", "-c", hint], cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded the tuned lens of loopback/m with 3 layers" in done.stdout


def test_the_demo_replaces_only_its_own_published_folder(tmp_path):
    from lens_hub.cli.demo import _fresh_published_dir
    from lens_hub.errors import DemoCheckError

    first = _fresh_published_dir(tmp_path)
    (first / "registry").mkdir()
    again = _fresh_published_dir(tmp_path)  # an earlier demo's: replaced
    assert again == first and not (again / "registry").exists()
    shutil.rmtree(first)
    (first / "registry").mkdir(parents=True)  # someone else's folder: refused, untouched
    with pytest.raises(DemoCheckError, match="was not made by lens-hub demo.*pass another --out"):
        _fresh_published_dir(tmp_path)
    assert (first / "registry").is_dir()
