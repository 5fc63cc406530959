"""Drawing helpers shared by the figures: saving, log scales, notes, legends and error bars (point labels:
:mod:`.labels`).
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter  # noqa: E402

from .style import HEALING_HATCHES, LOG_SPAN, QUANT_MARKERS, QUANT_NAMES, display_name, label_color, ordered_families, short_label  # noqa: E402
from .wide import _ppl_groups, _protocol_fields  # noqa: E402


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save through a temporary file and a rename (the format follows the suffix), then close."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    # legends placed outside the axes are not part of matplotlib's tight box by themselves
    extra = [a for ax in fig.axes for a in ax.get_children() if isinstance(a, Legend)] + list(fig.texts)
    try:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", bbox_extra_artists=extra)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _finite(values) -> list[float]:
    return [float(x) for x in values if x is not None and np.isfinite(x) and x > 0]


def wants_log(values) -> bool:
    """Whether a perplexity axis over ``values`` should be logarithmic: finite positive values whose
    max/min exceeds :data:`LOG_SPAN`."""
    v = _finite(values)
    return bool(v) and max(v) / min(v) > LOG_SPAN


def _log_ticks(axis, values) -> None:
    """Plain-number ticks on a log axis (1-2-5 within three decades, powers of ten beyond), no minor
    labels, so tick labels never run into each other."""
    v = _finite(values)
    decades = math.log10(max(v) / min(v)) if v else 0.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _set_ppl_scale(ax, values, label: str) -> None:
    log = wants_log(values)
    if log:
        ax.set_yscale("log")
        _log_ticks(ax.yaxis, values)
    ax.set_ylabel(f"{label}" + (" (log scale)" if log else ""))


def readable_protocol(text: str) -> str:
    """A perplexity protocol of the table in words, for a figure.

    The table keeps it as compact text (:func:`llm_compression.report.table.protocol_label`), e.g.
    ``sparsegpt seqlen=512 windows=8 scored=4088 join=space cap=4096`` ->
    ``sparsegpt protocol: 8 windows of 512 tokens, 4,088 scored (first 4,096 tokens of the split)``.
    The joining rule stays in the table. Text of another form is returned as it is.
    """
    names, kv = _protocol_fields(text)
    try:
        windows, seqlen, scored = (int(kv[k]) for k in ("windows", "seqlen", "scored"))
    except (KeyError, ValueError):
        return text
    out = (f"{names[0]} protocol: " if names else "") + (
        f"{windows:,} window{'s' if windows != 1 else ''} of {seqlen:,} tokens, {scored:,} scored")
    if kv.get("cap", "").isdigit():
        out += f" (first {int(kv['cap']):,} tokens of the split)"
    if kv.get("dtype"):
        out += f", in {kv['dtype']}"
    return out


def _protocol_of(df: pd.DataFrame, col: str) -> str:
    """Protocol of a perplexity column of :func:`wide` in words (:func:`readable_protocol`)."""
    ds, pr = _ppl_groups(df).get(col, (col[4:], ""))
    rows = df[(df.metric == "perplexity") & (df.dataset == ds)]
    if "preset" in rows.columns and pr:
        rows = rows[rows.preset.fillna("") == pr]
    return readable_protocol(rows.protocol.iloc[0]) if not rows.empty else ""


def _dataset_of(df: pd.DataFrame, col: str) -> str:
    ds, pr = _ppl_groups(df).get(col, (col[4:], ""))
    return f"{ds} ({pr})" if pr else ds


def _panel_title(df: pd.DataFrame, col: str) -> str:
    """Title of a panel that draws one perplexity column: its dataset, and under it its protocol in words
    (wrapped, so that side-by-side panels' titles do not run into each other)."""
    return f"{_dataset_of(df, col)}\n" + textwrap.fill(_protocol_of(df, col), 72)


def _require(w: pd.DataFrame, cols: list[str], figure: str) -> None:
    missing = [c for c in cols if c not in w.columns]
    if missing:
        raise ValueError(f"figure {figure!r} needs metrics {missing}; the table has {sorted(w.columns)}")


def _note(ax, text: str, where: str = "center") -> None:
    """A grey note inside the axes (an empty panel's reason, or the variants left out)."""
    if where == "center":
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.3",
                wrap=True)
    else:
        ax.text(0.02, 0.02, text, ha="left", va="bottom", transform=ax.transAxes, fontsize=6.5, color="0.35")


