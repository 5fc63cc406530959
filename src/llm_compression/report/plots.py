"""Figures from the tidy table (matplotlib, headless). One builder per figure, registered in
:data:`FIGURES`; each returns a :class:`matplotlib.figure.Figure` (:func:`build`) that :func:`draw`
saves. Which evaluations each figure reads is planned in :mod:`llm_compression.planning`
(:data:`~llm_compression.planning.FIGURE_READS`), so the workflow schedules only those metrics.

Conventions shared by every figure:

- one colour per *method family* (:func:`family_of`: dense, magnitude, Wanda, SparseGPT, LLM-Pruner
  block / channel / layer, an N:M level or a non-default structured criterion as a family of its own);
  one marker per quantization scheme (:data:`QUANT_MARKERS`); healed variants carry a thick outline and
  a hatch (:data:`HEALING_HATCHES`);
- *measured sparsity* (:func:`measured_sparsity`) is the fraction of the dense model's prunable decoder
  Linear weights that are removed (structured) or exactly zero (unstructured), read from the cost
  metrics of the artifact, so repeated pruning sits at the sparsity it reached, not at the one asked for;
- perplexity axes are logarithmic when the drawn values span more than a factor 10 (:data:`LOG_SPAN`);
  non-finite perplexities are not drawn but named in a note; cost axes start at 0;
- point labels are placed by a small deterministic repel (:func:`place_labels`): never over or against
  another label (3 pt apart), never outside the axes, off drawn lines when there is room, with a leader
  line when moved away from their point;
- timings are drawn as the median with a min-max bar over the timed repeats; a variant is called
  faster or slower than the dense model only when the two ranges do not overlap (:func:`timing_verdicts`).

Metrics are looked up by name with fallbacks (e.g. memory: peak forward memory if measured, else
weight memory, else bytes on disk); the axis label always names the metric actually used.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.cbook import STEP_LOOKUP_MAP  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, PercentFormatter  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from ..planning import FIGURES as FIGURE_NAMES  # noqa: E402
from ..planning import PER_DATASET, figure_evaluations, figure_names  # noqa: E402,F401  (re-exported)
from ..variants import cumulative_ratio, format_ratio  # noqa: E402
from .table import PAIRED_METRICS  # noqa: E402

#: colour of each method family (:func:`family_of`); families not listed get :data:`EXTRA_COLORS` in order
FAMILY_COLORS = {"dense": "black", "magnitude": "tab:red", "Wanda": "tab:blue", "SparseGPT": "tab:green",
                 "LLM-Pruner block": "tab:purple", "LLM-Pruner channel": "tab:orange",
                 "LLM-Pruner layer": "tab:brown"}
EXTRA_COLORS = ["tab:pink", "tab:olive", "tab:cyan", "tab:gray", "gold", "teal", "navy", "lime", "maroon"]
#: kept for callers that colour by path method
METHOD_COLORS = {"dense": "black", "magnitude": "tab:red", "wanda": "tab:blue", "sparsegpt": "tab:green",
                 "llm-pruner": "tab:purple", "random": "tab:gray"}
QUANT_MARKERS = {"none": "o", "nf4": "s", "nf4-dq": "D", "fp4": "^", "int8": "v",
                 "gguf-f32": "h", "gguf-f16": "p", "gguf-q8_0": "X", "gguf-q4_k_m": "*"}
QUANT_NAMES = {"none": "unquantized", "nf4": "NF4", "nf4-dq": "NF4 + double quant.", "fp4": "FP4", "int8": "int8",
               "gguf-f32": "llama.cpp f32", "gguf-f16": "llama.cpp f16", "gguf-q8_0": "llama.cpp Q8_0",
               "gguf-q4_k_m": "llama.cpp Q4_K_M"}
QUANT_SHORT = {"none": "", "nf4": "NF4", "nf4-dq": "NF4-DQ", "fp4": "FP4", "int8": "int8",
               "gguf-f32": "llama.cpp f32", "gguf-f16": "llama.cpp f16", "gguf-q8_0": "llama.cpp Q8_0",
               "gguf-q4_k_m": "llama.cpp Q4_K_M"}
QUANT_BAR_COLORS = {"none": "tab:blue", "nf4": "tab:cyan", "nf4-dq": "tab:orange", "fp4": "tab:olive",
                    "int8": "tab:pink", "gguf-f32": "tab:gray", "gguf-f16": "tab:green", "gguf-q8_0": "tab:brown",
                    "gguf-q4_k_m": "tab:red"}
LEVEL_MARKERS = {"": "*", "unstructured": "o", "2:4": "s", "4:8": "D", "block": "^", "channel": "v", "layer": "P"}
#: hatch of healed variants per healing name (any other healing: "....")
HEALING_HATCHES = {"lora": "////", "kd": "xxxx"}
#: the default structured criterion (first-order Taylor); other criteria are families of their own
DEFAULT_IMPORTANCE = "element1"
METHOD_NAMES = {"dense": "dense", "magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
ID_COLUMNS = ["model", "variant", "method", "level", "ratio", "repeat", "healing", "quant"]
#: a perplexity axis is logarithmic when max/min of its drawn values exceeds this
LOG_SPAN = 10.0
#: area (points^2) of the largest bubble of a bubble plot; areas are proportional to GMACs
MAX_BUBBLE_AREA = 360.0

#: metric name -> (candidates in order of preference, axis label, scale to display units)
METRIC_CHOICES = {
    "memory": (["peak_memory_bytes", "weight_memory_bytes", "weight_bytes_in_memory", "disk_bytes"], None, 1e-6),
    "weight_memory": (["weight_bytes_in_memory", "weight_memory_bytes", "disk_bytes"], None, 1e-6),
    "peak_memory": (["peak_memory_bytes"], None, 1e-6),
    "gmacs": (["gmacs"], "GMACs per forward", 1.0),
    "tokens_per_second": (["decode_tokens_per_second_median", "decode_tokens_per_second", "tokens_per_second"],
                          "decode tokens/s", 1.0),
    "latency": (["prefill_seconds_median", "prefill_seconds"], "prefill latency (s)", 1.0),
}
MEMORY_LABELS = {"peak_memory_bytes": "peak forward memory (MB)", "weight_memory_bytes": "weight memory (MB)",
                 "weight_bytes_in_memory": "weight memory (MB)", "disk_bytes": "weights on disk (MB)"}
#: timing medians -> their (min, max) columns over the timed repeats
SPREAD_COLUMNS = {
    "decode_tokens_per_second_median": ("decode_tokens_per_second_min", "decode_tokens_per_second_max"),
    "prefill_seconds_median": ("prefill_seconds_min", "prefill_seconds_max"),
}


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


def family_of(method: str, level: str, importance: str = "") -> str:
    """The method family a variant is coloured by: ``dense``, ``magnitude``, ``Wanda``, ``SparseGPT``
    (``SparseGPT 2:4`` for an N:M level), ``LLM-Pruner block`` / ``channel`` / ``layer`` (with the
    criterion appended when it is not the default first-order Taylor ``element1``, e.g.
    ``LLM-Pruner block (random)``)."""
    if method.startswith("llmpruner-") or method == "llm-pruner":
        imp = importance or (method.split("-", 1)[1] if "-" in method else "")
        name = f"LLM-Pruner {level}"
        return name if imp in ("", DEFAULT_IMPORTANCE) else f"{name} ({imp})"
    name = METHOD_NAMES.get(method, method)
    return name if level in ("", "unstructured") else f"{name} {level}"


def family_colors(families) -> dict[str, str]:
    """Colour of each family present: :data:`FAMILY_COLORS`, else the next of :data:`EXTRA_COLORS` in
    sorted order of the remaining names (deterministic for a given table)."""
    out = {f: FAMILY_COLORS[f] for f in families if f in FAMILY_COLORS}
    rest = sorted(f for f in set(families) if f not in FAMILY_COLORS)
    for i, f in enumerate(rest):
        out[f] = EXTRA_COLORS[i % len(EXTRA_COLORS)]
    return out


def label_color(color) -> tuple:
    """The text colour of a point label: its marker's colour darkened to 60%, so a label names the
    family even where markers of two families coincide, and a light colour stays readable."""
    from matplotlib.colors import to_rgb

    return tuple(0.6 * c for c in to_rgb(color))


def _pct(ratio: float) -> str:
    return f"{100 * ratio:.4g}%"


def short_label(r) -> str:
    """Point label that the colour (family) and marker (quantization) complete: ``50%``, ``50% x2``,
    ``25% +lora``, ``dense``."""
    if r["method"] == "dense":
        return "dense"
    text = _pct(float(r["ratio"]))
    if int(r["repeat"]) > 1:
        text += f" x{int(r['repeat'])}"
    if r["healing"] != "none":
        text += f" +{r['healing']}"
    return text


def display_name(r, quant: bool = True) -> str:
    """Readable variant name, e.g. ``SparseGPT 50% x2``, ``LLM-Pruner block 25% +lora, NF4-DQ``."""
    if r["method"] == "dense":
        text = "dense"
    else:
        text = f"{r['family']} {short_label(r)}"
    if quant and r["quant"] != "none":
        text += f", {QUANT_SHORT.get(r['quant'], r['quant'])}"
    return text


def measured_sparsity(w: pd.DataFrame) -> pd.Series:
    """Fraction of the dense model's prunable decoder Linear weights that a variant removed
    (structured pruning: smaller tensors) or holds as exact zeros (unstructured), from its cost metrics:
    ``1 - (prunable_weights - zero_weights) / prunable_weights(dense)``; the dense model's own count is
    the reference (else the largest count in the table). Without those counts: the ``sparsity`` metric,
    else the requested cumulative ratio ``1-(1-r)^n``. A quantized variant takes the value of its
    unquantized twin (same pruning and healing), since NF4 rounds small weights to its exact zero code
    and would otherwise shift it sideways.

    Args:
        w: the wide table (:func:`wide`).

    Returns:
        one value in [0, 1] per row of ``w`` (NaN where nothing is known).
    """
    requested = pd.Series([cumulative_ratio(float(r), max(int(n), 1)) for r, n in zip(w.ratio, w.repeat)],
                          index=w.index, dtype=float)
    frac = pd.Series(np.nan, index=w.index, dtype=float)
    if {"prunable_weights", "zero_weights"} <= set(w.columns):
        dense = w[(w.method == "dense") & (w.quant == "none")].prunable_weights.dropna()
        ref = dense.iloc[0] if not dense.empty else w.prunable_weights.max()
        if ref and not math.isnan(ref):
            frac = 1.0 - (w.prunable_weights - w.zero_weights) / ref
    if "sparsity" in w.columns:
        frac = frac.fillna(w.sparsity)
    frac = frac.fillna(requested)
    key = w.method + "|" + w.level.astype(str) + "|" + w.ratio.astype(str) + "|" + w.repeat.astype(str) + "|" + w.healing
    unq = (w.quant == "none") & frac.notna()
    twin = dict(zip(key[unq], frac[unq]))
    return key.map(twin).astype(float).fillna(frac).clip(lower=0.0)


def wide(df: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: identity columns (``importance`` too when the table has it), one perplexity
    column per (dataset, preset) (see :func:`_ppl_groups`), every other metric under its own name (first
    value if a metric appears under several datasets), ``zeroshot_acc`` (mean ``acc`` over tasks) when
    zero-shot rows exist, and the derived ``family`` (:func:`family_of`) and ``measured_sparsity``
    (:func:`measured_sparsity`)."""
    id_cols = ID_COLUMNS + [c for c in ("importance", "runtime") if c in df.columns]
    ids = df[id_cols].drop_duplicates("variant").set_index("variant")
    out = ids.copy()
    if "importance" not in out.columns:
        out["importance"] = ""
    out["importance"] = out.importance.fillna("").astype(str)
    out["level"] = out.level.fillna("").astype(str)
    ppl = df[df.metric == "perplexity"]
    preset = ppl.preset.fillna("") if "preset" in ppl.columns else pd.Series("", index=ppl.index)
    paired = df[df.metric == "ppl_within_noise_of_dense"]
    paired_preset = paired.preset.fillna("") if "preset" in paired.columns else pd.Series("", index=paired.index)
    for col, (ds, pr) in _ppl_groups(df).items():
        g = ppl[(ppl.dataset == ds) & (preset == pr)].drop_duplicates("variant").set_index("variant")
        out[col] = g.value
        for end in ("ci95_low", "ci95_high"):
            if end in g.columns:
                out[f"{col}_{end}"] = g[end]
        p = paired[(paired.dataset == ds) & (paired_preset == pr)].drop_duplicates("variant").set_index("variant")
        out[f"{col}_within_noise"] = p.value
        r = df[(df.metric == "ppl_ratio_to_dense") & (df.dataset == ds)]
        r = r[r.preset.fillna("") == pr].drop_duplicates("variant").set_index("variant")
        out[f"{col}_ratio_to_dense"] = r.value
    is_zs = df.evaluation.str.startswith("zeroshot")
    rest = df[(df.metric != "perplexity") & ~is_zs & ~df.metric.isin(PAIRED_METRICS)
              & ~df.metric.str.startswith("perplexity_ci95")]
    for metric, g in rest.groupby("metric"):
        out[metric] = g.drop_duplicates("variant").set_index("variant").value
    zs = df[is_zs & (df.metric == "acc")]
    if not zs.empty:
        tasks = zs[~zs.dataset.isin(["average", "avg", "mean", ""])]
        out["zeroshot_acc"] = (tasks if not tasks.empty else zs).groupby("variant").value.mean()
        avg = zs[zs.dataset == "average"].drop_duplicates("variant").set_index("variant")
        for end in ("n", "ci95_low", "ci95_high"):
            if end in avg.columns:
                out[f"zeroshot_acc_{end}"] = avg[end]
    out = out.reset_index()
    out["family"] = [family_of(m, lv, imp) for m, lv, imp in zip(out.method, out.level, out.importance)]
    out["measured_sparsity"] = measured_sparsity(out)
    return out


