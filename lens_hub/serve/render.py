"""Views: of a `PredictionTrajectory` (a rich terminal table, a static PNG heatmap, a standalone HTML page), and the
plots of ``lens-hub eval``'s logit statistics and transfer matrix (the per-layer evaluation plot, which model cards
show, is `lens_hub.core.plots`).

Every view shows one sequence of the trajectory (``batch``): rows are the lens layers with the model's output last,
columns are positions (headed by the input token), and each cell holds the top-1 prediction coloured by a statistic
(entropy, kl, ce, rank, prob; also js and tv for a compared trajectory).
"""

from __future__ import annotations

import html
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..analysis.trajectory import STAT_LABELS, PredictionTrajectory
from ..core.plots import figure, png_bytes, write_bytes
from ..errors import RenderError

# Low -> high colour ramp (viridis-like stops), shared by the terminal and HTML views.
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]


def _values(traj: PredictionTrajectory, stat: str, batch: int) -> tuple[torch.Tensor, float, float]:
    """[rows, positions] values of ``stat`` for sequence ``batch`` (cut to its length), and the colour range."""
    one = traj[batch]
    values = one.stat(stat)[0]
    if stat == "rank":
        values = torch.log10(values + 1)  # ranks span orders of magnitude
    finite = values[torch.isfinite(values)]
    lo, hi = (0.0, 1.0) if finite.numel() == 0 else (float(finite.min()), float(finite.max()))
    if stat in ("prob", "tv"):
        lo, hi = 0.0, 1.0
    elif stat == "js":
        lo, hi = 0.0, math.log(2)
    elif stat != "rank":
        lo = min(lo, 0.0)
    return values, lo, max(hi, lo + 1e-9)


def _rgb(value: float, lo: float, hi: float) -> tuple[int, int, int] | None:
    if not math.isfinite(value):
        return None
    x = min(1.0, max(0.0, (value - lo) / (hi - lo))) * (len(_RAMP) - 1)
    i = min(int(x), len(_RAMP) - 2)
    f = x - i
    a, b = _RAMP[i], _RAMP[i + 1]
    return tuple(round(a[c] + f * (b[c] - a[c])) for c in range(3))


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _ink(rgb: tuple[int, int, int] | None) -> str:
    """Black or white text, whichever reads better on ``rgb``."""
    if rgb is None:
        return "#000000"
    return "#000000" if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else "#ffffff"


def _legend_value(stat: str, value: float) -> str:
    if stat == "rank":
        return f"{10**value - 1:.0f}"
    return f"{value:.3g}"


def _shorten(label: str, width: int) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def terminal_table(traj: PredictionTrajectory, stat: str = "entropy", *, batch: int = 0, width: int = 10):
    """A rich `Table` (rows = layers, output last; columns = positions) plus a legend, as one renderable."""
    from rich.console import Group
    from rich.style import Style
    from rich.table import Table
    from rich.text import Text

    values, lo, hi = _values(traj, stat, batch)
    one = traj[batch]
    table = Table(title=f"top-1 prediction per layer, coloured by {STAT_LABELS.get(stat, stat)}", show_lines=False)
    table.add_column("layer", justify="right", style="bold")
    for label in one.input_labels[0]:
        table.add_column(Text(_shorten(label, width)), justify="center", no_wrap=True)
    for r, row_label in enumerate(one.row_labels):
        cells = []
        for t, top in enumerate(one.top_labels[0][r]):
            rgb = _rgb(float(values[r, t]), lo, hi)
            style = Style(color=_ink(rgb), bgcolor=None if rgb is None else f"rgb({rgb[0]},{rgb[1]},{rgb[2]})")
            cells.append(Text(_shorten(top[0], width), style=style))
        table.add_row(row_label, *cells)
    legend = Text("legend: ")
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        rgb = _rgb(v, lo, hi)
        legend.append(f" {_legend_value(stat, v)} ", style=Style(color=_ink(rgb), bgcolor=f"rgb{rgb}"))
    legend.append(f"  ({STAT_LABELS.get(stat, stat)}; low -> high)")
    return Group(table, legend)


def default_title(traj: PredictionTrajectory, stat: str) -> str:
    """``'tuned lens on gpt2: top-1 prediction per layer, coloured by entropy (nats)'``: which lens read which
    model, where the trajectory records them."""
    what = f"top-1 prediction per layer, coloured by {STAT_LABELS.get(stat, stat)}"
    lens, model = getattr(traj, "lens_name", None), getattr(traj, "model_name", None)
    reader = " on ".join(x for x in (lens, model) if x)
    return f"{reader}: {what}" if reader else what


