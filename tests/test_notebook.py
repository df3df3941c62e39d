"""notebooks/quickstart.ipynb: shipped without outputs, and run offline end to end in a kernel of this Python.

The kernel is this interpreter (``sys.executable``), registered through a kernelspec in a temporary JUPYTER_PATH,
so the notebook runs against the lens-hub under test, never against whatever ``python3`` kernel a machine has.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"
KERNEL = "lens-hub-tests"
MEAN_KL = re.compile(r"tuned lens (?P<tuned>\d+\.\d+), logit lens (?P<logit>\d+\.\d+)")

nbformat = pytest.importorskip("nbformat")


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def _cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def _text(cell) -> str:
    """Everything a code cell showed: streams, plain-text and HTML results."""
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts += [out.data.get("text/plain", ""), out.data.get("text/html", "")]
    return "\n".join(parts)


def test_notebook_is_valid_and_stripped():
    nb = _read()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 5
    for cell in code:  # outputs are produced by running it, never committed
        assert cell.outputs == [] and cell.execution_count is None, cell.id
    ids = [c.get("id") for c in nb.cells]
    assert len(set(ids)) == len(ids)  # the slow test finds its cells by id
    for cell_id in ("load-model", "fit", "trajectory", "evaluate", "registry"):
        _cell(nb, cell_id)
    assert "load_smollm2()" in _cell(nb, "load-model").source


def test_readme_and_docs_link_the_notebook():
    root = NOTEBOOK.parent.parent
    assert "notebooks/quickstart.ipynb" in (root / "README.md").read_text(encoding="utf-8")
    assert "notebooks/quickstart.ipynb" in (root / "docs" / "quickstart.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_notebook_runs_offline(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # nothing written to the home directory
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits it: the notebook must not need the network
    work = tmp_path / "run"
    work.mkdir()

    nb = _read()
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails

    assert (work / "quickstart-lens" / "config.json").is_file()
    assert (work / "quickstart-lens" / "lens.safetensors").is_file()
    assert "fitted layers [8, 16, 24]" in _text(_cell(nb, "fit"))

    trajectory = _text(_cell(nb, "trajectory"))
    assert "PredictionTrajectory" in trajectory and "output" in trajectory
    assert "Paris" in trajectory  # the model's own next token, in the output row

    shown = MEAN_KL.search(_text(_cell(nb, "evaluate")))
    assert shown, _text(_cell(nb, "evaluate"))
    tuned, logit = float(shown["tuned"]), float(shown["logit"])
    assert 0 < tuned < logit / 2, (tuned, logit)  # the fitted lens reads its layers far closer to the output

    registry = _text(_cell(nb, "registry"))
    assert "EleutherAI/pythia-70m-deduped" in registry and "<table>" in registry
    assert re.search(r"\d+ base models in the registry", _text(_cell(nb, "registry-count")))
