"""``summary.md``: the readable pivot of the tidy table, one row per variant, with 95% intervals.
"""

from __future__ import annotations

import math

import pandas as pd  # noqa: E402

from ..variants import format_ratio  # noqa: E402
from .style import QUANT_MARKERS  # noqa: E402
from .wide import SPREAD_COLUMNS, pick_metric, ppl_columns, timing_verdicts, wide  # noqa: E402


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
            noise = r.get("zeroshot_acc_within_noise")
            mark = " ≈ dense" if noise is not None and not pd.isna(noise) and noise >= 1 else ""
            n = r.get("zeroshot_acc_n")
            size = f" n={int(n)}" if n is not None and not pd.isna(n) else ""
            return f"{100 * v:.1f}%" + interval(r, col, lambda x: f"{100 * x:.1f}") + size + mark
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
             "over tasks (n = documents scored over the tasks); `≈ dense`: the interval of the difference to the dense "
             "model's mean holds 0"
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
