"""Figure ``perplexity_vs_nonzero``.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..labels import place_labels  # noqa: E402
from ..plotting import _dataset_of, _family_handles, _interval_handles, _marker_handles, _nonfinite_note, _note, _outside_legend, _panel_title, _ppl_scatter, _require, _set_ppl_scale, note_figure  # noqa: E402
from ..style import family_colors, ordered_families  # noqa: E402
from ..wide import ppl_columns, wide  # noqa: E402


def perplexity_vs_nonzero(df: pd.DataFrame):
    """Perplexity against non-zero parameters, one panel per dataset; colour = method family, marker =
    quantization, healed variants outlined and hatched, each point labelled (ratio, repeats, healing)."""
    w = wide(df)
    _require(w, ["nonzero_parameters"], "perplexity_vs_nonzero")
    cols = ppl_columns(w)
    if not cols:
        return note_figure("perplexity vs non-zero parameters", "no perplexity measured in this table")
    colors = family_colors(w.family)
    # every point is labelled: a grid of many variants gets taller panels (up to 9 in), so labels find room
    height = 5.0 + min(4.0, max(0, len(w) - 30) / 15)
    fig, axes = plt.subplots(1, len(cols), figsize=(6.8 * len(cols), height), squeeze=False)
    for ax, col in zip(axes[0], cols):
        d = w[w[col].notna()]
        items = _ppl_scatter(ax, d, col, colors, "nonzero_parameters", 1e-6)
        _set_ppl_scale(ax, d[col], f"{_dataset_of(df, col)} perplexity")
        ax.set_xlabel("non-zero parameters (M)")
        ax.set_title(_panel_title(df, col), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(0.08)
        note = _nonfinite_note(d, col)
        if note:
            _note(ax, note, "bottom")
        ax._label_items = items
    _outside_legend(axes[0][-1], _family_handles(ordered_families(w), colors) + _marker_handles(w)
                    + _interval_handles(w, cols), title="method family / marker")
    fig.suptitle(f"{w.model.iloc[0]}: perplexity against non-zero parameters (embeddings included)", fontsize=10)
    fig.tight_layout()
    for ax in axes[0]:
        place_labels(ax, ax._label_items)
    return fig
