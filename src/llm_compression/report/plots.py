"""Figures from the tidy table (matplotlib, headless). One function per figure, registered in
:data:`FIGURES`; :func:`figure_evaluations` says which evaluations each figure reads, so the workflow
schedules only those metrics for a requested figure.

Metrics are looked up by name with fallbacks (e.g. memory: peak forward memory if measured, else
weight memory, else bytes on disk); the axis label always names the metric actually used.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..planning import PER_DATASET, figure_evaluations, figure_names  # noqa: E402,F401  (re-exported)
from ..variants import cumulative_ratio, format_ratio  # noqa: E402

METHOD_COLORS = {"dense": "black", "magnitude": "tab:red", "wanda": "tab:blue", "sparsegpt": "tab:green",
                 "llm-pruner": "tab:purple", "random": "tab:gray"}
QUANT_MARKERS = {"none": "o", "nf4": "s", "nf4-dq": "D", "fp4": "^", "int8": "v"}
LEVEL_MARKERS = {"": "*", "unstructured": "o", "2:4": "s", "4:8": "D", "block": "^", "channel": "v", "layer": "P"}
ID_COLUMNS = ["model", "variant", "method", "level", "ratio", "repeat", "healing", "quant"]

#: metric name -> (candidates in order of preference, axis label, scale to display units)
METRIC_CHOICES = {
    "memory": (["peak_memory_bytes", "weight_memory_bytes", "weight_bytes_in_memory", "disk_bytes"], None, 1e-6),
    "gmacs": (["gmacs"], "GMACs per forward", 1.0),
    "tokens_per_second": (["decode_tokens_per_second_median", "decode_tokens_per_second", "tokens_per_second"],
                          "decode tokens/s", 1.0),
    "latency": (["prefill_seconds_median", "prefill_seconds"], "prefill latency (s)", 1.0),
}
MEMORY_LABELS = {"peak_memory_bytes": "peak forward memory (MB)", "weight_memory_bytes": "weight memory (MB)",
                 "weight_bytes_in_memory": "weight memory (MB)", "disk_bytes": "weights on disk (MB)"}


# --------------------------------------------------------------------------- data shaping

def _ppl_groups(df: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Perplexity column name -> (dataset, preset): ``ppl_<dataset>`` when a dataset was measured under
    one protocol preset, ``ppl_<dataset>_<preset>`` when under several (protocols never share a column)."""
    ppl = df[df.metric == "perplexity"]
    presets = ppl.preset if "preset" in ppl.columns else pd.Series("", index=ppl.index)
    pairs = sorted({(d, p) for d, p in zip(ppl.dataset, presets.fillna(""))})
    out = {}
    for ds, pr in pairs:
        multi = sum(1 for d, _ in pairs if d == ds) > 1
        out[f"ppl_{ds}_{pr}" if multi else f"ppl_{ds}"] = (ds, pr)
    return out


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: identity columns, one perplexity column per (dataset, preset) (see
    :func:`_ppl_groups`), every other metric under its own name (first value if a metric appears under
    several datasets), and ``zeroshot_acc`` (mean ``acc`` over tasks) when zero-shot rows exist."""
    ids = df[ID_COLUMNS].drop_duplicates("variant").set_index("variant")
    out = ids.copy()
    ppl = df[df.metric == "perplexity"]
    preset = ppl.preset.fillna("") if "preset" in ppl.columns else pd.Series("", index=ppl.index)
    for col, (ds, pr) in _ppl_groups(df).items():
        g = ppl[(ppl.dataset == ds) & (preset == pr)]
        out[col] = g.drop_duplicates("variant").set_index("variant").value
    is_zs = df.evaluation.str.startswith("zeroshot")
    rest = df[(df.metric != "perplexity") & ~is_zs]
    for metric, g in rest.groupby("metric"):
        out[metric] = g.drop_duplicates("variant").set_index("variant").value
    zs = df[is_zs & (df.metric == "acc")]
    if not zs.empty:
        tasks = zs[~zs.dataset.isin(["average", "avg", "mean", ""])]
        out["zeroshot_acc"] = (tasks if not tasks.empty else zs).groupby("variant").value.mean()
    return out.reset_index()


def pick_metric(w: pd.DataFrame, kind: str) -> tuple[str | None, str]:
    """The first available column among the candidates of ``kind`` and its axis label."""
    cands, label, _ = METRIC_CHOICES[kind]
    for c in cands:
        if c in w.columns and w[c].notna().any():
            return c, (MEMORY_LABELS.get(c, c) if label is None else label)
    return None, f"{kind} (not measured)"


def ppl_columns(w: pd.DataFrame) -> list[str]:
    return sorted(c for c in w.columns if c.startswith("ppl_"))


def summary_markdown(df: pd.DataFrame) -> str:
    """Readable pivot: one row per variant, grouped by method and sorted by ratio."""
    w = wide(df)
    quant_order = {q: i for i, q in enumerate(QUANT_MARKERS)}
    w = w.assign(_q=w.quant.map(lambda q: quant_order.get(q, len(quant_order))))
    w = w.sort_values(["method", "level", "healing", "ratio", "repeat", "_q"], kind="stable")
    cols = ["variant", "method", "level", "ratio", "repeat", "healing", "quant"] + ppl_columns(w)
    for extra in ["zeroshot_acc", "parameters", "nonzero_parameters", "sparsity", "gmacs"]:
        if extra in w.columns:
            cols.append(extra)
    for kind in ("memory", "tokens_per_second"):
        c, _ = pick_metric(w, kind)
        if c and c not in cols:
            cols.append(c)
    if "disk_bytes" in w.columns and "disk_bytes" not in cols:
        cols.append("disk_bytes")

    def fmt(v, col):
        if isinstance(v, float) and math.isnan(v):
            return ""
        if col.endswith("parameters"):
            return f"{v / 1e6:.2f} M"
        if col.endswith("bytes"):
            return f"{v / 1e6:.1f} MB"
        if col in ("sparsity", "zeroshot_acc"):
            return f"{100 * v:.1f}%"
        if isinstance(v, float):
            return f"{v:.4g}" if col != "ratio" else (format_ratio(v) if v else "0")  # the name in paths
        return str(v)

    protocols = sorted({p for p in df.protocol.unique() if p})
    lines = ["# Summary", "", "One row per variant; perplexity columns are `ppl_<dataset>`.", ""]
    if protocols:
        lines += ["Protocols:", ""] + [f"- `{p}`" for p in protocols] + [""]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, r in w.iterrows():
        lines.append("| " + " | ".join(fmt(r[c], c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- helpers

def _save(fig, path: str | os.PathLike) -> None:
    """Save through a temporary file and a rename (the format follows the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _legend(ax, w: pd.DataFrame, by_level: bool = False, by_quant: bool = False, extra=()) -> None:
    handles = list(extra) + [plt.Line2D([], [], marker="o", linestyle="", color=c, label=m)
               for m, c in METHOD_COLORS.items() if m in set(w.method)]
    if by_level:
        handles += [plt.Line2D([], [], marker=mk, linestyle="", color="gray", label=f"level={lv or 'dense'}")
                    for lv, mk in LEVEL_MARKERS.items() if lv in set(w.level)]
    if by_quant:
        handles += [plt.Line2D([], [], marker=mk, linestyle="", color="gray", label=f"quant={q}")
                    for q, mk in QUANT_MARKERS.items() if q in set(w.quant)]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best")


def _log_if_wide(ax, values) -> None:
    v = [x for x in values if x and x > 0 and not math.isnan(x)]
    if v and max(v) / min(v) > 10:
        ax.set_yscale("log")


def _protocol_of(df: pd.DataFrame, col: str) -> str:
    """Protocol text of a perplexity column of :func:`wide` (preset and window/cap details)."""
    ds, pr = _ppl_groups(df).get(col, (col[4:], ""))
    rows = df[(df.metric == "perplexity") & (df.dataset == ds)]
    if "preset" in rows.columns and pr:
        rows = rows[rows.preset.fillna("") == pr]
    return rows.protocol.iloc[0] if not rows.empty else ""


def _dataset_of(df: pd.DataFrame, col: str) -> str:
    ds, pr = _ppl_groups(df).get(col, (col[4:], ""))
    return f"{ds} ({pr})" if pr else ds


def _require(w: pd.DataFrame, cols: list[str], figure: str) -> None:
    missing = [c for c in cols if c not in w.columns]
    if missing:
        raise ValueError(f"figure {figure!r} needs metrics {missing}; the table has {sorted(w.columns)}")


def _cumulative_ratio(r) -> float:
    """Cumulative sparsity of a table row's pruning (repeat 0 = dense counts as one step at ratio 0)."""
    return cumulative_ratio(float(r["ratio"]), max(int(r["repeat"]), 1))


# --------------------------------------------------------------------------- figures

def perplexity_vs_nonzero(df: pd.DataFrame, out_path) -> None:
    """Perplexity (log scale) against non-zero parameters, one panel per dataset; colour = method,
    marker = quantization, each point labelled with its variant."""
    w = wide(df)
    _require(w, ["nonzero_parameters"], "perplexity_vs_nonzero")
    datasets = ppl_columns(w)
    if not datasets:
        raise ValueError("figure 'perplexity_vs_nonzero' needs perplexity rows")
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 4.6), squeeze=False)
    for ax, col in zip(axes[0], datasets):
        d = w[w[col].notna()]
        for _, r in d.iterrows():
            ax.scatter(r.nonzero_parameters / 1e6, r[col], s=60, color=METHOD_COLORS.get(r.method, "tab:gray"),
                       marker=QUANT_MARKERS.get(r.quant, "o"), edgecolor="black", linewidth=0.5, zorder=3)
            ax.annotate(r.variant, (r.nonzero_parameters / 1e6, r[col]), fontsize=6, xytext=(4, 3),
                        textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("non-zero parameters (millions)")
        ax.set_ylabel(f"{_dataset_of(df, col)} perplexity (log scale)")
        ax.set_title(f"{d.model.iloc[0]}: {_dataset_of(df, col)}\n{_protocol_of(df, col)}", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    _legend(axes[0][-1], w, by_quant=True)
    _save(fig, out_path)


def perplexity_vs_parameters(df: pd.DataFrame, out_path, dataset: str) -> None:
    """Perplexity on ``dataset`` (one panel per protocol preset) against non-zero parameters; bubble
    area proportional to GMACs when measured, else to memory; colour = method, marker = level."""
    w = wide(df)
    cols = [c for c, (ds, _) in _ppl_groups(df).items() if ds == dataset]
    _require(w, cols + ["nonzero_parameters"], f"perplexity_vs_parameters_{dataset}")
    if not cols:
        raise ValueError(f"figure 'perplexity_vs_parameters_{dataset}' needs {dataset} perplexity rows")
    size_col, size_label = pick_metric(w, "gmacs")
    if size_col is None:
        size_col, size_label = pick_metric(w, "memory")
    fig, axes = plt.subplots(1, len(cols), figsize=(7.5 * len(cols), 5), squeeze=False)
    for ax, col in zip(axes[0], cols):
        d = w[w[col].notna()]
        smax = d[size_col].max() if size_col else None
        for _, r in d.iterrows():
            s = 40 + 600 * (r[size_col] / smax) if size_col and smax else 80
            ax.scatter(r.nonzero_parameters / 1e6, r[col], s=s, alpha=0.6, color=METHOD_COLORS.get(r.method, "tab:gray"),
                       marker=LEVEL_MARKERS.get(r.level, "o"), edgecolor="black", linewidth=0.5)
            ax.annotate(r.variant, (r.nonzero_parameters / 1e6, r[col]), fontsize=6, xytext=(5, 3),
                        textcoords="offset points")
        _log_if_wide(ax, d[col])
        ax.set_xlabel("non-zero parameters (millions)")
        ax.set_ylabel(f"{_dataset_of(df, col)} perplexity" + (" (log scale)" if ax.get_yscale() == "log" else ""))
        ax.set_title(f"{w.model.iloc[0]}: perplexity vs size; bubble area ~ {size_label}\n"
                     f"{_protocol_of(df, col)}", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    _legend(axes[0][-1], w, by_level=True)
    _save(fig, out_path)


def quantization_effect(df: pd.DataFrame, out_path) -> None:
    """Each pruned/healed variant with and without quantization: perplexity (left, one group of bars
    per variant and dataset) and memory (right)."""
    w = wide(df)
    cols = ppl_columns(w)
    mem_col, mem_label = pick_metric(w, "memory")
    if not cols or mem_col is None:
        raise ValueError("figure 'quantization_effect' needs perplexity and a memory/bytes metric")
    w = w.assign(base=w.variant.str.replace(r"\+(nf4-dq|nf4|fp4|int8)$", "", regex=True))
    bases = list(dict.fromkeys(w.base))
    quants = [q for q in QUANT_MARKERS if q in set(w.quant)]
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.6 * len(bases) * len(cols) + 4), 4.8))
    width = 0.8 / max(len(quants), 1)
    for qi, q in enumerate(quants):
        for ci, col in enumerate(cols):
            xs, ys = [], []
            for bi, b in enumerate(bases):
                v = w[(w.base == b) & (w.quant == q)][col]
                if not v.empty and pd.notna(v.iloc[0]):
                    xs.append(bi * len(cols) + ci + qi * width)
                    ys.append(v.iloc[0])
            axes[0].bar(xs, ys, width=width, label=f"{_dataset_of(df, col)} / quant={q}", alpha=0.85,
                        color=plt.cm.tab20(2 * ci + (qi % 2)), edgecolor="black", linewidth=0.3)
        xs, ys = [], []
        for bi, b in enumerate(bases):
            v = w[(w.base == b) & (w.quant == q)][mem_col]
            if not v.empty and pd.notna(v.iloc[0]):
                xs.append(bi + qi * width)
                ys.append(v.iloc[0] / 1e6)
        axes[1].bar(xs, ys, width=width, label=f"quant={q}", alpha=0.85, edgecolor="black", linewidth=0.3)
    axes[0].set_xticks([bi * len(cols) + (len(cols) - 1) / 2 + (len(quants) - 1) * width / 2 for bi in range(len(bases))])
    axes[0].set_xticklabels(bases, rotation=30, ha="right", fontsize=7)
    _log_if_wide(axes[0], [x for c in cols for x in w[c]])
    axes[0].set_ylabel("perplexity")
    axes[0].set_title("perplexity with and without quantization", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set_xticks([bi + (len(quants) - 1) * width / 2 for bi in range(len(bases))])
    axes[1].set_xticklabels(bases, rotation=30, ha="right", fontsize=7)
    axes[1].set_ylabel(mem_label)
    axes[1].set_title(f"{mem_label} with and without quantization", fontsize=9)
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, axis="y", which="both", alpha=0.3)
    _save(fig, out_path)