def pick_metric(w: pd.DataFrame, kind: str) -> tuple[str | None, str]:
    """The first available column among the candidates of ``kind`` and its axis label."""
    cands, label, _ = METRIC_CHOICES[kind]
    for c in cands:
        if c in w.columns and w[c].notna().any():
            return c, (MEMORY_LABELS.get(c, c) if label is None else label)
    return None, f"{kind.replace('_', ' ')} (not measured)"


def macs_tokens(df: pd.DataFrame) -> str | None:
    """The forward length GMACs were counted at (the cost protocol's ``macs_seqlen``), e.g. ``"512"``;
    None when no GMACs are in the (long) table or their protocol does not say. The tidy table carries
    a protocol only as its text (:func:`llm_compression.report.table.protocol_label`), so this reads it
    back from there."""
    cost = df[df.metric == "gmacs"] if "metric" in df.columns else df.iloc[0:0]
    proto = cost.protocol.iloc[0] if not cost.empty and "protocol" in cost.columns else ""
    return _protocol_fields(proto)[1].get("macs_seqlen") if isinstance(proto, str) else None


def _protocol_fields(text: str) -> tuple[list[str], dict[str, str]]:
    """A protocol's compact text (:func:`llm_compression.report.table.protocol_label`) read back: its
    bare words (e.g. the preset name) and its ``key=value`` fields."""
    parts = text.split()
    return [p for p in parts if "=" not in p], dict(p.split("=", 1) for p in parts if "=" in p)


