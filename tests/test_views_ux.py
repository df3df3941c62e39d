"""What a new user trips over in the views: `lens-hub eval` reading untrained layers in silence, model cards that
repeat and leak, trajectory views without names or in another row order, and trajectories that print tensors."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from helpers import SAMPLE
from tiny_models import tiny_model

from lens_hub import TunedLens
from lens_hub.analysis.evaluate import evaluate
from lens_hub.analysis.trajectory import PredictionTrajectory
from lens_hub.core.config import EvaluationInfo, LayerMetrics, TrainingInfo
from lens_hub.core.lens import LogitLens
from lens_hub.core.plots import evaluation_figure
from lens_hub.hub.card import CardInfo, build_card
from lens_hub.serve.render import png_figure, transfer_png, write_html
from lens_hub.training.data import load_token_data

DATA = Path(__file__).parent / "data"
TOKENIZER = DATA / "gpt2-tokenizer"


def _model() -> torch.nn.Module:
    # the real GPT-2 vocabulary, so the saved model loads with the real tokenizer
    return tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=3, initializer_range=0.2)


def _lens(model: torch.nn.Module, trained: list[int] | None) -> TunedLens:
    """A tuned lens whose provenance says it was trained on ``trained`` (random translators there only)."""
    lens = TunedLens.from_model(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in trained if trained is not None else range(lens.num_layers):
            for p in lens.translators[i].parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    lens.config = lens.config.model_copy(update={"training": TrainingInfo(steps=4, loss="kl", layers=trained)})
    return lens


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


# ------------------------------------------------------------------------------------------------ 1. eval


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A directory with ``model/`` (tiny GPT-2 + tokenizer) and ``lens/`` (trained on layers 0 and 2 of 3)."""
    root = tmp_path_factory.mktemp("eval")
    model = _model()
    model.save_pretrained(root / "model")
    for f in TOKENIZER.glob("*.json"):
        shutil.copy(f, root / "model" / f.name)
    _lens(model, [0, 2]).save(root / "lens")
    return root


def test_eval_cli_defaults_to_the_trained_layers_marks_them_and_shows_progress(saved):
    common = ["--model", "model", "--data", str(SAMPLE), "--seq-len", "32", "--max-sequences", "6"]
    common += ["--batch-size", "2", "--device", "cpu"]
    done = _cli("eval", "./lens", *common, "--json", "default.json", cwd=saved)
    assert done.returncode == 0, done.stderr
    out = json.loads((saved / "default.json").read_text())
    assert out["layers"] == [0, 2]  # not every layer: layer 1 holds an identity translator
    assert out["trained_layers"] == [0, 2]
    assert "trained" in done.stdout  # the table's marker column
    assert re.search(r"3/3\s+batches", done.stdout), done.stdout  # the progress bar, with its count and ETA
    assert "ETA" in done.stdout

    every = _cli("eval", "./lens", *common, "--layers", "all", "--json", "all.json", cwd=saved)
    assert every.returncode == 0, every.stderr
    assert json.loads((saved / "all.json").read_text())["layers"] == [0, 1, 2]
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in every.stdout.splitlines()
            if line.count("│") > 3 and line.split("│")[1].strip().isdigit()}  # fmt: skip
    assert rows == {"0": "yes", "1": "no", "2": "yes"}


def test_evaluate_is_silent_by_default_and_reports_progress_per_batch(capsys, tmp_path):
    model = _model()
    tokens = load_token_data(SAMPLE, _tokenizer(), seq_len=16, max_sequences=5)
    calls: list[tuple[int, int]] = []
    result = evaluate(model, tokens, _lens(model, [1]), batch_size=2, progress=lambda d, n: calls.append((d, n)))
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert result.layers == [1] and result.trained_layers == [1]
    assert evaluate(model, tokens, _lens(model, None), batch_size=2).layers == [0, 1, 2]  # trained on all
    assert evaluate(model, tokens, None, batch_size=2).layers == [0, 1, 2]  # the logit lens alone
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_evaluation_plot_draws_no_line_across_gaps_and_logs_a_dwarfing_layer_0():
    layers = [0, 1, 2, 10, 20, 21]
    summary = EvaluationInfo(
        layers=layers,
        tuned=LayerMetrics(kl=[90.0, 3, 2.5, 2, 1, 0.5], cross_entropy=[9.0, 8, 7, 6, 5, 4]),
        logit=LayerMetrics(kl=[95.0, 6, 5, 4, 3, 2], cross_entropy=[9.5, 8.5, 7.5, 6.5, 5.5, 4.5]),
    )
    fig = evaluation_figure(summary, trained=[0, 1, 2, 10, 20])
    try:
        kl_ax, ce_ax = fig.axes[:2]
        drawn = [list(line.get_xdata()) for line in kl_ax.get_lines() if len(line.get_xdata()) > 1]
        assert sorted(drawn) == sorted([[0, 1, 2], [0, 1, 2], [20, 21], [20, 21]])  # runs only, for both lenses
        assert kl_ax.get_yscale() == "log"  # max / median > 10
        assert ce_ax.get_yscale() == "linear"
        hollow = [line.get_xdata()[0] for line in kl_ax.get_lines() if line.get_markerfacecolor() == "white"]
        assert hollow == [21]  # the tuned lens's one untrained layer
    finally:
        plt.close(fig)