def _lines_against_ratio(ax, w: pd.DataFrame, col: str) -> None:
    """One line per method/level/healing (repeat 1) starting at the dense model (ratio 0), and
    repeated pruning as dashed lines at the cumulative ratio 1-(1-r)^n."""
    d = w[(w.quant == "none") & w[col].notna()]
    dense = d[d.method == "dense"]
    start = ([0.0], [dense[col].iloc[0]]) if not dense.empty else ([], [])
    for (method, level, healing), g in d[d.method != "dense"].groupby(["method", "level", "healing"]):
        color = METHOD_COLORS.get(method, None)
        one = g[g.repeat <= 1].sort_values("ratio")
        label = f"{method} {level}" + (f" +{healing}" if healing != "none" else "")
        ax.plot(start[0] + list(one.ratio), start[1] + list(one[col]), marker=LEVEL_MARKERS.get(level, "o"),
                color=color, label=label, linestyle="-" if healing == "none" else ":")
        rep = g[g.repeat > 1]
        if not rep.empty:
            xs = [_cumulative_ratio(r) for _, r in rep.iterrows()]
            ax.plot(sorted(xs), rep.assign(x=xs).sort_values("x")[col], marker="x", linestyle="--", color=color,
                    label=f"{label} repeated (at 1-(1-r)^n)")
    if not dense.empty:
        ax.scatter([0.0], [dense[col].iloc[0]], marker="*", s=120, color="black", zorder=4, label="dense (ratio 0)")
    ax.grid(True, which="both", alpha=0.3)


