"""What a new user trips over in the views: `lens-hub eval` reading untrained layers in silence, model cards that
repeat and leak, trajectory views without names or in another row order, and trajectories that print tensors."""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from helpers import SAMPLE
from rich.console import Console
from tiny_models import tiny_model

from lens_hub import TunedLens
from lens_hub.analysis.evaluate import evaluate
from lens_hub.analysis.trajectory import STAT_LABELS, PredictionTrajectory
from lens_hub.core.config import EvaluationInfo, LayerMetrics, TrainingInfo
from lens_hub.core.lens import LogitLens
from lens_hub.core.plots import evaluation_figure
from lens_hub.errors import RenderError
from lens_hub.hub.card import CardInfo, build_card
from lens_hub.serve.render import (
    default_title,
    js_summary,
    png_figure,
    terminal_table,
    transfer_png,
    write_html,
    write_png,
)
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
    env = {**os.environ, "LENS_HUB_PROGRESS_INTERVAL": "0"}  # a progress line at every update, even in a pipe
    return subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env
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
    assert (out["lens"], out["model"]) == ("./lens", "model")  # the lens as named, not the model's id
    assert "trained" in done.stdout  # the table's marker column
    assert re.search(r"3/3\s+batches", done.stdout), done.stdout  # progress lines in a pipe, with count and ETA
    assert re.search(r"1/3 batches, .*ETA", done.stdout), done.stdout

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


def _legend(ax) -> dict[str, tuple[str, str]]:
    """Legend label -> (line style, marker face colour) of each entry."""
    return {t.get_text(): (h.get_linestyle(), str(h.get_markerfacecolor()))
            for t, h in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles, strict=True)}  # fmt: skip


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
        assert kl_ax.get_yscale() == "log"  # spans more than a decade
        assert ce_ax.get_yscale() == "linear"
        hollow = [line.get_xdata()[0] for line in kl_ax.get_lines() if line.get_markerfacecolor() == "white"]
        assert hollow == [21]  # the tuned lens's one untrained layer
        # the legend promises what is drawn: both line styles, and the hollow marker that is there
        legend = _legend(kl_ax)
        assert legend["logit lens"][0] == "--" and legend["tuned lens"][0] == "-"
        assert legend["tuned, untrained layer (= logit lens)"][1] == "white"
    finally:
        plt.close(fig)


def test_evaluation_plot_legend_shows_no_line_or_hollow_marker_that_is_not_drawn():
    # three isolated layers, all trained: points only, no hollow marker (KL as bench/RESULTS.md measured at 16k)
    summary = EvaluationInfo(
        layers=[0, 12, 24],
        tuned=LayerMetrics(kl=[1.62, 1.06, 0.42], cross_entropy=[5.0, 4, 3]),
        logit=LayerMetrics(kl=[16.84, 2.48, 1.54], cross_entropy=[6.0, 5, 4]),
    )
    fig = evaluation_figure(summary, trained=[0, 12, 24])
    try:
        kl_ax = fig.axes[0]
        assert all(len(line.get_xdata()) == 1 for line in kl_ax.get_lines())  # no run of two layers: no line
        legend = _legend(kl_ax)
        assert set(legend) == {"logit lens", "tuned lens"}  # no hollow-marker entry: none is drawn
        assert {style for style, _ in legend.values()} == {"None"}  # and no line style promised
        assert "hollow" not in kl_ax.get_xlabel()
        assert kl_ax.get_yscale() == "log"  # layer 0's 16.8 would flatten the rest on a linear axis
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
    assert values["dataset"] == "notes.txt"  # the file's name, never its path
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
        assert top_down == ["0", "1 (untrained)", "2", "output"]  # layer 1 of the lens is an identity translator
        assert traj.row_labels == ["0", "1", "2", "output"]
        title = fig.get_suptitle().replace("\n", " ")  # the figure's title, wrapped to its width
        assert "tuned lens" in title and "tiny/gpt2-test" in title
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


# ------------------------------------------------------------- 5. text that fits, two lenses, untrained layers, width

LONG_TEXT = (
    "The committee of the international organisation deliberated for hours about the proposal, and in the end "
    "nobody agreed"
)
LONG_MODEL = "an-organisation-with-a-long-name/SmolLM2-135M-Instruct-finetuned-on-persuasion-v2"


@pytest.fixture(scope="module")
def pair():
    """``read(text, model_name)``: the trajectory of ``text`` through a tuned lens trained on layers 0 and 2 of 3
    (compared with the logit lens) and the logit lens's own trajectory of it, the model named ``model_name``."""
    model = _model()
    tuned, logit, tokenizer = _lens(model, [0, 2]), LogitLens.from_model(model), _tokenizer()
    read_before: dict[tuple[str, str], tuple[PredictionTrajectory, PredictionTrajectory]] = {}

    def read(text: str, model_name: str = "tiny/gpt2-test"):
        if (text, model_name) not in read_before:
            model.config._name_or_path = model_name
            first = PredictionTrajectory.from_text(tuned, model, tokenizer, text, compare_with=logit)
            read_before[text, model_name] = first, PredictionTrajectory.from_text(logit, model, tokenizer, text)
        return copy.deepcopy(read_before[text, model_name])  # a test may rename a lens

    return read


