"""Figure ``quantization_effect``.
"""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..plotting import _bases, _dataset_of, _interval_handles, _log_ticks, _nonfinite_note, _outside_legend, _protocol_of, _snug_under_suptitle, _variant_order, note_figure, wants_log  # noqa: E402
from ..style import QUANT_BAR_COLORS, QUANT_MARKERS, QUANT_NAMES, display_name  # noqa: E402
from ..wide import METRIC_CHOICES, pick_metric, ppl_columns, wide  # noqa: E402


def quantization_effect(df: pd.DataFrame):
    """Each variant (pruning + healing) with and without quantization, side by side: one column of
    horizontal bars per perplexity dataset, then weight memory and peak forward memory (MB, axes from 0)
    when measured. Variants run down the shared y axis; the legend sits outside the bars."""
    w = wide(df)
    cols = ppl_columns(w)
    if not cols:
        return note_figure("quantization effect", "no perplexity measured in this table")
    w = _variant_order(w.assign(base=_bases(w)))
    bases = list(dict.fromkeys(w.base))
    quants = [q for q in QUANT_MARKERS if q in set(w.quant)] + sorted(set(w.quant) - set(QUANT_MARKERS))
    mem_panels = []
    for kind in ("weight_memory", "peak_memory"):
        c, label = pick_metric(w, kind)
        if c and c not in [m[0] for m in mem_panels]:
            mem_panels.append((c, label, METRIC_CHOICES[kind][2]))
    panels = [(c, f"{_dataset_of(df, c)} perplexity", 1.0) for c in cols] + mem_panels
    names = {b: display_name(w[w.base == b].iloc[0], quant=False) for b in bases}
    height = max(3.4, 0.19 * len(bases) * max(len(quants), 1) + 1.6)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 2.6, height), squeeze=False, sharey=True)
    bar_h = 0.8 / max(len(quants), 1)
    for ax, (col, label, scale) in zip(axes[0], panels):
        # a log-scale perplexity bar starts at 1 (the least perplexity there is), so its length is the
        # cross-entropy log(ppl) and two lengths compare as losses; from the axis edge they would not
        vals = list(w[col]) if col.startswith("ppl_") else []
        log_ppl = bool(vals) and wants_log(vals)
        for qi, q in enumerate(quants):
            ys, xs, err = [], [], [[], []]
            for bi, b in enumerate(bases):
                row = w[(w.base == b) & (w.quant == q)]
                v = row[col]
                if not v.empty and pd.notna(v.iloc[0]) and np.isfinite(v.iloc[0]):
                    ys.append(bi + (qi - (len(quants) - 1) / 2) * bar_h)
                    xs.append(v.iloc[0] * scale)
                    lo, hi = (row[f"{col}_{e}"].iloc[0] if f"{col}_{e}" in row.columns else np.nan
                              for e in ("ci95_low", "ci95_high"))
                    err[0].append(max(0.0, xs[-1] - lo * scale) if pd.notna(lo) else 0.0)
                    err[1].append(max(0.0, hi * scale - xs[-1]) if pd.notna(hi) else 0.0)
            ax.barh(ys, [x - 1 for x in xs] if log_ppl else xs, left=1 if log_ppl else 0, height=bar_h * 0.95,
                    color=QUANT_BAR_COLORS.get(q, "0.5"), edgecolor="black", linewidth=0.3, label=QUANT_NAMES.get(q, q))
            if any(err[0]) or any(err[1]):  # the 95% interval of each perplexity
                ax.errorbar(xs, ys, xerr=err, fmt="none", ecolor="0.15", elinewidth=0.7, capsize=1.5, zorder=3,
                            gid="intervals")
        if col.startswith("ppl_"):
            if log_ppl:
                ax.set_xscale("log")
                ax.set_xlim(left=1)
                _log_ticks(ax.xaxis, [1.0] + vals)
                label += " (log scale, bars from 1)"
            ax.set_title(textwrap.fill(_protocol_of(df, col), 34), fontsize=6.5)
        else:
            ax.set_xlim(left=0)
        ax.set_xlabel(label, fontsize=8)
        ax.set_axisbelow(True)  # grid lines behind the bars, not through them
        ax.grid(True, axis="x", which="both", alpha=0.3)
    axes[0][0].set_yticks(range(len(bases)))
    axes[0][0].set_yticklabels([names[b] for b in bases], fontsize=7)
    axes[0][0].set_ylim(len(bases) - 0.5, -0.5)
    handles = [Patch(facecolor=QUANT_BAR_COLORS.get(q, "0.5"), edgecolor="black", linewidth=0.3,
                     label=QUANT_NAMES.get(q, q)) for q in quants] + _interval_handles(w, cols)
    _outside_legend(axes[0][-1], handles, title="quantization")
    bad = sorted({n for c in cols for n in [_nonfinite_note(w[w[c].notna()], c)] if n})
    fig.suptitle(f"{w.model.iloc[0]}: each variant with and without quantization"
                 + ("" if len(quants) > 1 else " (no quantized variant in this grid)")
                 + "".join(f"\n{n}" for n in bad), fontsize=10, y=1 - 0.06 / height, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.12 + 0.18 * len(bad)) / height))
    _snug_under_suptitle(fig)
    return fig