def perplexity_vs_ratio(df: pd.DataFrame, out_path) -> None:
    """Perplexity (and zero-shot accuracy when measured) against the pruning ratio, one line per
    method/level; repeated pruning is placed at its cumulative ratio next to one-shot pruning."""
    w = wide(df)
    cols = ppl_columns(w) + (["zeroshot_acc"] if "zeroshot_acc" in w.columns else [])
    if not cols:
        raise ValueError("figure 'perplexity_vs_ratio' needs perplexity rows")
    fig, axes = plt.subplots(1, len(cols), figsize=(6 * len(cols), 4.6), squeeze=False)
    for ax, col in zip(axes[0], cols):
        _lines_against_ratio(ax, w, col)
        if col.startswith("ppl_"):
            _log_if_wide(ax, w[col])
            ax.set_ylabel(f"{_dataset_of(df, col)} perplexity" + (" (log)" if ax.get_yscale() == "log" else ""))
            ax.set_title(_protocol_of(df, col), fontsize=8)
        else:
            ax.set_ylabel("zero-shot accuracy (mean over tasks)")
        ax.set_xlabel("pruning ratio (repeats at cumulative ratio)")
    axes[0][-1].legend(fontsize=7)
    _save(fig, out_path)


def cost_vs_ratio(df: pd.DataFrame, out_path) -> None:
    """Parameters, GMACs, memory and tokens/s against the pruning ratio (2x2 panels); a panel whose
    metric was not measured says so."""
    w = wide(df)
    panels = [("nonzero_parameters", "non-zero parameters (M)", 1e-6)]
    for kind in ("gmacs", "memory", "tokens_per_second"):
        c, label = pick_metric(w, kind)
        panels.append((c, label, METRIC_CHOICES[kind][2]))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (col, label, scale) in zip(axes.flat, panels):
        if col is None or col not in w.columns:
            ax.text(0.5, 0.5, f"{label}", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        _lines_against_ratio(ax, w.assign(**{col: w[col] * scale}), col)
        ax.set_ylabel(label)
        ax.set_xlabel("pruning ratio")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{w.model.iloc[0]}: cost against pruning ratio (unquantized variants)", fontsize=10)
    _save(fig, out_path)


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


def pareto(df: pd.DataFrame, out_path) -> None:
    """Quality (perplexity of the first dataset) against memory, and against latency when measured,
    over all variants; the Pareto front is drawn and its variants named."""
    w = wide(df)
    cols = ppl_columns(w)
    mem_col, mem_label = pick_metric(w, "memory")
    if not cols or mem_col is None:
        raise ValueError("figure 'pareto' needs perplexity and a memory/bytes metric")
    col = next((c for c in cols if c.startswith("ppl_ptb")), cols[0])
    lat_col, lat_label = pick_metric(w, "latency")
    axes_spec = [(mem_col, mem_label, 1e-6)] + ([(lat_col, lat_label, 1.0)] if lat_col else [])
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(7 * len(axes_spec), 5), squeeze=False)
    for ax, (xc, xl, scale) in zip(axes[0], axes_spec):
        d = w[w[col].notna() & w[xc].notna()]
        pts = [(r[xc] * scale, r[col], r.variant) for _, r in d.iterrows()]
        for _, r in d.iterrows():
            ax.scatter(r[xc] * scale, r[col], color=METHOD_COLORS.get(r.method, "tab:gray"),
                       marker=QUANT_MARKERS.get(r.quant, "o"), s=50, edgecolor="black", linewidth=0.4, zorder=3)
        front = pareto_front(pts)
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:orange", linewidth=1.5,
                label="Pareto front", zorder=2)
        for x, y, lab in front:
            ax.annotate(lab, (x, y), fontsize=7, xytext=(5, 4), textcoords="offset points", color="tab:orange")
        _log_if_wide(ax, d[col])
        ax.set_xlabel(xl)
        ax.set_ylabel(f"{_dataset_of(df, col)} perplexity (lower is better)")
        ax.set_title(_protocol_of(df, col), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    front_handle = plt.Line2D([], [], color="tab:orange", label="Pareto front (named)")
    _legend(axes[0][0], w, by_quant=True, extra=[front_handle])
    _save(fig, out_path)


#: figure name -> drawing function; which figures a run draws, and what each reads, is planned in
#: :mod:`llm_compression.planning` (torch- and matplotlib-free, so the DAG builds without this module)
FIGURES = {
    "perplexity_vs_nonzero": perplexity_vs_nonzero,
    "quantization_effect": quantization_effect,
    "perplexity_vs_ratio": perplexity_vs_ratio,
    "cost_vs_ratio": cost_vs_ratio,
    "pareto": pareto,
}
def draw(figure: str, df: pd.DataFrame, out_path) -> None:
    """Draw a registered figure from the tidy table to ``out_path`` (format from the suffix).

    Raises:
        ValueError: unknown figure, or the table lacks the metrics it needs.
    """
    if figure.startswith(PER_DATASET):
        return perplexity_vs_parameters(df, out_path, figure[len(PER_DATASET):])
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; valid: {', '.join(FIGURES)}, {PER_DATASET}<dataset>")
    return FIGURES[figure](df, out_path)