def png_figure(traj: PredictionTrajectory, stat: str = "entropy", *, batch: int = 0, title: str | None = None):
    """The matplotlib figure `write_png` saves. Rows run top to bottom from the first layer to the output, as in the
    terminal and HTML views."""
    values, lo, hi = _values(traj, stat, batch)
    one = traj[batch]
    rows, cols = values.shape
    fig = figure(figsize=(min(2 + 0.9 * cols, 60), min(1.5 + 0.45 * rows, 40)), dpi=120)
    ax = fig.subplots()
    # origin="upper": row 0 (the first layer) on top and the output at the bottom, like the other views
    image = ax.imshow(values.numpy(), cmap="viridis", vmin=lo, vmax=hi, aspect="auto", origin="upper")
    for r in range(rows):
        for t in range(cols):
            rgb = _rgb(float(values[r, t]), lo, hi)
            ax.text(t, r, _shorten(one.top_labels[0][r][t][0], 8), ha="center", va="center", fontsize=7,
                    color=_ink(rgb))  # fmt: skip
    ax.set_xticks(range(cols), [_shorten(s, 10) for s in one.input_labels[0]], rotation=45, ha="right")
    ax.set_yticks(range(rows), one.row_labels)
    ax.set_xlabel("input token")
    ax.set_ylabel("layer")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(STAT_LABELS.get(stat, stat) + (" (log10(rank + 1))" if stat == "rank" else ""))
    ax.set_title(title or default_title(traj, stat))
    return fig


def write_png(traj: PredictionTrajectory, path, stat: str = "entropy", *, batch: int = 0, title: str | None = None):
    """A static heatmap (matplotlib, Agg): colour = ``stat``, text = top-1 token. Returns the path written."""
    fig = png_figure(traj, stat, batch=batch, title=title)
    with warnings.catch_warnings():  # tokens in scripts the default font lacks still render (as boxes)
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")
        fig.tight_layout()
        fig.savefig(path)
    return Path(path)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
table.traj { border-collapse: collapse; font-family: ui-monospace, monospace; font-size: 12px; }
table.traj th { padding: 2px 4px; font-weight: 600; white-space: nowrap; }
table.traj td.cell { padding: 2px 4px; text-align: center; white-space: nowrap; cursor: default; min-width: 2em; }
table.traj td.cell:hover { outline: 2px solid #e33; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888; padding: 4px 8px;
       font-family: ui-monospace, monospace; font-size: 12px; white-space: pre; pointer-events: none;
       box-shadow: 2px 2px 6px rgba(0,0,0,.3); z-index: 10; }
.legend span { display: inline-block; padding: 2px 8px; font-size: 12px; }
"""

_JS = """
(function () {
  var tip = document.getElementById('tip');
  document.querySelectorAll('td.cell').forEach(function (cell) {
    cell.addEventListener('mouseenter', function () {
      tip.textContent = cell.getAttribute('data-tip');
      tip.style.display = 'block';
    });
    cell.addEventListener('mousemove', function (e) {
      tip.style.left = (e.clientX + 14) + 'px';
      tip.style.top = (e.clientY + 14) + 'px';
    });
    cell.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
  });
})();
"""


def _tip(one: PredictionTrajectory, stat: str, r: int, t: int, value: float) -> str:
    lines = [f"layer {one.row_labels[r]}, position {t} ({one.input_labels[0][t]})"]
    lines.append(f"{stat} = {_legend_value(stat, value) if math.isfinite(value) else 'n/a'}")
    for j, (label, p) in enumerate(zip(one.top_labels[0][r][t], one.top_probs[0, r, t].tolist(), strict=True)):
        lines.append(f"{j + 1}. {label}  {p:.4f}")
    return "\n".join(lines)


def write_html(traj: PredictionTrajectory, path, stat: str = "entropy", *, batch: int = 0, title: str | None = None):
    """A standalone HTML page (inline CSS and JS, no network): one cell per layer x position, coloured by ``stat``;
    hovering a cell shows its top-k tokens and probabilities (tooltip, and the cell's title). Returns the path."""
    values, lo, hi = _values(traj, stat, batch)
    one = traj[batch]
    esc = html.escape
    title = title or default_title(traj, stat)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Rows: layers (output last). Cells: top-1 prediction, coloured by {esc(STAT_LABELS.get(stat, stat))}. "
        "Hover a cell for the top-k tokens.</p>",
        '<table class="traj"><thead><tr><th>layer</th>',
    ]
    out += [f'<th class="input">{esc(label)}</th>' for label in one.input_labels[0]]
    out.append("</tr></thead><tbody>")
    for r, row_label in enumerate(one.row_labels):
        out.append(f'<tr><th class="row">{esc(row_label)}</th>')
        for t in range(values.shape[1]):
            value = float(values[r, t])
            rgb = _rgb(value, lo, hi)
            bg = "#eeeeee" if rgb is None else _hex(rgb)
            tip = _tip(one, stat, r, t, value)
            top = one.top_labels[0][r][t][0]
            out.append(
                f'<td class="cell" data-row="{r}" data-pos="{t}" style="background:{bg};color:{_ink(rgb)}" '
                f'title="{esc(tip)}" data-tip="{esc(tip)}">{esc(_shorten(top, 12))}</td>'
            )
        out.append("</tr>")
    out.append('</tbody></table><div class="legend"><p>')
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        rgb = _rgb(v, lo, hi)
        out.append(f'<span style="background:{_hex(rgb)};color:{_ink(rgb)}">{esc(_legend_value(stat, v))}</span>')
    out.append(f" {esc(STAT_LABELS.get(stat, stat))}, low &rarr; high</p></div>")
    out.append(f'<div id="tip"></div><script>{_JS}</script>')
    out.append("</body></html>")
    Path(path).write_text("\n".join(out), encoding="utf-8")
    return Path(path)


