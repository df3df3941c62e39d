"""The demo's checks are real checks: they raise DemoCheckError, also under ``python -O`` (which strips asserts)."""

import subprocess
import sys
import textwrap

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