#: suffixes of the wide table's columns that go with a perplexity column (its interval, the paired comparison)
PPL_COMPANIONS = ("_ci95_low", "_ci95_high", "_within_noise", "_ratio_to_dense")


def ppl_columns(w: pd.DataFrame) -> list[str]:
    """The wide table's perplexity columns (``ppl_<dataset>[_<preset>]``), without their companions
    (:data:`PPL_COMPANIONS`)."""
    return sorted(c for c in w.columns if c.startswith("ppl_") and not c.endswith(PPL_COMPANIONS))


#: the words summary.md and the figures use for :func:`timing_verdicts`
VERDICT_WORDS = {"within spread": "no measured difference"}


def summary_markdown(df: pd.DataFrame) -> str:
    """Readable pivot: one row per variant, grouped by method and sorted by ratio.

    Every perplexity and the zero-shot mean carry their 95% interval as ``value [low, high]``; a perplexity
    whose paired ratio to the dense model's (same windows) has an interval holding 1 is marked ``≈ dense``;
    decode speed shows ``median (min-max)`` over the timed repeats and a ``decode vs dense`` column that says
    ``faster``/``slower`` only when the ranges of the variant and the dense model of the same quantization
    and runtime do not overlap (:func:`timing_verdicts`), else ``no measured difference``.
    """
    w = wide(df)
    quant_order = {q: i for i, q in enumerate(QUANT_MARKERS)}
    w = w.assign(_q=w.quant.map(lambda q: quant_order.get(q, len(quant_order))))
    w = w.sort_values(["method", "level", "healing", "ratio", "repeat", "_q"], kind="stable")
    cols = (["variant", "method", "level", "ratio", "repeat", "healing", "quant"]
            + (["runtime"] if "runtime" in w.columns else []) + ppl_columns(w))
    for extra in ["zeroshot_acc", "parameters", "nonzero_parameters", "sparsity", "gmacs"]:
        if extra in w.columns:
            cols.append(extra)
    speed = None
    for kind in ("memory", "tokens_per_second"):
        c, _ = pick_metric(w, kind)
        if c and c not in cols:
            cols.append(c)
            speed = c if kind == "tokens_per_second" else speed
    verdicts = {}
    if speed in SPREAD_COLUMNS:
        verdicts = timing_verdicts(w, speed)
        w["decode vs dense"] = w.variant.map(lambda v: VERDICT_WORDS.get(verdicts.get(v), verdicts.get(v, "")))
        cols.append("decode vs dense")
    if "disk_bytes" in w.columns and "disk_bytes" not in cols:
        cols.append("disk_bytes")

    def interval(r, col, fmt_one):
        lo, hi = r.get(f"{col}_ci95_low"), r.get(f"{col}_ci95_high")
        if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
            return ""
        return f" [{fmt_one(lo)}, {fmt_one(hi)}]"

    def fmt(r, col):
        v = r[col]
        if isinstance(v, float) and math.isnan(v):
            return ""
        scaled = _scaled_unit(col)
        if scaled:
            _, divisor, digits, _ = scaled
            return f"{v / divisor:.{digits}f}"
        if col == "zeroshot_acc":
            return f"{100 * v:.1f}%" + interval(r, col, lambda x: f"{100 * x:.1f}")
        if col == "sparsity":
            return f"{100 * v:.1f}%"
        if col in ppl_columns(w):
            noise = r.get(f"{col}_within_noise")
            mark = " ≈ dense" if noise is not None and not pd.isna(noise) and noise >= 1 else ""
            return f"{v:.4g}" + interval(r, col, lambda x: f"{x:.4g}") + mark
        if col == speed and col in SPREAD_COLUMNS:
            lo, hi = (r.get(c) for c in SPREAD_COLUMNS[col])
            spread = "" if lo is None or pd.isna(lo) else f" ({lo:.3g}-{hi:.3g})"
            return f"{v:.4g}{spread}"
        if isinstance(v, float):
            return f"{v:.4g}" if col != "ratio" else (format_ratio(v) if v else "0")  # the name in paths
        return str(v)

    protocols = sorted({p for p in df.protocol.unique() if p})
    lines = ["# Summary", "", "One row per variant; perplexity columns are `ppl_<dataset>`.", "",
             "Intervals are 95%: `value [low, high]`. Perplexity: t interval over the scored windows; "
             "`≈ dense`: the paired interval of the ratio to the dense model's perplexity (same windows) holds 1, "
             "so the difference is within window-to-window noise. Zero-shot: Wilson interval per task, combined "
             "over tasks" + (f" (n = {int(w.zeroshot_acc_n.dropna().iloc[0])} documents per variant)"
                             if "zeroshot_acc_n" in w.columns and w.zeroshot_acc_n.notna().any() else "")
             + ". Decode speed: median (min-max) over the timed repeats; `decode vs dense`: `faster`/`slower` "
             "only when the ranges of the variant and of the dense model (same quantization and runtime) do not "
             "overlap.", ""]
    if protocols:
        lines += ["Protocols:", ""] + [f"- `{p}`" for p in protocols] + [""]
    lines.append("| " + " | ".join(_markdown_header(c) for c in cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for _, r in w.iterrows():
        lines.append("| " + " | ".join(fmt(r, c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


#: summary.md columns printed scaled, by name suffix: (suffix, divisor, decimals, unit in the header);
#: the cells (:func:`summary_markdown`) and the headers (:func:`_markdown_header`) both read it
_SCALED_UNITS = (("parameters", 1e6, 2, "M"), ("bytes", 1e6, 1, "MB"))


def _scaled_unit(col: str) -> tuple | None:
    """The :data:`_SCALED_UNITS` entry of a summary.md column, or None (printed as it is)."""
    return next((u for u in _SCALED_UNITS if col.endswith(u[0])), None)


def _markdown_header(col: str) -> str:
    """A summary.md column header with the unit its cells are printed in: ``disk_bytes`` -> ``disk (MB)``,
    ``nonzero_parameters`` -> ``nonzero_parameters (M)``; other columns keep their table name."""
    scaled = _scaled_unit(col)
    if scaled is None:
        return col
    suffix, _, _, unit = scaled
    name = col[: -len(suffix) - 1] if suffix == "bytes" and col.endswith("_bytes") else col
    return f"{name} ({unit})"


# --------------------------------------------------------------------------- helpers

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


def ordered_families(w: pd.DataFrame) -> list[str]:
    """The method families present in ``w`` (a table with a ``family`` column), in the order of the
    figures' legends (:data:`FAMILY_COLORS`; families it lacks last, by name)."""
    order = list(FAMILY_COLORS)
    fams = list(dict.fromkeys(w.family))
    return sorted(fams, key=lambda f: (order.index(f) if f in order else len(order), f))


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


# --------------------------------------------------------------------------- label placement

_DIRECTIONS = [(1, 0), (0.7071, 0.7071), (0.7071, -0.7071), (-1, 0), (-0.7071, 0.7071), (-0.7071, -0.7071),
               (0, 1), (0, -1)]
_RADII_PT = [2, 6, 11, 17, 24, 32, 42, 54, 68]
#: least clear space (points) between two placed labels, so two labels never read as one
LABEL_GAP_PT = 3.0


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


#: cost (display px^2) of one line sample (every ``_LINE_STEP_PX``) inside a label's box
LINE_COST_PX2 = 20.0
_LINE_STEP_PX = 2.0


def _line_samples(ax) -> np.ndarray:
    """Points every ``_LINE_STEP_PX`` display pixels along the axes' drawn lines (``[n, 2]``, display
    coordinates; marker-only lines and non-finite points skipped)."""
    out = []
    for line in ax.get_lines():
        if not line.get_visible() or line.get_linestyle() in ("None", "none", "", " "):
            continue
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        style = line.get_drawstyle()
        if style in STEP_LOOKUP_MAP and style != "default":  # a step line: its corners, as drawn
            x, y = STEP_LOOKUP_MAP[style](x, y)
        xy = np.column_stack([x, y])
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy) < 2:
            continue
        d = line.get_transform().transform(xy)
        for a, b in zip(d[:-1], d[1:]):
            n = max(2, int(np.hypot(*(b - a)) / _LINE_STEP_PX) + 1)
            t = np.linspace(0.0, 1.0, n)[:, None]
            out.append(a + t * (b - a))
    return np.concatenate(out) if out else np.empty((0, 2))


def place_labels(ax, items: list[tuple], fontsize: float = 6.5, color: str = "0.1",
                 obstacles: list[tuple[float, float, float]] = (),
                 segments: list[tuple[float, float, float, float]] = (),
                 gap_pt: float = LABEL_GAP_PT, avoid_lines: bool = True) -> list:
    """Label points without overlaps: a deterministic greedy repel.

    Each label tries offsets of growing radius (points) from its marker's edge in eight directions and
    takes the first whose text box lies inside the axes, keeps ``gap_pt`` points clear of every placed
    label (two labels side by side never read as one) and covers no marker and no drawn line; if none
    does, the inside position clear of labels that covers the least marker area and line length; if
    there is none either, the label is left out (never clipped at the frame, never over another label).
    A label moved away from its point gets a thin leader line. Call it last, after the axes' limits,
    scales and layout are final (it works in display coordinates).

    Args:
        items: ``(x, y, text, marker_radius_pt)`` in data coordinates, optionally with a fifth entry,
            that label's colour (else ``color``); non-finite points are skipped.
        obstacles: further markers ``(x, y, radius_pt)`` that labels must not cover.
        segments: error bars ``(x0, y0, x1, y1)`` (data coordinates) that labels should not cover.
        gap_pt: least clear space between two labels (points; a label's box padded by it must not
            touch another's).
        avoid_lines: count the axes' drawn lines (``ax.lines`` with a line style) as obstacles too, so
            a label sits beside a curve rather than across it when there is room.

    Returns:
        the created :class:`matplotlib.text.Annotation` objects.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axbox = ax.get_window_extent(renderer).padded(-2)
    px = fig.dpi / 72.0
    kept = [it for it in items if np.isfinite(it[0]) and np.isfinite(it[1]) and it[2]]
    pts = [tuple(it[:4]) for it in kept]
    colors = [it[4] if len(it) > 4 else color for it in kept]
    if not pts:
        return []
    disp = ax.transData.transform([(x, y) for x, y, _, _ in pts])
    markers = [Bbox.from_bounds(dx - r * px, dy - r * px, 2 * r * px, 2 * r * px)
               for (dx, dy), (_, _, _, r) in zip(disp, pts)]
    for x, y, r in obstacles:
        if np.isfinite(x) and np.isfinite(y):
            dx, dy = ax.transData.transform((x, y))
            markers.append(Bbox.from_bounds(dx - r * px, dy - r * px, 2 * r * px, 2 * r * px))
    for x0, y0, x1, y1 in segments:
        if all(np.isfinite(v) for v in (x0, y0, x1, y1)):
            (a, b), (c, d) = ax.transData.transform([(x0, y0), (x1, y1)])
            markers.append(Bbox.from_extents(min(a, c) - 2, min(b, d) - 2, max(a, c) + 2, max(b, d) + 2))
    line_pts = _line_samples(ax) if avoid_lines else np.empty((0, 2))
    placed: list[Bbox] = []
    gap = gap_pt * px
    out = []
    order = sorted(range(len(pts)), key=lambda i: (disp[i][0], disp[i][1]))
    for i in order:
        x, y, text, rad = pts[i]
        probe = ax.text(0, 0, text, fontsize=fontsize)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        tw, th = ext.width, ext.height
        best = None
        for radius in _RADII_PT:
            for ux, uy in _DIRECTIONS:
                off = (rad + radius) * px
                ox, oy = ux * off, uy * off
                x0 = disp[i][0] + ox + (0 if ux > 0.1 else -tw if ux < -0.1 else -tw / 2)
                y0 = disp[i][1] + oy + (0 if uy > 0.1 else -th if uy < -0.1 else -th / 2)
                box = Bbox.from_bounds(x0, y0, tw, th)
                if not (axbox.x0 <= box.x0 and box.x1 <= axbox.x1 and axbox.y0 <= box.y0 and box.y1 <= axbox.y1):
                    continue
                padded = box.padded(gap)
                if any(_overlap(padded, b) > 0 for b in placed):
                    continue  # never over (or against) another label
                cost = sum(_overlap(box, m) for m in markers)
                if len(line_pts):  # a drawn line through the text: as bad as a small marker per 2 px of it
                    inside = ((line_pts[:, 0] >= box.x0) & (line_pts[:, 0] <= box.x1)
                              & (line_pts[:, 1] >= box.y0) & (line_pts[:, 1] <= box.y1))
                    cost += LINE_COST_PX2 * int(inside.sum())
                if best is None or cost < best[0] - 1e-9:
                    best = (cost, radius, ux, uy, box)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        if best is None:  # no free position inside the axes: left out rather than clipped or overlapping
            continue
        _, radius, ux, uy, box = best
        off = (rad + radius) / 1.0
        ha = "left" if ux > 0.1 else "right" if ux < -0.1 else "center"
        va = "bottom" if uy > 0.1 else "top" if uy < -0.1 else "center"
        arrow = {"arrowstyle": "-", "lw": 0.5, "color": "0.45", "shrinkA": 0, "shrinkB": rad} if radius > 6 else None
        out.append(ax.annotate(text, (x, y), xytext=(ux * off, uy * off), textcoords="offset points", ha=ha, va=va,
                               fontsize=fontsize, color=colors[i], arrowprops=arrow, zorder=6))
        placed.append(box)
    return out


# --------------------------------------------------------------------------- timing spread

def timing_verdicts(w: pd.DataFrame, median_col: str) -> dict[str, str]:
    """Per variant: ``faster`` / ``slower`` than the dense model of the same quantization only when the
    two min-max ranges over the timed repeats do not overlap, else ``within spread`` (no claim); ``no
    spread`` when a range is not recorded, ``no reference`` without a dense model of that quantization.

    Args:
        w: the wide table; ``median_col`` a key of :data:`SPREAD_COLUMNS` (tokens/s: higher is faster;
            seconds: lower is faster).
    """
    lo_col, hi_col = SPREAD_COLUMNS[median_col]
    higher_is_faster = "per_second" in median_col
    out = {}
    for _, r in w.iterrows():
        ref = w[(w.method == "dense") & (w.quant == r.quant)]
        if r.method == "dense" or pd.isna(r.get(median_col)):
            continue
        if ref.empty:
            out[r.variant] = "no reference"
            continue
        ref = ref.iloc[0]
        if lo_col not in w.columns or hi_col not in w.columns or pd.isna(r[lo_col]) or pd.isna(ref[lo_col]):
            out[r.variant] = "no spread"
            continue
        if r[lo_col] > ref[hi_col]:
            out[r.variant] = "faster" if higher_is_faster else "slower"
        elif r[hi_col] < ref[lo_col]:
            out[r.variant] = "slower" if higher_is_faster else "faster"
        else:
            out[r.variant] = "within spread"
    return out


# --------------------------------------------------------------------------- figures

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


def _bases(w: pd.DataFrame) -> pd.Series:
    return w.variant.str.replace(r"\+(nf4-dq|nf4|fp4|int8)$", "", regex=True)


def _variant_order(w: pd.DataFrame) -> pd.DataFrame:
    fams = ordered_families(w)
    return w.assign(_f=w.family.map(fams.index), _h=w.healing != "none").sort_values(
        ["_f", "_h", "healing", "measured_sparsity", "repeat"], kind="stable")


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


#: figure name -> builder (table -> Figure); which figures a run draws, and what each reads, is planned in
#: :mod:`llm_compression.planning` (torch- and matplotlib-free, so the DAG builds without this module)
FIGURES = {
    "perplexity_vs_nonzero": perplexity_vs_nonzero,
    "quantization_effect": quantization_effect,
    "perplexity_vs_ratio": perplexity_vs_ratio,
    "cost_vs_ratio": cost_vs_ratio,
    "pareto": pareto,
}
assert set(FIGURES) == set(FIGURE_NAMES), "planning.FIGURES and plots.FIGURES must name the same figures"


def build(figure: str, df: pd.DataFrame):
    """The :class:`~matplotlib.figure.Figure` of a registered figure from the tidy table (the caller
    closes it; :func:`draw` saves and closes).

    Raises:
        ValueError: unknown figure, or the table lacks the metrics it needs.
    """
    if figure.startswith(PER_DATASET):
        return perplexity_vs_parameters(df, figure[len(PER_DATASET):])
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; valid: {', '.join(FIGURES)}, {PER_DATASET}<dataset>")
    return FIGURES[figure](df)


def draw(figure: str, df: pd.DataFrame, out_path) -> None:
    """Draw a registered figure from the tidy table to ``out_path`` (format from the suffix), written
    atomically.

    Raises:
        ValueError: unknown figure, or the table lacks the metrics it needs.
    """
    save_figure(build(figure, df), out_path)
