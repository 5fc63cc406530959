"""Figure ``perplexity_vs_ratio``.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..labels import place_labels  # noqa: E402
from ..plotting import SPARSITY_LABEL, _dataset_of, _interval_handles, _line_handles, _lines_against_sparsity, _nonfinite_note, _note, _outside_legend, _panel_title, _set_ppl_scale, note_figure  # noqa: E402
from ..style import family_colors  # noqa: E402
from ..wide import ppl_columns, wide  # noqa: E402


def perplexity_vs_ratio(df: pd.DataFrame):
    """Repeated pruning next to one-shot pruning: perplexity (one panel per dataset; and zero-shot
    accuracy when measured) against the *measured* sparsity (:func:`measured_sparsity`). One-shot
    (``x1``) variants form one line per family from the dense model at 0; a variant pruned again
    (``x2``...) is an ``X`` at the sparsity it reached, so it sits next to the one-shot variant at the same
    cumulative sparsity. Unquantized variants only (the quantization effect has its own figure)."""
    w = wide(df)
    cols = ppl_columns(w) + (["zeroshot_acc"] if "zeroshot_acc" in w.columns else [])
    if not cols:
        return note_figure("perplexity against sparsity", "no perplexity measured in this table")
    colors = family_colors(w.family)
    # at most two panels a row (three in a row made a 2,900-pixel-wide strip); the legend takes the free
    # cell of an odd count, else sits right of the first row
    ncol = min(len(cols), 2)
    nrow = math.ceil(len(cols) / ncol)
    spare = nrow * ncol > len(cols)
    fig, grid = plt.subplots(nrow, ncol, figsize=(6.0 * ncol + (0 if spare else 2.4), 4.6 * nrow), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(cols):]:
        ax.set_axis_off()
    for ax, col in zip(axes, cols):
        items = _lines_against_sparsity(ax, w, col, colors, spread=(f"{col}_ci95_low", f"{col}_ci95_high"))
        d = w[(w.quant == "none") & w[col].notna()]
        if col.startswith("ppl_"):
            _set_ppl_scale(ax, d[col], f"{_dataset_of(df, col)} perplexity")
            ax.set_title(_panel_title(df, col), fontsize=7)
            note = _nonfinite_note(d, col)
        else:
            ax.set_ylabel("zero-shot accuracy, mean over tasks (fraction)")
            top = d[col].max() if len(d) else float("nan")
            # from 0; the top a tenth above the best variant (1 when unknown), so the lines are not pressed flat
            ax.set_ylim(0, min(1.0, math.ceil((top + 0.1) * 10) / 10) if np.isfinite(top) else 1.0)
            note = ""
        if set(d.method) <= {"dense"}:
            note = (note + "\n" if note else "") + "only the dense model: nothing pruned to compare"
        if note:
            _note(ax, note, "bottom")
        ax.set_xlabel(SPARSITY_LABEL, fontsize=8)
        ax._label_items = items
    handles = _line_handles(w, colors) + _interval_handles(w, cols)
    if spare:
        axes[-1].legend(handles, [h.get_label() for h in handles], title="unquantized variants", fontsize=8,
                        title_fontsize=8, loc="center", frameon=False)
    else:
        _outside_legend(axes[ncol - 1], handles, title="unquantized variants")
    fig.suptitle(f"{w.model.iloc[0]}: repeated pruning at its measured sparsity next to one-shot pruning"
                 + ("" if (w.repeat > 1).any() else " (no repeated pruning in this grid)"), fontsize=10)
    fig.tight_layout()
    for ax in axes[:len(cols)]:
        place_labels(ax, ax._label_items)
    return fig