def note_figure(title: str, text: str):
    """A figure that says why there is nothing to draw (e.g. a grid with only the dense model)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    _note(ax, text)
    return fig


def _nonfinite_note(d: pd.DataFrame, col: str) -> str:
    bad = d[~np.isfinite(d[col].astype(float)) & d[col].notna()]
    if bad.empty:
        return ""
    return "not drawn, perplexity not finite: " + ", ".join(display_name(r) for _, r in bad.iterrows())


def _healing_style(healing: str) -> dict:
    if healing == "none":
        return {"linewidths": 0.5, "edgecolors": "0.15"}
    return {"linewidths": 1.8, "edgecolors": "black", "hatch": HEALING_HATCHES.get(healing, "....")}


def _family_handles(families, colors) -> list:
    return [Line2D([], [], marker="o", linestyle="", markersize=7, color=colors[f], label=f) for f in families]


def _marker_handles(w: pd.DataFrame, quants: bool = True, healings: bool = True) -> list:
    out = []
    if quants and w.quant.nunique() > 1:
        out += [Line2D([], [], marker=QUANT_MARKERS.get(q, "o"), linestyle="", color="0.5", markersize=7,
                       label=QUANT_NAMES.get(q, q)) for q in QUANT_MARKERS if q in set(w.quant)]
    if healings:
        for h in sorted(set(w.healing) - {"none"}):
            out.append(Patch(facecolor="white", edgecolor="black", linewidth=1.5, hatch=HEALING_HATCHES.get(h, "...."),
                             label=f"healed: {h} (thick outline, hatch)"))
    return out


def _interval_handles(w: pd.DataFrame, cols) -> list:
    """A legend entry for the error bars when any of ``cols`` has a recorded 95% interval, else none."""
    if not any(f"{c}_ci95_low" in w.columns and w[f"{c}_ci95_low"].notna().any() for c in cols):
        return []
    return [Line2D([], [], color="0.3", marker="_", markersize=7, linestyle="-", linewidth=0.9,
                   label="error bar: 95% interval")]


def _outside_legend(ax, handles, title: str | None = None, y: float = 1.0, **kw):
    """A legend to the right of ``ax`` (never over the data); several can be stacked with ``y``."""
    leg = Legend(ax, handles, [h.get_label() for h in handles], title=title, fontsize=7, title_fontsize=7,
                 loc="upper left", bbox_to_anchor=(1.02, y), borderaxespad=0.0, frameon=False, **kw)
    ax.add_artist(leg)
    return leg


def _ppl_scatter(ax, d: pd.DataFrame, col: str, colors: dict, x_col: str, x_scale: float, sizes=None,
                 quant_marker: str | None = None, alpha: float = 0.85, gid: str = "points") -> list:
    """Scatter ``d`` (finite ``col`` only) grouped by (family, quant, healing); returns label items."""
    items = []
    d = d[np.isfinite(d[col].astype(float)) & d[x_col].notna()]
    for (fam, quant, healing), g in d.groupby(["family", "quant", "healing"], sort=False):
        s = sizes.loc[g.index].to_numpy() if sizes is not None else np.full(len(g), 45.0)
        lo, hi = f"{col}_ci95_low", f"{col}_ci95_high"
        if lo in g.columns and hi in g.columns and g[lo].notna().any():
            ax.errorbar(g[x_col] * x_scale, g[col], yerr=[(g[col] - g[lo]).clip(lower=0).fillna(0),
                                                         (g[hi] - g[col]).clip(lower=0).fillna(0)],
                        fmt="none", ecolor=colors[fam], elinewidth=0.8, capsize=2, alpha=0.7, zorder=2,
                        gid="intervals")
        ax.scatter(g[x_col] * x_scale, g[col], s=s, color=colors[fam], alpha=alpha, zorder=3, gid=gid,
                   marker=quant_marker or QUANT_MARKERS.get(quant, "o"), **_healing_style(healing))
        for (_, r), si in zip(g.iterrows(), s):
            items.append((r[x_col] * x_scale, r[col], short_label(r), math.sqrt(si) / 2, label_color(colors[fam])))
    return items


def _snug_under_suptitle(fig, gap_pt: float = 8.0) -> None:
    """Move the axes up until what they draw above themselves (panel titles, legends) is ``gap_pt``
    points under the figure title: ``tight_layout`` left an empty band there."""
    st = fig._suptitle
    if st is None or not fig.axes:
        return
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    top = max(ax.get_tightbbox(r).y1 for ax in fig.axes if ax.get_visible())
    room = st.get_window_extent(r).y0 - top - gap_pt * fig.dpi / 72
    if room > 0:
        fig.subplots_adjust(top=fig.subplotpars.top + room / (fig.get_figheight() * fig.dpi))


def _lines_against_sparsity(ax, w: pd.DataFrame, col: str, colors: dict, scale: float = 1.0,
                            spread: tuple[str, str] | None = None, hollow: set | None = None,
                            quants: tuple = ("none",)) -> list:
    """One line per family, healing and quantization over one-shot (``x1``) variants against measured
    sparsity, from the dense model of that quantization at 0; repeated pruning (``xn``) as separate ``X``
    points at its measured sparsity. Returns label items of the repeated points."""
    items = []
    d = w[w.quant.isin(quants) & w[col].notna()]
    d = d[np.isfinite(d[col].astype(float))]
    for q in quants:
        dq = d[d.quant == q]
        dense = dq[dq.method == "dense"]
        ls_q = "-" if q == "none" else "--"
        for (fam, healing), g in dq[dq.method != "dense"].groupby(["family", "healing"], sort=False):
            one = pd.concat([dense, g[g.repeat <= 1]]).sort_values("measured_sparsity")
            ls = ls_q if healing == "none" else ":"
            ax.plot(one.measured_sparsity, one[col] * scale, color=colors[fam], linestyle=ls, linewidth=1.2, zorder=2)
            _points(ax, one, col, scale, colors[fam], QUANT_MARKERS.get(q, "o"), spread, hollow, healing)
            rep = g[g.repeat > 1]
            if not rep.empty:
                _points(ax, rep, col, scale, colors[fam], "X", spread, hollow, healing, size=70)
                items += [(r.measured_sparsity, r[col] * scale, short_label(r), 5.0, label_color(colors[fam]))
                          for _, r in rep.iterrows()]
        if not dense.empty:
            ax.scatter(dense.measured_sparsity, dense[col] * scale, marker="*", s=140, color="black", zorder=5)
            if spread:
                _errorbars(ax, dense, col, scale, "black", spread)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlim(-0.03, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    return items


def _errorbars(ax, d, col, scale, color, spread):
    lo, hi = spread
    if lo in d.columns and hi in d.columns:
        m = d[col] * scale
        ax.errorbar(d.measured_sparsity, m, yerr=[(m - d[lo] * scale).clip(lower=0), (d[hi] * scale - m).clip(lower=0)],
                    fmt="none", ecolor=color, elinewidth=0.9, capsize=2.5, zorder=3)


def _points(ax, d, col, scale, color, marker, spread, hollow, healing, size=36):
    if d.empty:
        return
    if spread:
        _errorbars(ax, d, col, scale, color, spread)
    for _, r in d.iterrows():
        empty = hollow is not None and r.variant in hollow
        ax.scatter([r.measured_sparsity], [r[col] * scale], marker=marker, s=size, zorder=4,
                   facecolor="white" if empty else color, edgecolor=color if empty else "0.15",
                   linewidth=1.2 if empty or healing != "none" else 0.5)


def _line_handles(w, colors, quants=("none",), repeats=True) -> list:
    # the dense model is drawn as a star only: no "dense" colour dot beside its star entry
    handles = _family_handles([f for f in ordered_families(w) if f != "dense"], colors)
    handles.append(Line2D([], [], marker="*", markersize=10, linestyle="", color="black", label="dense (0%)"))
    handles.append(Line2D([], [], color="0.3", linestyle="-", label="one-shot (x1), unquantized"))
    if "nf4-dq" in quants or len(quants) > 1:
        handles += [Line2D([], [], color="0.3", linestyle="--", marker=QUANT_MARKERS.get(q, "o"), markersize=5,
                           label=f"one-shot (x1), {QUANT_NAMES.get(q, q)}") for q in quants if q != "none"]
    if (w.healing != "none").any():
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="healed (dotted)"))
    if repeats and (w.repeat > 1).any():
        handles.append(Line2D([], [], marker="X", markersize=8, linestyle="", color="0.3",
                              label="pruned again (x2, x3...) at its measured sparsity"))
    return handles


SPARSITY_LABEL = "measured sparsity: decoder Linear weights removed or zero (% of dense)"


def _bases(w: pd.DataFrame) -> pd.Series:
    return w.variant.str.replace(r"\+(nf4-dq|nf4|fp4|int8)$", "", regex=True)


def _variant_order(w: pd.DataFrame) -> pd.DataFrame:
    fams = ordered_families(w)
    return w.assign(_f=w.family.map(fams.index), _h=w.healing != "none").sort_values(
        ["_f", "_h", "healing", "measured_sparsity", "repeat"], kind="stable")
