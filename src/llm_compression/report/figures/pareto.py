"""Figure ``pareto``.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..labels import place_labels  # noqa: E402
from ..plotting import _dataset_of, _family_handles, _healing_style, _marker_handles, _nonfinite_note, _note, _outside_legend, _panel_title, _set_ppl_scale  # noqa: E402
from ..style import QUANT_MARKERS, display_name, family_colors, ordered_families  # noqa: E402
from ..wide import SPREAD_COLUMNS, pick_metric, ppl_columns, wide  # noqa: E402


def pareto_front(points: list[tuple[float, float, str]], rtol: float = 0.01) -> list[tuple[float, float, str]]:
    """Points no other point dominates, sorted by cost.

    ``q`` dominates ``p`` when ``q.cost <= p.cost * (1 + rtol)`` and ``q.loss < p.loss``: costs within
    ``rtol`` (default 1%) count as equal, so a checkpoint a few header bytes smaller does not make the
    front by size alone.

    Args:
        points: ``(cost, loss, label)``; lower is better on both axes.
    """
    front = [p for p in points
             if not any(q is not p and q[0] <= p[0] * (1 + rtol) and q[1] < p[1] for q in points)]
    return sorted(front, key=lambda p: (p[0], p[1]))


def pareto(df: pd.DataFrame):
    """Quality (perplexity of PTB, else the first dataset) against memory, and against prefill latency
    (median, min-max bar) when measured, over all variants; the Pareto front is drawn and its variants
    named. Cost axes start at 0."""
    w = wide(df)
    cols = ppl_columns(w)
    mem_col, mem_label = pick_metric(w, "memory")
    if not cols or mem_col is None:
        raise ValueError("figure 'pareto' needs perplexity and a memory/bytes metric")
    col = next((c for c in cols if c.startswith("ppl_ptb")), cols[0])
    lat_col, lat_label = pick_metric(w, "latency")
    colors = family_colors(w.family)
    axes_spec = [(mem_col, mem_label, 1e-6)] + ([(lat_col, lat_label, 1.0)] if lat_col else [])
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(6.2 * len(axes_spec) + 2.4, 5.0), squeeze=False)
    for ax, (xc, xl, scale) in zip(axes[0], axes_spec):
        d = w[w[col].notna() & w[xc].notna()]
        d = d[np.isfinite(d[col].astype(float))]
        pts = [(r[xc] * scale, r[col], display_name(r)) for _, r in d.iterrows()]
        spread = SPREAD_COLUMNS.get(xc)
        bars = []
        for _, r in d.iterrows():
            if spread and all(c in d.columns for c in spread) and pd.notna(r[spread[0]]):
                bars.append((r[spread[0]], r[col], r[spread[1]], r[col]))
                ax.errorbar([r[xc]], [r[col]], xerr=[[r[xc] - r[spread[0]]], [r[spread[1]] - r[xc]]], fmt="none",
                            ecolor=colors[r.family], elinewidth=0.8, capsize=2, zorder=2)
            ax.scatter(r[xc] * scale, r[col], color=colors[r.family], marker=QUANT_MARKERS.get(r.quant, "o"), s=45,
                       zorder=3, **_healing_style(r.healing))
        front = pareto_front(pts)
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:orange", linewidth=1.5,
                zorder=2)
        _set_ppl_scale(ax, d[col], f"{_dataset_of(df, col)} perplexity (lower is better)")
        ax.set_xlabel(xl)
        ax.set_xlim(left=0, right=max(ax.get_xlim()[1], 1e-9) * 1.05)
        ax.set_title(_panel_title(df, col), fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        note = _nonfinite_note(w[w[xc].notna() & w[col].notna()], col)
        if note:
            _note(ax, note, "bottom")
        ax._label_items = [(x, y, lab, 4.0) for x, y, lab in front]
        ax._obstacles = [(p[0], p[1], 4.0) for p in pts]
        ax._segments = bars
    front_handle = Line2D([], [], color="tab:orange", label="Pareto front (variants named)")
    _outside_legend(axes[0][-1], [front_handle] + _family_handles(ordered_families(w), colors) + _marker_handles(w),
                    title="method family / marker")
    fig.suptitle(f"{w.model.iloc[0]}: quality against memory and latency (axes from 0)", fontsize=10)
    fig.tight_layout()
    for ax in axes[0]:
        place_labels(ax, ax._label_items, color="tab:orange", obstacles=ax._obstacles, segments=ax._segments)
    return fig
