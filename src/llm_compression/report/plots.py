"""Figures from the tidy table (matplotlib, headless)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

METHOD_COLORS = {"dense": "black", "magnitude": "tab:red", "wanda": "tab:blue", "sparsegpt": "tab:green"}
QUANT_MARKERS = {"none": "o", "nf4": "s", "nf4-dq": "D", "fp4": "^"}


def _save(fig, path: str | os.PathLike) -> None:
    """Save through a temporary file and a rename (the figure format follows the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def perplexity_vs_nonzero(df: pd.DataFrame, out_path: str | os.PathLike) -> None:
    """Perplexity (log scale) against non-zero parameters, one panel per (dataset, preset) protocol;
    colour = pruning method, marker = quantization, label = variant.

    Raises:
        ValueError: the table has no perplexity or no non-zero-parameter rows.
    """
    ppl = df[df.metric == "perplexity"]
    nz = df[df.metric == "nonzero_parameters"][["model", "variant", "value"]].rename(columns={"value": "nonzero"})
    if ppl.empty or nz.empty:
        raise ValueError("the table needs 'perplexity' and 'nonzero_parameters' rows for this plot")
    data = ppl.merge(nz, on=["model", "variant"])
    if "preset" not in data.columns:
        data = data.assign(preset="")
    data = data.fillna({"preset": ""})
    panels = sorted({(r.dataset, r.preset) for r in data.itertuples()})
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (ds, preset) in zip(axes[0], panels):
        d = data[(data.dataset == ds) & (data.preset == preset)]
        for _, r in d.iterrows():
            ax.scatter(r.nonzero / 1e6, r.value, s=60, color=METHOD_COLORS.get(r.method, "tab:gray"),
                       marker=QUANT_MARKERS.get(r.quant, "o"), edgecolor="black", linewidth=0.5, zorder=3)
            ax.annotate(r.variant, (r.nonzero / 1e6, r.value), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("non-zero parameters (millions)")
        ax.set_ylabel(f"{ds} perplexity, {preset or 'protocol'} (log scale)")
        proto = d.protocol.iloc[0] if not d.empty else ""
        ax.set_title(f"{d.model.iloc[0]} on {ds}\n{proto}", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=m) for m, c in METHOD_COLORS.items()
               if m in set(data.method)]
    handles += [plt.Line2D([], [], marker=mk, linestyle="", color="gray", label=f"quant={q}")
                for q, mk in QUANT_MARKERS.items() if q in set(data.quant)]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="best")
    _save(fig, out_path)
