"""Figure ``cost_vs_ratio``.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..plotting import SPARSITY_LABEL, _line_handles, _lines_against_sparsity, _note, _outside_legend  # noqa: E402
from ..style import QUANT_MARKERS, family_colors  # noqa: E402
from ..wide import METRIC_CHOICES, SPREAD_COLUMNS, macs_tokens, pick_metric, timing_verdicts, wide  # noqa: E402


def cost_vs_ratio(df: pd.DataFrame):
    """Compute, memory and speed against measured sparsity (2 x 3 panels, every axis from 0):
    non-zero parameters, GMACs per forward, weight memory, peak forward memory, decode tokens/s and
    prefill latency; unquantized (solid) and quantized (dashed) variants, healed ones left out (they
    have their pruned parent's shapes). Timings are medians with min-max bars over the timed repeats;
    a hollow marker means the variant's range overlaps the dense model's (same quantization), i.e. no
    measurable difference: no speed-up or slow-down is claimed for it (:func:`timing_verdicts`)."""
    w = wide(df)
    w = w[w.healing == "none"]
    quants = tuple(q for q in QUANT_MARKERS if q in set(w.quant))
    colors = family_colors(w.family)
    panels = [("nonzero_parameters", "non-zero parameters (M)", 1e-6)]
    for kind in ("gmacs", "weight_memory", "peak_memory", "tokens_per_second", "latency"):
        c, label = pick_metric(w, kind)
        if kind == "gmacs" and c is not None and (tokens := macs_tokens(df)):
            label = f"GMACs per {tokens}-token forward"
        panels.append((c, label, METRIC_CHOICES[kind][2]))
    fig, axes = plt.subplots(2, 3, figsize=(15.5, 8.6))
    for ax, (col, label, scale) in zip(axes.flat, panels):
        if col is None or col not in w.columns or w[col].isna().all():
            ax.set_axis_off()
            _note(ax, f"{label}\n(not in this table: that evaluation is not enabled)")
            continue
        spread = SPREAD_COLUMNS.get(col)
        hollow = None
        if spread:
            verdicts = timing_verdicts(w, col)
            hollow = {v for v, s in verdicts.items() if s == "within spread"}
            n = {k: sum(1 for s in verdicts.values() if s == k) for k in ("faster", "slower", "within spread")}
            ax.set_title("median; bar = min-max over the timed repeats\n"
                         f"hollow: range overlaps the dense model's (no claim; {n['within spread']} variants); "
                         f"filled: beyond it ({n['faster']} faster, {n['slower']} slower)", fontsize=6.5)
            spread = spread if all(c in w.columns for c in spread) else None
        _lines_against_sparsity(ax, w, col, colors, scale=scale, spread=spread, hollow=hollow, quants=quants)
        # from 0, with 6% headroom so the highest markers (often every variant at the dense value) clear the frame
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1] * 1.06, 1e-9))
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel(SPARSITY_LABEL, fontsize=7)
    _outside_legend(axes[0][-1], _line_handles(w, colors, quants=quants), title="variants (healed ones not drawn)")
    fig.suptitle(f"{w.model.iloc[0] if not w.empty else ''}: compute, memory and speed against measured sparsity "
                 "(axes from 0)", fontsize=10)
    fig.tight_layout()
    return fig
