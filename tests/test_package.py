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