def logit_stats_png(
    layers: Sequence[int],
    marginal_kl: Mapping[str, Sequence[float] | None],
    precision: Mapping[str, Sequence[float | None] | None],
    *,
    model_precision: float | None = None,
    title: str = "",
) -> bytes:
    """A PNG of the marginal prediction bias per layer: KL(model's marginal || lens's marginal), and the precision
    ``alpha_0`` of each layer's Dirichlet fit (log scale), one line per lens.

    The arguments are the ``logit_stats`` section of ``lens-hub eval --json`` (`lens_hub.analysis.evaluate`).

    Args:
        layers: The evaluated layers (x axis).
        marginal_kl: ``{"logit": [...], "tuned": [...] | None}``, bits, one value per layer.
        precision: The same lenses' Dirichlet precisions (``None`` entries, failed fits, are left out).
        model_precision: The precision of the model's own output, drawn as a horizontal line.
        title: Figure title.

    Returns:
        The PNG file's bytes.
    """
    from matplotlib.ticker import MaxNLocator

    styles = {"logit": ("logit lens", "--"), "tuned": ("tuned lens", "-")}
    fig = figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for name, values in marginal_kl.items():
        if values:
            label, style = styles.get(name, (name, "-"))
            axes[0].plot(layers, values, style, marker="o", markersize=3, label=label)
    axes[0].set_ylabel("KL(model marginal ‖ lens marginal) [bits]")
    for name, values in precision.items():
        if values:
            label, style = styles.get(name, (name, "-"))
            points = [(x, y) for x, y in zip(layers, values, strict=True) if y is not None and y > 0]
            if points:
                axes[1].plot(*zip(*points, strict=True), style, marker="o", markersize=3, label=label)
    if model_precision is not None and model_precision > 0:
        axes[1].axhline(model_precision, color="grey", linewidth=0.8, label="model output")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("Dirichlet precision α₀")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    return png_bytes(fig)


def write_logit_stats_png(
    layers: Sequence[int],
    marginal_kl: Mapping[str, Sequence[float] | None],
    precision: Mapping[str, Sequence[float | None] | None],
    path: str | os.PathLike[str],
    *,
    model_precision: float | None = None,
    title: str = "",
) -> Path:
    """Write `logit_stats_png` to ``path`` (parent folders created); returns it."""
    return write_bytes(
        logit_stats_png(layers, marginal_kl, precision, model_precision=model_precision, title=title), path
    )


def transfer_png(
    matrix: Sequence[Sequence[float]], layers: Sequence[int], *, title: str = "", unit: str = "bits/byte"
) -> bytes:
    """A heatmap PNG of the transfer matrix: cell (a, b) is the KL(final ‖ lens) when the translator trained for
    layer ``layers[a]`` is applied to the hidden state of layer ``layers[b]`` (``lens-hub eval --transfer``).

    The diagonal is the lens as trained; a row that stays low off the diagonal is a translator that transfers
    well to other layers. Cells are annotated with their values when there are at most 16 layers.

    Args:
        matrix: [L][L] values (``EvalResult.transfer``), rows = translator layer, columns = hidden-state layer.
        layers: The L layers, in the matrix's order.
        title: Figure title.
        unit: Unit of the values, for the colour bar.

    Returns:
        The PNG file's bytes.
    """
    values = torch.tensor([list(row) for row in matrix], dtype=torch.float64)
    n = len(layers)
    if values.shape != (n, n):
        raise RenderError(
            f"the transfer matrix must be {n} x {n} for {n} layers, got {list(values.shape)}; pass "
            "EvalResult.transfer with EvalResult.layers"
        )
    size = min(2.5 + 0.45 * n, 14)
    fig = figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values.numpy(), cmap="viridis", origin="lower", aspect="equal")
    ticks = list(range(n)) if n <= 32 else list(range(0, n, max(1, n // 16)))
    ax.set_xticks(ticks, [str(layers[t]) for t in ticks])
    ax.set_yticks(ticks, [str(layers[t]) for t in ticks])
    ax.set_xlabel("hidden state of layer")
    ax.set_ylabel("translator of layer")
    if n <= 16:
        lo, hi = float(values.min()), float(values.max())
        for a in range(n):
            for b in range(n):
                v = float(values[a, b])
                rgb = _rgb(v, lo, max(hi, lo + 1e-9))
                ax.text(b, a, f"{v:.2g}", ha="center", va="center", fontsize=7, color=_ink(rgb))
    fig.colorbar(image, ax=ax).set_label(f"KL(final ‖ lens) [{unit}]")
    ax.set_title(title or "transfer: translator a on layer b")
    return png_bytes(fig)


def write_transfer_png(
    matrix: Sequence[Sequence[float]],
    layers: Sequence[int],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    unit: str = "bits/byte",
) -> Path:
    """Write `transfer_png` to ``path`` (parent folders created); returns it."""
    return write_bytes(transfer_png(matrix, layers, title=title, unit=unit), path)
