"""The wide table the figures and the summary read: one row per variant (:func:`wide`), the metric each
axis uses (:func:`pick_metric`), measured sparsity, and the timing verdicts against the dense model.
"""

from __future__ import annotations

import math

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..variants import cumulative_ratio  # noqa: E402
from .table import PAIRED_METRICS  # noqa: E402
from .style import family_of  # noqa: E402


ID_COLUMNS = ["model", "variant", "method", "level", "ratio", "repeat", "healing", "quant"]


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
        noise = df[is_zs & (df.metric == "zeroshot_acc_within_noise_of_dense")]
        out["zeroshot_acc_within_noise"] = noise.drop_duplicates("variant").set_index("variant").value
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
