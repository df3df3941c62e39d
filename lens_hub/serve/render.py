"""Views: of a `PredictionTrajectory` (a rich terminal table, a static PNG heatmap, a standalone HTML page), and the
plots of ``lens-hub eval``'s logit statistics and transfer matrix (the per-layer evaluation plot, which model cards
show, is `lens_hub.core.plots`).

Every view shows one sequence of the trajectory (``batch``): rows are the lens layers with the model's output last,
columns are positions (headed by the input token), and each cell holds the top-1 prediction coloured by a statistic
(entropy, kl, ce, rank, prob; also js and tv for a compared trajectory). Layers where the lens is untrained (an
identity translator: the tuned lens reads exactly what the logit lens reads there; the trajectory's
``untrained_layers``) are marked in every view.

The PNG and HTML views also take ``compare=``, a second trajectory of the same text through another lens (for
example ``PredictionTrajectory.from_text(logit_lens, ...)``): both lenses are drawn side by side, with the same rows,
positions and colour scale, each panel titled by its lens. The terminal view shows one lens; `js_summary` prints
the per-layer divergence of a trajectory built with ``compare_with=``.
"""

from __future__ import annotations

import html
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..analysis.trajectory import STAT_LABELS, PredictionTrajectory
from ..core.plots import figure, png_bytes, write_bytes
from ..errors import RenderError

# Low -> high colour ramp (viridis-like stops), shared by the terminal and HTML views.
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
# How an untrained row is marked: a dagger in the terminal (width is scarce there), a word in the PNG and HTML.
UNTRAINED_NOTE = "untrained layer: an identity translator, so the lens reads exactly what the logit lens reads there"
_DAGGER = "†"
_UNTRAINED_SUFFIX = " (untrained)"
_GREY = "#888888"
# The narrowest a terminal cell is cut to (``width`` permitting): 5 characters of the token and "…".
MIN_CELL_WIDTH = 6


def _stat_label(stat: str) -> str:
    return STAT_LABELS.get(stat, {"js": "Jensen-Shannon divergence (nats)", "tv": "total variation"}.get(stat, stat))


def _display_values(traj: PredictionTrajectory, stat: str) -> torch.Tensor:
    """[rows, positions] values of ``stat`` for the one sequence of ``traj``, as the views colour them."""
    values = traj.stat(stat)[0]
    if stat == "rank":
        values = torch.log10(values + 1)  # ranks span orders of magnitude
    return values


def _colour_range(stat: str, values: Sequence[torch.Tensor]) -> tuple[float, float]:
    """The colour scale of ``stat`` over every panel's values (one scale, so that panels compare)."""
    finite = torch.cat([v[torch.isfinite(v)] for v in values])
    lo, hi = (0.0, 1.0) if finite.numel() == 0 else (float(finite.min()), float(finite.max()))
    if stat in ("prob", "tv"):
        lo, hi = 0.0, 1.0
    elif stat == "js":
        lo, hi = 0.0, math.log(2)
    elif stat != "rank":
        lo = min(lo, 0.0)
    return lo, max(hi, lo + 1e-9)


@dataclass
class _Panel:
    """One lens's part of a view: its trajectory (one sequence), the values that colour it, and its name."""

    traj: PredictionTrajectory
    values: torch.Tensor
    name: str

    def row_label(self, r: int, suffix: str) -> str:
        """Row ``r``'s label, with ``suffix`` if the lens is untrained there."""
        return self.traj.row_labels[r] + (suffix if self.traj.untrained_rows[r] else "")


def _panels(
    traj: PredictionTrajectory, stat: str, batch: int, compare: PredictionTrajectory | None
) -> tuple[list[_Panel], float, float]:
    """The panels of a view (``traj``'s, then ``compare``'s) and their shared colour range.

    Raises:
        RenderError: If ``compare`` is not a trajectory of the same tokens and layers.
    """
    one = traj[batch]
    trajs = [one]
    if compare is not None:
        other = compare[batch]
        if not torch.equal(other.input_ids, one.input_ids) or other.layers != one.layers:
            raise RenderError(
                "compare= must be a trajectory of the same text and layers through another lens (e.g. "
                f"PredictionTrajectory.from_text(other_lens, model, tokenizer, text, layers={one.layers})); got "
                f"layers {other.layers} and {other.input_ids.shape[1]} positions for layers {one.layers} and "
                f"{one.input_ids.shape[1]} positions"
            )
        trajs.append(other)
    values = []
    for t in trajs:
        # js and tv are symmetric: a compared trajectory built without compare_with shows the first one's values
        source = one if stat in ("js", "tv") and getattr(t, stat) is None else t
        values.append(_display_values(source, stat))
    names = [t.lens_name or "lens" for t in trajs]
    if len(names) == 2 and names[0] == names[1]:
        names = [f"{names[0]} (1)", f"{names[1]} (2)"]
    lo, hi = _colour_range(stat, values)
    return [_Panel(t, v, n) for t, v, n in zip(trajs, values, names, strict=True)], lo, hi


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