def _outside(fig) -> list[str]:
    """The texts of ``fig`` that reach outside it once drawn as savefig draws it (title, axis titles, tick labels,
    axis labels, the colour bar's label), with how far."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):  # the ticks drawn: matplotlib also keeps some beyond the axis's limits
            lo, hi = sorted(axis.get_view_interval())
            texts += [tick.label1 for tick in axis.get_major_ticks() if lo - 1e-9 <= tick.get_loc() <= hi + 1e-9]
    bad = []
    for text in texts:
        if text.get_visible() and text.get_text():
            b = text.get_window_extent(renderer)
            if b.x0 < box.x0 - 0.5 or b.y0 < box.y0 - 0.5 or b.x1 > box.x1 + 0.5 or b.y1 > box.y1 + 0.5:
                bad.append(f"{text.get_text()!r}: {b} outside {box}")
    everything = fig.get_tightbbox(renderer)  # inches: all that is drawn, cell texts included
    if everything.x0 < -0.01 or everything.y0 < -0.01 or everything.x1 > fig.get_figwidth() + 0.01:
        bad.append(f"drawn: {everything} outside {fig.get_size_inches()}")
    if everything.y1 > fig.get_figheight() + 0.01:
        bad.append(f"drawn: {everything} outside {fig.get_size_inches()}")
    return bad


@pytest.mark.parametrize(
    ("text", "model_name", "compared", "stat"),
    [
        ("The", "tiny/gpt2-test", False, "log_prob"),  # the longest colour-bar label of show's statistics
        ("The", "tiny/gpt2-test", True, "entropy"),
        (LONG_TEXT, "tiny/gpt2-test", False, "entropy"),
        (LONG_TEXT, "tiny/gpt2-test", True, "log_prob"),
        ("The", LONG_MODEL, False, "entropy"),
        ("The", LONG_MODEL, True, "log_prob"),
        (LONG_TEXT, LONG_MODEL, True, "entropy"),
    ],
    ids=["1-token", "1-token-two-lenses", "long-prompt", "long-prompt-two-lenses", "long-model-id",
         "long-model-id-two-lenses", "both-long-two-lenses"],
)  # fmt: skip
def test_png_figure_fits_its_title_tick_labels_and_colour_bar_label(pair, text, model_name, compared, stat):
    first, second = pair(text, model_name)
    assert (len(first.input_labels[0]) == 1) == (text == "The")
    fig = png_figure(first, stat, compare=second if compared else None)
    try:
        assert _outside(fig) == []
        title = fig.get_suptitle()
        assert title.replace("\n", "").replace(" ", "") == default_title(
            first, stat, compare=second if compared else None
        ).replace(" ", "")  # wrapped, never cut
        assert model_name in title.replace("\n", "") or "\n" in title
        bar_label = fig.axes[-1].get_ylabel()
        assert bar_label.replace("\n", " ").startswith(STAT_LABELS[stat].split(" (")[0])
    finally:
        plt.close(fig)


def test_write_png_title_is_inside_the_saved_image(pair, tmp_path):
    # The README's call: the file written is the figure checked above, laid out the same way.
    from PIL import Image

    first, _ = pair(LONG_TEXT, LONG_MODEL)
    path = write_png(first, tmp_path / "long.png", "entropy")
    fig = png_figure(first, "entropy")
    try:
        assert _outside(fig) == []
        with Image.open(path) as image:
            assert image.size == tuple(round(v) for v in fig.bbox.size)
    finally:
        plt.close(fig)


def test_png_and_html_compare_draw_both_lenses_on_one_scale(pair, tmp_path):
    first, second = pair(LONG_TEXT)
    fig = png_figure(first, "kl", compare=second)
    try:
        heatmaps = [ax for ax in fig.axes if ax.images and ax.get_xlabel() == "input token"]
        assert len(heatmaps) == 2
        assert [ax.get_title() for ax in heatmaps] == ["tuned lens", "logit lens"]
        assert heatmaps[0].images[0].get_clim() == heatmaps[1].images[0].get_clim()  # one colour scale
        rows, cols = first.num_rows, len(first.input_labels[0])
        drawn = [[t.get_text() for t in ax.texts] for ax in heatmaps]  # row by row, each panel its lens's tokens
        for cells, read in zip(drawn, (first, second), strict=True):
            tops = [read.top_labels[0][r][t][0] for r in range(rows) for t in range(cols)]
            assert cells == [top if len(top) <= 8 else top[:7] + "…" for top in tops]
        differ = [k for k in range(rows * cols) if drawn[0][k] != drawn[1][k]]
        assert differ and all(k // cols in (0, 2) for k in differ)  # layer 1, untrained, reads as the logit lens
        labels = [[tick.get_text() for tick in ax.get_yticklabels()] for ax in heatmaps]
        assert labels == [["0", "1 (untrained)", "2", "output"], ["0", "1", "2", "output"]]
    finally:
        plt.close(fig)
    page = write_html(first, tmp_path / "both.html", "kl", compare=second).read_text()
    assert page.count('<table class="traj"') == 2
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["tuned lens", "logit lens"]
    assert "tuned lens vs logit lens on tiny/gpt2-test" in re.search(r"<h1>(.*?)</h1>", page)[1]
    assert page.count('class="cell"') == 2 * first.num_rows * len(first.input_labels[0])
    one = write_html(first, tmp_path / "one.html", "kl").read_text()
    assert one.count('<table class="traj"') == 1 and "<h2>" not in one
    # a trajectory of other layers or another text is refused, not drawn beside the first
    other = PredictionTrajectory.from_text(LogitLens.from_model(_model()), _model(), _tokenizer(), "Another text")
    with pytest.raises(RenderError, match="same text and layers"):
        png_figure(first, "kl", compare=other)


def test_untrained_layers_are_recorded_and_marked_in_every_view(pair, tmp_path):
    first, second = pair("The capital of France is")
    assert first.untrained_layers == [1] and first.untrained_rows == [False, True, False, False]
    assert second.untrained_layers == [] and first[0].untrained_layers == [1]
    model = _model()
    fresh = PredictionTrajectory.from_text(TunedLens.from_model(model), model, _tokenizer(), "Hi", layers=[0, 2])
    assert fresh.untrained_layers == [0, 2]  # a lens never trained is the logit lens everywhere
    console = Console(width=120, record=True)
    console.print(terminal_table(first, "entropy"))
    out = console.export_text()
    layer_cells = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert layer_cells == ["0", "1†", "2", "output"]
    assert "† untrained layer" in out and "logit lens" in out
    page = write_html(first, tmp_path / "t.html", "entropy", compare=second).read_text()
    assert page.count('<th class="row untrained"') == 1 and page.count(">1 (untrained)</th>") == 1
    assert "untrained layer: an identity translator" in page
    fig = png_figure(first, "entropy")
    try:
        ticks = {t.get_text(): t.get_color() for t in fig.axes[0].get_yticklabels()}
        assert ticks["1 (untrained)"] != ticks["0"] == ticks["2"]  # greyed
        assert "untrained" in fig.axes[0].get_ylabel()
    finally:
        plt.close(fig)


def _blocks(out: str) -> list[list[list[str]]]:
    """The body rows of each table in ``out`` (a terminal view's text), as lists of stripped cells."""
    blocks: list[list[list[str]]] = []
    for line in out.splitlines():
        if line.startswith("┏"):
            blocks.append([])
        elif line.startswith("│"):
            blocks[-1].append([cell.strip() for cell in line.split("│")[1:-1]])
    return blocks


@pytest.mark.parametrize("width", [100, 60])
def test_terminal_table_fits_the_console_in_stacked_blocks(pair, width):
    from rich.cells import cell_len

    first, _ = pair(LONG_TEXT)
    positions = len(first.input_labels[0])
    assert positions >= 18
    console = Console(width=width, record=True)
    console.print(terminal_table(first, "entropy"))
    out = console.export_text()
    assert max(cell_len(line) for line in out.splitlines()) <= width
    blocks = _blocks(out)
    assert len(blocks) >= 2
    seen = 0
    for block in blocks:
        assert [row[0] for row in block] == ["0", "1†", "2", "output"]  # the layer column, whole, in every block
        for r, row in enumerate(block):
            for t, cell in enumerate(row[1:]):
                label = first.top_labels[0][r][seen + t][0]
                assert cell == label or (cell.endswith("…") and len(cell) >= 6 and label.startswith(cell[:-1])), (
                    cell,
                    label,
                )
        seen += len(block[0]) - 1
    assert seen == positions  # every position once, in order
    sizes = [len(block[0]) - 1 for block in blocks]
    assert max(sizes) - min(sizes) <= max(sizes) // 2 + 1  # blocks of similar sizes, no lone straggler


def test_js_summary_heading_reads_on_one_line(pair):
    first, _ = pair(LONG_TEXT)
    first.lens_name = "tuned lens (./lens)"
    console = Console(width=100, record=True)
    console.print(js_summary(first, "logit lens"))
    lines = console.export_text().splitlines()
    assert "Mean Jensen-Shannon divergence per layer, tuned lens (./lens) vs logit lens" in lines
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    assert [row[0] for row in rows] == ["0", "1†", "2", "output"]
    assert float(rows[1][1]) == 0.0  # the untrained layer reads as the logit lens
