"""Figures of what a lens's config records: the per-layer evaluation plot that model cards show and
``lens-hub eval --png`` writes; and the PNG helpers every view shares.

Figures are built on `matplotlib.figure.Figure`, never through pyplot: that needs no backend, so building one never
switches a notebook's backend or closes its open figures, and a figure is freed with its last reference.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import EvaluationInfo

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure(**kwargs: Any) -> Figure:
    """A new matplotlib figure, outside pyplot (``kwargs`` go to `matplotlib.figure.Figure`)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def png_bytes(fig: Figure) -> bytes:
    """A figure as PNG bytes (Agg, whatever backend pyplot uses)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    return buffer.getvalue()


def write_bytes(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` to ``path``, parent folders created; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return out


def consecutive_runs(layers: Sequence[int]) -> list[list[int]]:
    """Split ``layers`` into runs of consecutive numbers (``[0, 1, 2, 10, 20, 21]`` -> ``[[0, 1, 2], [10], [20, 21]]``):
    the plot joins only neighbours, as a line across a gap would invent values for layers never evaluated."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return runs


LOG_SCALE_RATIO = 10.0  # largest / smallest value from which a linear axis flattens all but the largest (layer 0)


def wants_log_scale(values: Sequence[float]) -> bool:
    """Whether ``values`` need a log y-axis: all positive and spanning at least a decade (``LOG_SCALE_RATIO``): the
    embedding, layer 0, often dwarfs the rest, and KL near the output is orders of magnitude below it."""
    finite = sorted(v for v in values if math.isfinite(v))
    if len(finite) < 2 or finite[0] <= 0:
        return False
    return finite[-1] / finite[0] >= LOG_SCALE_RATIO


def evaluation_figure(summary: EvaluationInfo, *, title: str = "", trained: Sequence[int] | None = None):
    """The matplotlib figure of `evaluation_png` (KL and cross-entropy per evaluated layer, tuned vs logit lens).

    Lines join only consecutive evaluated layers; with ``trained`` (the tuned lens's trained layers), the tuned
    lens's untrained layers get hollow markers. The legend shows only what is drawn (a line style only where some
    run has two layers, the hollow marker only where one is). An axis spanning a decade or more is logarithmic.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "kl", "KL(final ‖ lens)"), (axes[1], "cross_entropy", "cross-entropy")):
        plotted: list[float] = []
        handles: list[Line2D] = []
        any_hollow = False
        for n, (name, metrics, style) in enumerate(
            (("logit lens", summary.logit, "--"), ("tuned lens", summary.tuned, "-"))
        ):
            values = getattr(metrics, key)
            if not values:
                continue
            layers = list(summary.layers or range(len(values)))
            at = dict(zip(layers, values, strict=False))
            color = f"C{n}"
            runs = consecutive_runs([x for x in layers if x in at])
            for run in runs:
                ys = [at[x] for x in run]
                if len(run) > 1:
                    ax.plot(run, ys, style, color=color)
                for x, y in zip(run, ys, strict=True):
                    hollow = name == "tuned lens" and trained is not None and x not in trained
                    any_hollow |= hollow
                    ax.plot([x], [y], "o", markersize=4, color=color, markerfacecolor="white" if hollow else color)
            joined = any(len(run) > 1 for run in runs)
            handles.append(Line2D([], [], linestyle=style if joined else "none", marker="o", markersize=4,
                                  color=color, label=name))  # fmt: skip
            plotted += list(values)
        if any_hollow:
            handles.append(Line2D([], [], linestyle="none", marker="o", markersize=4, color="C1",
                                  markerfacecolor="white", label="tuned, untrained layer (= logit lens)"))  # fmt: skip
        if key == "cross_entropy" and summary.model_cross_entropy is not None:
            handles.append(ax.axhline(summary.model_cross_entropy, color="grey", linewidth=0.8, label="model output"))
        if wants_log_scale(plotted):
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{label} [bits/byte]" + (", log scale" if ax.get_yscale() == "log" else ""))
        ax.grid(alpha=0.3)
        ax.legend(handles=handles)
    if title:
        fig.suptitle(title)
    return fig


def evaluation_png(summary: EvaluationInfo, *, title: str = "", trained: Sequence[int] | None = None) -> bytes:
    """A PNG of `evaluation_figure` (no display needed)."""
    return png_bytes(evaluation_figure(summary, title=title, trained=trained))


def write_evaluation_png(
    summary: EvaluationInfo, path: str | os.PathLike[str], *, title: str = "", trained: Sequence[int] | None = None
) -> Path:
    """Write `evaluation_png` to ``path``; returns it."""
    return write_bytes(evaluation_png(summary, title=title, trained=trained), path)