def default_title(traj: PredictionTrajectory, stat: str, *, compare: PredictionTrajectory | None = None) -> str:
    """``'tuned lens on gpt2: top-1 prediction per layer, coloured by entropy (nats)'``: which lens read which
    model, where the trajectory records them; with ``compare``, both lenses (``'tuned lens vs logit lens on
    gpt2: ...'``)."""
    what = f"top-1 prediction per layer, coloured by {_stat_label(stat)}"
    lenses = [getattr(t, "lens_name", None) for t in (traj, compare) if t is not None]
    lens = " vs ".join(x for x in lenses if x) or None
    model = getattr(traj, "model_name", None)
    reader = " on ".join(x for x in (lens, model) if x)
    return f"{reader}: {what}" if reader else what


# ------------------------------------------------------------------------------------------------------ terminal


def _fit_cells(label: str, width: int) -> str:
    """``label`` cut to ``width`` terminal cells (wide characters count twice), with "…" where it was cut."""
    from rich.cells import cell_len, set_cell_size

    if cell_len(label) <= width:
        return label
    return set_cell_size(label, max(width - 1, 0)) + "…"


def _centre_cells(label: str, width: int) -> str:
    """``label`` padded with spaces to exactly ``width`` cells, centred (the cell's colour then fills it)."""
    from rich.cells import cell_len

    room = max(width - cell_len(label), 0)
    return " " * (room // 2) + label + " " * (room - room // 2)


class TrajectoryTable:
    """The terminal view, a rich renderable (`terminal_table` builds it): a title, the table of top-1 predictions
    (rows = layers, output last; columns = positions), a colour legend, and a footnote on untrained layers.

    It fits the console's width when printed: every column keeps up to ``width`` cells of its tokens, and positions
    that do not fit beside each other are split into blocks stacked one under another, each repeating the layer
    column, rather than squeezed.
    """

    def __init__(self, panel: _Panel, stat: str, lo: float, hi: float, *, width: int, title: str) -> None:
        self.panel, self.stat, self.lo, self.hi = panel, stat, lo, hi
        self.width = max(int(width), 1)
        self.title = title

    def _column_widths(self, max_width: int, layer_width: int) -> list[int]:
        """The width of each position's column: its longest label (heading or cell), at most ``width``, and
        never wider than what a block of that one column leaves (nor, where ``width`` allows, narrower than
        `MIN_CELL_WIDTH`)."""
        from rich.cells import cell_len

        one = self.panel.traj
        alone = max(max_width - layer_width - 7, min(MIN_CELL_WIDTH, self.width))  # one column + borders/padding
        widths = []
        for t, heading in enumerate(one.input_labels[0]):
            longest = max([cell_len(heading)] + [cell_len(row[t][0]) for row in one.top_labels[0]])
            widths.append(max(1, min(longest, self.width, alone)))
        return widths

    def _row_labels(self) -> list[str]:
        return [self.panel.row_label(r, _DAGGER) for r in range(self.panel.traj.num_rows)]

    def _layer_width(self) -> int:
        return max(len("layer"), *(len(label) for label in self._row_labels()))

    def blocks(self, max_width: int) -> list[list[int]]:
        """The positions of each stacked block at a console ``max_width`` cells wide: as few blocks as fit, of
        about equal numbers of positions (no block of one straggler under full ones)."""
        layer_width = self._layer_width()
        widths = self._column_widths(max_width, layer_width)

        def fits(block: list[int]) -> bool:
            # the layer column with its padding and two borders, then each column with its padding and a border
            return layer_width + 4 + sum(widths[t] + 3 for t in block) <= max_width

        greedy: list[list[int]] = [[]]
        for t in range(len(widths)):
            if greedy[-1] and not fits([*greedy[-1], t]):
                greedy.append([])
            greedy[-1].append(t)
        for count in range(len(greedy), len(widths) + 1):  # the same number of blocks, evened out, where it fits
            size = math.ceil(len(widths) / count)
            even = [list(range(a, min(a + size, len(widths)))) for a in range(0, len(widths), size)]
            if len(even) == len(greedy) and all(fits(block) for block in even):
                return even
            if len(even) > len(greedy):
                break
        return greedy

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.style import Style
        from rich.table import Table
        from rich.text import Text

        one, values = self.panel.traj, self.panel.values
        yield Text(self.title, style="bold")
        labels, layer_width = self._row_labels(), self._layer_width()
        widths = self._column_widths(options.max_width, layer_width)
        blocks = self.blocks(options.max_width)
        n = len(one.input_labels[0])
        for positions in blocks:
            if len(blocks) > 1:
                yield Text(f"tokens {positions[0] + 1}–{positions[-1] + 1} of {n}", style="dim")
            table = Table(show_lines=False)
            table.add_column("layer", justify="right", style="bold", width=layer_width, no_wrap=True)
            for t in positions:
                heading = _centre_cells(_fit_cells(one.input_labels[0][t], widths[t]), widths[t])
                table.add_column(Text(heading), justify="center", width=widths[t], no_wrap=True)
            for r, label in enumerate(labels):
                cells = []
                for t in positions:
                    rgb = _rgb(float(values[r, t]), self.lo, self.hi)
                    style = Style(color=_ink(rgb), bgcolor=None if rgb is None else "rgb({},{},{})".format(*rgb))
                    cells.append(Text(_centre_cells(_fit_cells(one.top_labels[0][r][t][0], widths[t]), widths[t]),
                                      style=style))  # fmt: skip
                untrained = one.untrained_rows[r]
                table.add_row(Text(label, style="dim" if untrained else ""), *cells)
            yield table
        legend = Text("legend: ")
        for i in range(5):
            v = self.lo + (self.hi - self.lo) * i / 4
            rgb = _rgb(v, self.lo, self.hi)
            legend.append(f" {_legend_value(self.stat, v)} ", style=Style(color=_ink(rgb), bgcolor=f"rgb{rgb}"))
        legend.append(f"  ({_stat_label(self.stat)}; low -> high)")
        yield legend
        if any(one.untrained_rows):
            yield Text(f"{_DAGGER} {UNTRAINED_NOTE}", style="dim")


def terminal_table(
    traj: PredictionTrajectory, stat: str = "entropy", *, batch: int = 0, width: int = 10, title: str | None = None
) -> TrajectoryTable:
    """The terminal view of sequence ``batch``: a rich renderable (print it with a `rich.console.Console`).

    Rows are the layers (untrained ones marked with a dagger and a footnote), the output last; columns are the
    positions, headed by their input token; each cell holds the top-1 prediction, coloured by ``stat``. At the
    console's width, positions that do not fit are split into blocks stacked one under another, each repeating the
    layer column (see `TrajectoryTable`).

    Args:
        traj: The trajectory.
        stat: The colour statistic (any name ``traj.stat`` accepts).
        batch: Which sequence to show.
        width: The most terminal cells a token keeps (longer ones end in "…").
        title: The heading (default: `default_title`).
    """
    panels, lo, hi = _panels(traj, stat, batch, None)
    return TrajectoryTable(panels[0], stat, lo, hi, width=width, title=title or default_title(traj, stat))


def js_summary(traj: PredictionTrajectory, compare_name: str | None = None):
    """The per-layer mean Jensen-Shannon divergence and total-variation distance between the two lenses of a
    trajectory built with ``compare_with=``, as a rich renderable: a full-width heading, then the table.

    Args:
        traj: A compared trajectory (means over all its sequences and positions).
        compare_name: How to name the compared lens in the heading (default: "the compared lens").

    Raises:
        TrajectoryError: If ``traj`` was built without ``compare_with``.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    js, tv = traj.mean_by_row("js"), traj.mean_by_row("tv")
    pair = f"{traj.lens_name or 'the lens'} vs {compare_name or 'the compared lens'}"
    heading = Text(f"Mean Jensen-Shannon divergence per layer, {pair}", style="bold")
    table = Table()
    table.add_column("layer", justify="right", style="bold", no_wrap=True)
    table.add_column("mean JS (nats)", justify="right", no_wrap=True)
    table.add_column("mean TV", justify="right", no_wrap=True)
    for r, (label, js_r, tv_r) in enumerate(zip(traj.row_labels, js, tv, strict=True)):
        untrained = traj.untrained_rows[r]
        table.add_row(Text(label + (_DAGGER if untrained else ""), style="dim" if untrained else ""),
                      f"{js_r:.4f}", f"{tv_r:.4f}")  # fmt: skip
    notes = [Text("JS: 0 where the lenses agree, at most ln 2 = 0.693; TV (total variation): 0 .. 1", style="dim")]
    if any(traj.untrained_rows):
        notes.append(Text(f"{_DAGGER} {UNTRAINED_NOTE}", style="dim"))
    return Group(heading, table, *notes)


# ------------------------------------------------------------------------------------------------------------ PNG


def _text_width(renderer: Any, text: str, props: Any) -> float:
    return renderer.get_text_width_height_descent(text, props, ismath=False)[0]


def _wrap(text: str, max_px: float, measure: Callable[[str], float]) -> str:
    """``text`` broken into lines at most ``max_px`` wide: at spaces, and inside a word too long for a line (after
    a "/", "-" or "_" where there is one, as in a model id), so no line is ever wider."""
    out: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if measure(candidate) <= max_px:
                line = candidate
                continue
            if line:
                out.append(line)
            line = word
            while measure(line) > max_px and len(line) > 1:
                cut = len(line) - 1
                while cut > 1 and measure(line[:cut]) > max_px:
                    cut -= 1
                breaks = [i + 1 for i, c in enumerate(line[:cut]) if c in "/-_"]
                if breaks and breaks[-1] >= cut // 2:
                    cut = breaks[-1]
                out.append(line[:cut])
                line = line[cut:]
        out.append(line)
    return "\n".join(out)


def _drawn_tick_labels(axis: Any) -> list[Any]:
    """The tick labels ``axis`` draws: those of its major ticks inside its view interval (matplotlib keeps labels
    of ticks beyond the limits too, which are never drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(hi - lo, 1e-12)
    ticks = [tick for tick in axis.get_major_ticks() if lo - eps <= tick.get_loc() <= hi + eps]
    return [label for tick in ticks for label in (tick.label1, tick.label2) if label.get_visible()]


def _texts(fig: Any) -> list[Any]:
    """Every visible, non-empty text of ``fig`` that must lie inside it: titles, axis and tick labels (the colour
    bar's too) and the figure's own texts."""
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        texts += _drawn_tick_labels(ax.xaxis) + _drawn_tick_labels(ax.yaxis)
    return [t for t in texts if t.get_visible() and t.get_text()]


def _overflow(fig: Any) -> tuple[float, float]:
    """How far (pixels: horizontally, vertically) the texts of ``fig`` reach outside it, after a layout."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    dx = dy = 0.0
    for text in _texts(fig):
        box = text.get_window_extent(renderer)
        dx = max(dx, -box.x0, box.x1 - width)
        dy = max(dy, -box.y0, box.y1 - height)
    return dx, dy


def _fit_figure(fig: Any) -> None:
    """Grow ``fig`` until every text lies inside it (constrained layout places them; a figure too small for its
    labels is made larger, never cut)."""
    for _ in range(4):
        dx, dy = _overflow(fig)
        if dx <= 0.5 and dy <= 0.5:
            return
        w, h = fig.get_size_inches()
        grow_w = (2 * dx + 8) / fig.dpi if dx > 0.5 else 0.0  # both sides, and a margin
        grow_h = (2 * dy + 8) / fig.dpi if dy > 0.5 else 0.0
        fig.set_size_inches(w + grow_w, h + grow_h)


def png_figure(
    traj: PredictionTrajectory,
    stat: str = "entropy",
    *,
    batch: int = 0,
    title: str | None = None,
    compare: PredictionTrajectory | None = None,
):
    """The matplotlib figure `write_png` saves. Rows run top to bottom from the first layer to the output, as in the
    terminal and HTML views; untrained layers are labelled "(untrained)", in grey. With ``compare`` (a trajectory of
    the same text and layers through a second lens), the two lenses are side by side, each panel titled by its lens,
    on one colour scale.

    The figure is sized to its text: the title wraps to the figure's width, and a figure too small for its title,
    tick labels or colour-bar label grows until they fit.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    panels, lo, hi = _panels(traj, stat, batch, compare)
    rows, cols = panels[0].values.shape
    untrained = any(any(p.traj.untrained_rows) for p in panels)
    labels = [[p.row_label(r, _UNTRAINED_SUFFIX) for r in range(rows)] for p in panels]
    label_in = 0.3 + 0.075 * max(len(label) for panel_labels in labels for label in panel_labels)  # y tick labels
    panel_in = 0.9 + label_in + (0.9 if len(panels) == 1 else 0.75) * cols
    width = min(max(len(panels) * panel_in + 1.4, 6.4), 60)
    height = min(max(2.4 + 0.45 * rows, 3.6), 40)
    fig = figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with, outside pyplot
    renderer = fig.canvas.get_renderer()
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, panel, row_labels in zip(axes, panels, labels, strict=True):
        # origin="upper": row 0 (the first layer) on top and the output at the bottom, like the other views
        image = ax.imshow(panel.values.numpy(), cmap="viridis", vmin=lo, vmax=hi, aspect="auto", origin="upper")
        for r in range(rows):
            for t in range(cols):
                rgb = _rgb(float(panel.values[r, t]), lo, hi)
                # in_layout=False: a cell's text stays inside its cell, so the layout need not measure it
                ax.text(t, r, _shorten(panel.traj.top_labels[0][r][t][0], 8), ha="center", va="center", fontsize=7,
                        color=_ink(rgb), in_layout=False)  # fmt: skip
        ax.set_xticks(range(cols), [_shorten(s, 10) for s in panel.traj.input_labels[0]], rotation=45, ha="right",
                      rotation_mode="anchor")  # fmt: skip
        ax.set_yticks(range(rows), row_labels)
        for tick, flag in zip(ax.get_yticklabels(), panel.traj.untrained_rows, strict=True):
            if flag:
                tick.set_color(_GREY)
        ax.set_xlabel("input token")
        if len(panels) > 1:
            props = ax.title.get_fontproperties()
            room = 0.9 * ((width - 1.4) / len(panels) - label_in) * fig.dpi
            ax.set_title(_wrap(panel.name, room, lambda s, p=props: _text_width(renderer, s, p)))
    axes[0].set_ylabel("layer" + ("\n(grey: untrained, = logit lens)" if untrained else ""))
    bar = fig.colorbar(image, ax=list(axes))
    bar_label = _stat_label(stat) + (" (log10(rank + 1))" if stat == "rank" else "")
    bar.set_label(bar_label)
    label = bar.ax.yaxis.label
    bar_px = (height - 1.6) * fig.dpi  # about the colour bar's length once laid out
    label.set_text(_wrap(bar_label, bar_px, lambda s: _text_width(renderer, s, label.get_fontproperties())))
    heading = fig.suptitle(title or default_title(traj, stat, compare=compare))
    heading.set_text(_wrap(heading.get_text(), 0.94 * width * fig.dpi,
                           lambda s: _text_width(renderer, s, heading.get_fontproperties())))  # fmt: skip
    _fit_figure(fig)
    return fig


def write_png(
    traj: PredictionTrajectory,
    path,
    stat: str = "entropy",
    *,
    batch: int = 0,
    title: str | None = None,
    compare: PredictionTrajectory | None = None,
):
    """A static heatmap (matplotlib, Agg): colour = ``stat``, text = top-1 token (`png_figure`; with ``compare``,
    both lenses side by side). Returns the path written."""
    with warnings.catch_warnings():  # tokens in scripts the default font lacks still render (as boxes)
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")
        fig = png_figure(traj, stat, batch=batch, title=title, compare=compare)
        fig.savefig(path)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------- HTML


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #222; }
.panels { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.panel h2 { font-size: 1.1em; margin: 0.2em 0 0.4em; }
table.traj { border-collapse: collapse; font-family: ui-monospace, monospace; font-size: 12px; }
table.traj th { padding: 2px 4px; font-weight: 600; white-space: nowrap; }
table.traj th.untrained { color: #888; font-weight: normal; font-style: italic; }
table.traj td.cell { padding: 2px 4px; text-align: center; white-space: nowrap; cursor: default; min-width: 2em; }
table.traj td.cell:hover { outline: 2px solid #e33; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #888; padding: 4px 8px;
       font-family: ui-monospace, monospace; font-size: 12px; white-space: pre; pointer-events: none;
       box-shadow: 2px 2px 6px rgba(0,0,0,.3); z-index: 10; }
.legend span { display: inline-block; padding: 2px 8px; font-size: 12px; }
.note { color: #666; font-size: 0.9em; }
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


def _tip(panel: _Panel, stat: str, r: int, t: int, value: float, *, named: bool) -> str:
    one = panel.traj
    lines = [panel.name] if named else []
    lines.append(f"layer {panel.row_label(r, _UNTRAINED_SUFFIX)}, position {t} ({one.input_labels[0][t]})")
    lines.append(f"{stat} = {_legend_value(stat, value) if math.isfinite(value) else 'n/a'}")
    for j, (label, p) in enumerate(zip(one.top_labels[0][r][t], one.top_probs[0, r, t].tolist(), strict=True)):
        lines.append(f"{j + 1}. {label}  {p:.4f}")
    return "\n".join(lines)


def _html_table(panel: _Panel, stat: str, lo: float, hi: float, *, named: bool) -> list[str]:
    """One panel's ``<table>`` (inside a titled ``<section>`` when the page has several)."""
    esc = html.escape
    one, values = panel.traj, panel.values
    out = ['<section class="panel">', f"<h2>{esc(panel.name)}</h2>"] if named else ['<section class="panel">']
    out.append(f'<table class="traj" data-lens="{esc(panel.name)}"><thead><tr><th>layer</th>')
    out += [f'<th class="input">{esc(label)}</th>' for label in one.input_labels[0]]
    out.append("</tr></thead><tbody>")
    for r in range(one.num_rows):
        if one.untrained_rows[r]:
            head = f'<th class="row untrained" title="{esc(UNTRAINED_NOTE)}">'
        else:
            head = '<th class="row">'
        out.append(f"<tr>{head}{esc(panel.row_label(r, _UNTRAINED_SUFFIX))}</th>")
        for t in range(values.shape[1]):
            value = float(values[r, t])
            rgb = _rgb(value, lo, hi)
            bg = "#eeeeee" if rgb is None else _hex(rgb)
            tip = _tip(panel, stat, r, t, value, named=named)
            top = one.top_labels[0][r][t][0]
            out.append(
                f'<td class="cell" data-row="{r}" data-pos="{t}" style="background:{bg};color:{_ink(rgb)}" '
                f'title="{esc(tip)}" data-tip="{esc(tip)}">{esc(_shorten(top, 12))}</td>'
            )
        out.append("</tr>")
    out.append("</tbody></table></section>")
    return out


def write_html(
    traj: PredictionTrajectory,
    path,
    stat: str = "entropy",
    *,
    batch: int = 0,
    title: str | None = None,
    compare: PredictionTrajectory | None = None,
):
    """A standalone HTML page (inline CSS and JS, no network): one cell per layer x position, coloured by ``stat``;
    hovering a cell shows its top-k tokens and probabilities (tooltip, and the cell's title). Untrained layers are
    labelled "(untrained)", in grey, with a note. With ``compare`` (a trajectory of the same text and layers through
    a second lens), one table per lens, side by side (wrapping below on a narrow window), each titled by its lens,
    on one colour scale. Returns the path."""
    panels, lo, hi = _panels(traj, stat, batch, compare)
    esc = html.escape
    named = len(panels) > 1
    title = title or default_title(traj, stat, compare=compare)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Rows: layers (output last). Cells: top-1 prediction, coloured by {esc(_stat_label(stat))}"
        + (", on one scale for both lenses" if named else "")
        + ". Hover a cell for the top-k tokens.</p>",
        '<div class="panels">',
    ]
    for panel in panels:
        out += _html_table(panel, stat, lo, hi, named=named)
    out.append('</div><div class="legend"><p>')
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        rgb = _rgb(v, lo, hi)
        out.append(f'<span style="background:{_hex(rgb)};color:{_ink(rgb)}">{esc(_legend_value(stat, v))}</span>')
    out.append(f" {esc(_stat_label(stat))}, low &rarr; high</p></div>")
    if any(any(p.traj.untrained_rows) for p in panels):
        out.append(f'<p class="note">(untrained): {esc(UNTRAINED_NOTE)}.</p>')
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
