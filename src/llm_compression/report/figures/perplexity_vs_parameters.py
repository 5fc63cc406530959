"""Figure ``perplexity_vs_parameters_<dataset>``: the bubble plot.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ...planning import PER_DATASET  # noqa: E402
from ..labels import place_labels  # noqa: E402
from ..plotting import _dataset_of, _family_handles, _interval_handles, _marker_handles, _nonfinite_note, _note, _outside_legend, _ppl_scatter, _protocol_of, _require, _set_ppl_scale, note_figure  # noqa: E402
from ..style import MAX_BUBBLE_AREA, QUANT_MARKERS, QUANT_NAMES, family_colors, ordered_families  # noqa: E402
from ..wide import _ppl_groups, macs_tokens, wide  # noqa: E402


def size_key_values(gmin: float, gmax: float) -> list[float]:
    """GMACs values for the bubble size key: the smallest and the largest bubble of the plot (one value
    when they are within 5%), and a round value between them when they span more than a factor of 3
    (the round value nearest their midpoint; e.g. 52.9, 77.9 -> [52.9, 77.9]; 77.9, 77.9 -> [77.9];
    5, 80 -> [5, 50, 80])."""
    if gmax <= gmin * 1.05:
        return [gmax]
    mid = []
    if gmax > 3 * gmin:
        inside = [float(t) for t in MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10]).tick_values(gmin, gmax)
                  if gmin * 1.5 < t < gmax / 1.5]
        mid = sorted(inside, key=lambda t: abs(t - (gmin + gmax) / 2))[:1]
    return [gmin] + mid + [gmax]


def perplexity_vs_parameters(df: pd.DataFrame, dataset: str):
    """Bubble plot for one dataset: perplexity against non-zero parameters (M; embeddings included;
    structured pruning removes parameters, unstructured pruning zeroes them), bubble AREA proportional to
    GMACs of one forward (the size key shows the smallest and the largest bubble), colour = method family, one panel per
    quantization scheme (columns) and protocol preset (rows), healed variants outlined and hatched.

    Unstructured zeros are multiplied like any other weight, so every unstructured variant has the dense
    model's GMACs and the same bubble; structured variants shrink.
    """
    w = wide(df)
    name = f"{PER_DATASET}{dataset}"
    cols = [c for c, (ds, _) in _ppl_groups(df).items() if ds == dataset]
    if not cols:
        return note_figure(f"{dataset} perplexity against parameters", f"no {dataset} perplexity in this table")
    _require(w, ["nonzero_parameters"], name)
    colors = family_colors(w.family)
    quants = [q for q in QUANT_MARKERS if q in set(w.quant)] + sorted(set(w.quant) - set(QUANT_MARKERS))
    has_gmacs = "gmacs" in w.columns and w.gmacs.notna().any()
    gmax = float(w.gmacs.max()) if has_gmacs else 1.0
    k = MAX_BUBBLE_AREA / gmax if has_gmacs else None
    sizes = (w.gmacs.fillna(gmax) * k) if has_gmacs else pd.Series(250.0, index=w.index)
    all_vals = [v for c in cols for v in w[c]]
    fig, axes = plt.subplots(len(cols), len(quants), figsize=(6.0 * len(quants) + 2.4, 7.0 * len(cols)),
                             squeeze=False, sharex=True, sharey=True)
    for ri, col in enumerate(cols):
        for ci, q in enumerate(quants):
            ax = axes[ri][ci]
            d = w[(w.quant == q) & w[col].notna()]
            items = _ppl_scatter(ax, d, col, colors, "nonzero_parameters", 1e-6, sizes=sizes,
                                 quant_marker="o", alpha=0.55, gid="bubbles")
            if ci == 0:
                _set_ppl_scale(ax, all_vals, f"{_dataset_of(df, col)} perplexity")
            ax.set_xlabel("non-zero parameters (M)" if ri == len(cols) - 1 else "")
            ax.set_title(QUANT_NAMES.get(q, q) + (f"\n{_protocol_of(df, col)}" if len(cols) > 1 else ""), fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.margins(0.12)
            notes = [n for n in (_nonfinite_note(d, col),) if n]
            if set(d.method) <= {"dense"} and not d.empty:
                notes.append("only the dense model: nothing pruned to compare")
            if d.empty:
                notes.append("no variant")
            if notes:
                _note(ax, "\n".join(notes), "bottom")
            ax._label_items = items
    legend_ax = axes[0][-1]
    leg = _outside_legend(legend_ax, _family_handles(ordered_families(w), colors) + _marker_handles(w, quants=False)
                          + _interval_handles(w, cols),
                          title="method family")
    if has_gmacs:
        key = [plt.scatter([], [], s=v * k, facecolor="none", edgecolor="0.3", label=f"{v:.3g} GMACs")
               for v in size_key_values(float(w.gmacs.min()), gmax)]
        fig.canvas.draw()
        bb = leg.get_window_extent(fig.canvas.get_renderer()).transformed(legend_ax.transAxes.inverted())
        _outside_legend(legend_ax, key, title="bubble area = GMACs", y=bb.y0 - 0.06, labelspacing=2.2,
                        borderpad=1.0, handletextpad=1.6)
    tokens = macs_tokens(df)
    seqlen = f" ({tokens}-token forward)" if tokens else ""
    fig.suptitle(f"{w.model.iloc[0]}: {dataset} perplexity against non-zero parameters; bubble area = GMACs"
                 f"{seqlen}" + (f"\n{_protocol_of(df, cols[0])}" if len(cols) == 1 else ""), fontsize=9)
    caption = ("x: non-zero parameters, embeddings included (structured pruning removes parameters, unstructured "
               "pruning zeroes them). Bubble area is proportional to GMACs of one forward, counted dense: unstructured "
               "zeros are multiplied like any other weight, so unstructured variants share the dense model's GMACs "
               "(equal bubbles); structured variants shrink." if has_gmacs else
               "GMACs not measured: every bubble has the same size.")
    fig.text(0.01, -0.01, caption, fontsize=7, color="0.25", ha="left", va="top", wrap=True)
    fig.tight_layout()
    for row in axes:
        for ax in row:
            place_labels(ax, ax._label_items)
    return fig
