"""Package surface: lazy public names, light imports, the console script."""

import subprocess
import sys

import pytest

import lens_hub


def test_every_public_name_resolves():
    for name in lens_hub.__all__:
        assert getattr(lens_hub, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        lens_hub.Nope  # noqa: B018


def test_testing_helpers_and_cli_help_do_not_import_torch():
    code = "import sys, lens_hub.testing, lens_hub.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_console_script_help_teaches():
    done = subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", "convert", "--help"], capture_output=True, text=True, check=True
    )
    assert "weights_only=True" in done.stdout
    assert "Example:" in done.stdout


def test_python_dash_m_lens_hub_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "lens_hub", "--version"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"lens-hub {lens_hub.__version__}"
    bad = subprocess.run(
        [sys.executable, "-m", "lens_hub", "registry", "show", "no-such-model"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "LensNotFoundError" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (["train"], ["--bias-only", "--restart", "--fsdp"]),
        (["push"], ["--private", "--dry-run"]),
        (["registry", "audit"], ["--all", "--remote"]),
        (["eval"], ["--transfer", "--store"]),
    ],
)
def test_help_shows_flags_as_flags_and_choices_as_choices(command, flags):
    env = {"COLUMNS": "200", "TERM": "dumb", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "lens_hub", *command, "--help"], capture_output=True, text=True, env=env, check=True
    )
    lines = done.stdout.splitlines()
    for flag in flags:
        (line,) = [x for x in lines if x.lstrip("│ *").startswith(f"{flag} ")]  # the flag's own row
        assert "<bool>" not in line, line
    if command == ["train"]:
        assert any("--loss" in x and "<kl|ce>" in x for x in lines)
        assert any("--kernel" in x and "<auto|eager|triton>" in x for x in lines)
        assert any("--optimizer" in x and "<sgd|adam>" in x for x in lines)


def test_train_refuses_a_choice_it_does_not_know_before_loading_anything(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "lens_hub", "train", "no/such-model", "--data", "x", "--out", "o", "--loss", "mse"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "'mse' is not one of" in done.stderr or "Invalid value for '--loss'" in done.stderr
    assert "Traceback" not in done.stderr


def test_help_names_arguments_in_capitals_and_list_options_by_their_values():
    env = {"COLUMNS": "200", "TERM": "dumb", "PATH": "/usr/bin:/bin"}
    for command in (["train"], ["show"], ["convert"], ["detect"], ["registry", "add"]):
        done = subprocess.run(
            [sys.executable, "-m", "lens_hub", *command, "--help"], capture_output=True, text=True, env=env, check=True
        )
        assert "<list[str]>" not in done.stdout, command
        usage = next(line for line in done.stdout.splitlines() if "Usage:" in line)
        assert usage == usage.replace("{model}", "").replace("{src}", "").replace("{location}", ""), usage


def test_top_level_help_shows_runnable_examples():
    done = subprocess.run([sys.executable, "-m", "lens_hub", "--help"], capture_output=True, text=True, check=True)
    text = " ".join(done.stdout.split("Examples:", 1)[1].split("╭", 1)[0].split())
    from lens_hub.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    examples = [part.split()[0] for part in text.split("lens-hub ")[1:] if part.split()]
    assert {"train", "eval", "show"} <= set(examples) and set(examples) - {"registry"} <= commands


def test_only_the_hub_enabled_lens_is_named_tuned_lens():
    import lens_hub.core.lens as core

    # `from lens_hub.core.lens import TunedLens` must fail, not quietly give a lens without from_pretrained.
    assert not hasattr(core, "TunedLens")
    assert issubclass(lens_hub.TunedLens, core.BaseTunedLens) and hasattr(lens_hub.TunedLens, "from_pretrained")