def test_building_figures_leaves_a_notebooks_backend_and_open_figures_alone(traj):
    # A notebook on another backend (svg stands in: it needs no display) with a figure open, as in Jupyter.
    before = plt.get_backend()
    plt.switch_backend("svg")
    try:
        mine = plt.figure()
        metrics = LayerMetrics(kl=[2.0, 1.0], cross_entropy=[4.0, 3.0])
        built = [evaluation_figure(EvaluationInfo(layers=[0, 1], tuned=metrics, logit=metrics)), png_figure(traj, "kl")]
        png = transfer_png([[1.0, 2.0], [2.0, 1.0]], [0, 1])
        assert plt.get_backend() == "svg" and plt.get_fignums() == [mine.number]  # nothing closed, nothing added
        assert all(len(fig.axes) >= 1 for fig in built)
        assert _png_size(png)[0] > 100
    finally:
        plt.close("all")
        plt.switch_backend(before)


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# ------------------------------------------------------------------------------------------------ 2. card


def _card(**training) -> str:
    config = TunedLens.from_model(_model()).config
    config = config.model_copy(
        update={"num_layers": 30, "hidden_size": 576, "training": TrainingInfo(**training)}, deep=True
    )
    info = CardInfo(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", repo_id="me/lens", version="1.0.0", tag="v1.0.0")
    return build_card(config, info)


def _training_rows(card: str) -> list[tuple[str, str]]:
    section = card.split("## Training", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [(k.strip(), v.strip()) for k, v in rows if k.strip()]


def test_card_training_table_has_each_field_once_unquoted_and_rounded_and_no_local_path():
    card = _card(
        dataset="/home/alice/private/notes.txt",
        num_tokens=12000,
        steps=20,
        loss="kl",
        layers=[0, 10],
        learning_rate=0.1000000001,
        hyperparameters={"steps": 20, "lr": 0.1000000001, "layers": [0, 10], "objective": "kl", "note": "x y"},
    )
    rows = _training_rows(card)
    labels = [k for k, _ in rows]
    assert len(labels) == len(set(labels)), rows
    values = dict(rows)
    assert values["learning rate"] == "0.1"
    assert values["`note`"] == "x y"  # a string, not '"x y"'
    assert '"' not in "".join(v for _, v in rows)
    assert values["dataset"] == "local text (12,000 tokens)"
    assert "/home/alice" not in card
    assert _training_rows(_card(dataset="data/notes.txt"))[0] == ("dataset", "notes.txt")


def test_card_intro_names_the_trained_translators_and_the_usage_snippet_defines_its_names():
    card = _card(layers=[0, 10])
    assert "translators for layers 0, 10 (of 30) of width 576; the others are identity" in card
    assert "30 of width 576" not in card
    assert "here 30 of width 576" in _card(layers=None)
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    tree = ast.parse(code)
    defined = {"AutoModelForCausalLM", "AutoTokenizer", "TunedLens"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert used <= defined, used - defined  # input_ids, tokenizer: defined in the snippet itself
    assert code.index("input_ids =") < code.index("model(input_ids")


# ------------------------------------------------------------------------------------------- 3. and 4. views


@pytest.fixture(scope="module")
def traj() -> PredictionTrajectory:
    model = _model()
    model.config._name_or_path = "tiny/gpt2-test"
    return PredictionTrajectory.from_text(
        _lens(model, [0, 2]), model, _tokenizer(), "The capital of France is", compare_with=LogitLens.from_model(model)
    )


def test_html_title_names_the_lens_and_the_model(traj, tmp_path):
    page = write_html(traj, tmp_path / "t.html", "kl").read_text()
    title = re.search(r"<title>(.*?)</title>", page)[1]
    assert "tuned lens" in title and "tiny/gpt2-test" in title, title
    assert re.search(r"<h1>(.*?)</h1>", page)[1] == title


def test_png_rows_run_top_down_from_layer_0_to_the_output_like_the_other_views(traj):
    fig = png_figure(traj, "entropy")
    try:
        ax = fig.axes[0]
        ticks = list(ax.get_yticks())
        labels = [t.get_text() for t in ax.get_yticklabels()]
        screen_y = [ax.transData.transform((0, y))[1] for y in ticks]  # pixels, growing upwards
        top_down = [label for _, label in sorted(zip(screen_y, labels, strict=True), reverse=True)]
        assert top_down == ["0", "1", "2", "output"] == traj.row_labels
        assert "tuned lens" in ax.get_title() and "tiny/gpt2-test" in ax.get_title()
    finally:
        plt.close(fig)


def test_trajectory_repr_is_short_and_names_its_contents(traj):
    text = repr(traj)
    assert "tensor(" not in text and len(text) < 300 and "\n" not in text
    assert text.startswith("PredictionTrajectory(batch=1, rows=4 (0, 1, 2, output)")
    assert f"positions={traj.input_ids.shape[1]}" in text and "top_k=5" in text
    assert "js, tv" in text and "log_prob" in text


def test_trajectory_repr_html_is_a_small_table(traj):
    page = traj._repr_html_()
    assert page.startswith("<table>") and page.endswith("</table>")
    assert "tensor(" not in page and len(page) < 2000
    cells = dict(re.findall(r"<th[^>]*>(.*?)</th><td[^>]*>(.*?)</td>", page))
    assert cells["batch"] == "1" and cells["top_k"] == "5"
    assert cells["rows"] == "4 (0, 1, 2, output)"
    assert "js" in cells["statistics"]
