"""The tidy aggregate table: one row per (variant, metric), built from metrics JSON files.

Columns: ``model, variant, method, importance, level, ratio, repeat, healing, quant, runtime, evaluation, metric,
dataset, split, preset, value, n, ci95_low, ci95_high, protocol``; ``n``, ``ci95_low`` and ``ci95_high`` give the
95% interval of the row's value and the units it was computed over, on every perplexity row (``n`` = scored
windows, the independent units of :func:`llm_compression.stats.perplexity_interval`), every zero-shot
``acc``/``acc_norm`` row (``n`` = documents scored; Wilson per task, the combined interval on the ``average``
rows) and every paired ratio to the dense model (``n`` = windows); empty where a value has no interval
(counts, sizes, timings: their spread is in the ``_min``/``_max`` rows); ``runtime`` is where the number was measured (``pytorch``, or
``llama.cpp`` for a GGUF variant); ``importance`` is the structured criterion of the pruning
(:attr:`llm_compression.variants.Pruning.importance`), empty for other methods. ``preset`` names the protocol (``sparsegpt``,
``llm-pruner``, ``custom``; ``+cap<N>`` when the token stream was capped; ``lm-eval-0shot`` with the
limit for zero-shot rows), so a pivot on ``(metric, dataset, preset)`` never puts two protocols in one
column; ``protocol`` is a short text (seqlen, windows, scored tokens, join, cap).

Zero-shot records give one row per (task, metric) with ``dataset`` = task, plus ``dataset`` =
``average`` rows for the means over tasks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..io import read_json, write_text_atomic
from ..variants import Pruning

COLUMNS = ["model", "variant", "method", "importance", "level", "ratio", "repeat", "healing", "quant", "runtime",
           "evaluation", "metric", "dataset", "split", "preset", "value", "n", "ci95_low", "ci95_high", "protocol"]
#: metrics left out of the table (kept in the JSON): intermediate sums
EXCLUDED_METRICS = {"nll_sum"}
#: short names of non-fp32 evaluation dtypes in the ``preset`` column
DTYPE_LABELS = {"bfloat16": "bf16", "float16": "fp16"}
#: zero-shot metrics carried into the table, per task and averaged
ZEROSHOT_METRICS = ("acc", "acc_stderr", "acc_ci95_low", "acc_ci95_high", "acc_norm", "acc_norm_stderr",
                    "acc_norm_ci95_low", "acc_norm_ci95_high", "samples", "acc_samples")


def protocol_label(protocol: dict) -> str:
    """Compact protocol text, e.g. ``seqlen=512 windows=8 scored=4088 cap=4096``."""
    if "prompt_tokens" in protocol:  # latency
        return (f"prompt={protocol['prompt_tokens']} new={protocol['new_tokens']} repeats={protocol['repeats']} "
                f"warmup={protocol['warmup']} threads={protocol.get('threads', '')} device={protocol.get('device', '')}")
    if "macs_seqlen" in protocol:  # cost
        return f"macs_seqlen={protocol['macs_seqlen']}"
    if "windows" not in protocol:  # memory, or anything else with a sequence length
        return f"seqlen={protocol['seqlen']}" if "seqlen" in protocol else ""
    cap = protocol.get("limit_tokens")
    dtype = protocol.get("dtype")
    return (f"{protocol.get('preset', '')} seqlen={protocol['seqlen']} windows={protocol['windows']} "
            f"scored={protocol['scored_tokens']} join={protocol.get('join', '')}"
            + (f" cap={cap}" if cap else "") + (f" dtype={dtype}" if dtype not in (None, "float32") else "")).strip()


def preset_label(protocol: dict) -> str:
    """Protocol name for the ``preset`` column, e.g. ``sparsegpt``, ``sparsegpt+cap8192``,
    ``sparsegpt+cap8192+bf16`` (a perplexity computed in bfloat16), ``lm-eval-0shot-limit100``; empty
    for records without a protocol name (cost)."""
    if "harness" in protocol:
        lim = protocol.get("limit")
        return "lm-eval-0shot" + (f"-limit{lim}" if lim else "") + (
            "-offline" if protocol.get("source") == "offline" else "")
    preset = protocol.get("preset", "")
    if preset and protocol.get("capped"):
        preset += f"+cap{protocol.get('limit_tokens')}"
    if preset and protocol.get("dtype") not in (None, "float32"):
        preset += "+" + DTYPE_LABELS.get(protocol["dtype"], protocol["dtype"])
    return preset


def rows_from_record(record: dict) -> list[dict]:
    """Tidy rows of one metrics record (see ``workflow/scripts/evaluate.py`` for its layout)."""
    v = record["variant"]
    proto = record.get("protocol", {})
    base = {
        "model": record["model"],
        **{k: v[k] for k in ("variant", "method", "level", "ratio", "repeat", "healing", "quant")},
        "importance": Pruning(v["method"]).importance or "",
        "runtime": v.get("runtime") or (record.get("runtime") or {}).get("engine") or "pytorch",
        "evaluation": record["evaluation"],
        "dataset": proto.get("dataset", ""),
        "split": proto.get("split", ""),
        "preset": preset_label(proto),
        "protocol": protocol_label(proto),
    }
    if "tasks" in record:  # zero-shot: per task, then the averages
        rows = []
        for task, vals in record["tasks"].items():
            split = (proto.get("tasks", {}).get(task) or {}).get("split", "")
            rows += [{**base, "dataset": task, "split": split, "metric": m, "value": float(vals[m]),
                      **_interval(vals, m, vals.get("samples"))}
                     for m in ZEROSHOT_METRICS if vals.get(m) is not None]
        mets = record["metrics"]
        rows += [{**base, "dataset": "average", "metric": m, "value": float(mets[m]),
                  **_interval(mets, m, mets.get(f"{m}_samples"))}
                 for m in ZEROSHOT_METRICS if mets.get(m) is not None]
        return rows
    windows = len((record.get("windows") or {}).get("nll") or []) or proto.get("windows")
    mets = record["metrics"]
    return [{**base, "metric": k, "value": float(val), **_interval(mets, k, windows)} for k, val in mets.items()
            if k not in EXCLUDED_METRICS and isinstance(val, (int, float)) and not isinstance(val, bool)]


def _interval(values: dict, metric: str, n) -> dict:
    """The ``n``/``ci95_low``/``ci95_high`` cells of ``metric`` when ``values`` holds its interval
    (``<metric>_ci95_low``/``_high``), else none (the cells stay empty)."""
    lo, hi = values.get(f"{metric}_ci95_low"), values.get(f"{metric}_ci95_high")
    if lo is None or hi is None:
        return {}
    return {"n": int(n) if n else None, "ci95_low": float(lo), "ci95_high": float(hi)}


#: metrics of the paired comparison of a variant's perplexity with the dense model's, on the same windows
PAIRED_METRICS = ("ppl_ratio_to_dense", "ppl_ratio_to_dense_ci95_low", "ppl_ratio_to_dense_ci95_high",
                  "ppl_within_noise_of_dense")


def paired_rows(records: dict) -> list[dict]:
    """Rows comparing each perplexity record with the dense model's record of the same evaluation, window by
    window (:func:`llm_compression.stats.paired_perplexity_ratio`): the ratio of perplexities, its 95% interval,
    and ``ppl_within_noise_of_dense`` = 1 when the interval holds 1. Records without per-window NLLs, or whose
    windows differ from the dense model's (count or scored tokens), get none.

    Args:
        records: ``{(model, variant, evaluation): record}``.
    """
    from ..stats import paired_perplexity_ratio

    out = []
    for (model, variant, evaluation), rec in records.items():
        dense = records.get((model, "dense", evaluation))
        if variant == "dense" or dense is None or "perplexity" not in rec.get("metrics", {}):
            continue
        a, b = rec.get("windows") or {}, dense.get("windows") or {}
        if not a.get("nll") or a.get("tokens") != b.get("tokens") or len(a["nll"]) < 2:
            continue
        ratio, lo, hi = paired_perplexity_ratio(a["nll"], b["nll"], a["tokens"])
        template = rows_from_record({**rec, "metrics": {"perplexity": 0.0}})[0]  # the record's identity columns
        for metric, value in zip(PAIRED_METRICS, (ratio, lo, hi, float(lo <= 1.0 <= hi))):
            ci = {"n": len(a["nll"]), "ci95_low": lo, "ci95_high": hi} if metric == "ppl_ratio_to_dense" else {}
            out.append({**template, "metric": metric, "value": value, **ci})
    return out


#: metrics comparing a variant's mean zero-shot accuracy over tasks with the dense model's
ZEROSHOT_PAIRED_METRICS = ("zeroshot_acc_diff_to_dense", "zeroshot_acc_within_noise_of_dense")


def zeroshot_rows(records: dict) -> list[dict]:
    """Rows comparing each zero-shot record's mean accuracy over tasks with the dense model's (same tasks):
    the difference (variant - dense, fraction), its 95% interval ``diff +- sqrt(h_v^2 + h_d^2)`` from the two
    means' interval half-widths (normal approximation; the documents are the same, so the unpaired interval
    is conservative), and ``zeroshot_acc_within_noise_of_dense`` = 1 when the interval holds 0. Records
    without intervals, or whose tasks differ from the dense model's, get none.

    Args:
        records: ``{(model, variant, evaluation): record}``.
    """
    import math

    out = []
    for (model, variant, evaluation), rec in records.items():
        dense = records.get((model, "dense", evaluation))
        if variant == "dense" or dense is None or "tasks" not in rec or set(rec["tasks"]) != set(dense["tasks"]):
            continue
        a, b = rec["metrics"], dense["metrics"]
        if any(m.get(k) is None for m in (a, b) for k in ("acc", "acc_ci95_low", "acc_ci95_high")):
            continue
        half = math.hypot((a["acc_ci95_high"] - a["acc_ci95_low"]) / 2, (b["acc_ci95_high"] - b["acc_ci95_low"]) / 2)
        diff = a["acc"] - b["acc"]
        template = {**rows_from_record(rec)[-1], "dataset": "average", "split": ""}
        out.append({**template, "metric": ZEROSHOT_PAIRED_METRICS[0], "value": diff,
                    "n": a.get("acc_samples"), "ci95_low": diff - half, "ci95_high": diff + half})
        out.append({**template, "metric": ZEROSHOT_PAIRED_METRICS[1], "value": float(abs(diff) <= half),
                    "n": None, "ci95_low": None, "ci95_high": None})
    return out


def build_table(metric_files: list[str | os.PathLike]) -> pd.DataFrame:
    """Read metrics JSON files into the tidy table, sorted by variant and metric.

    Raises:
        ValueError: no files, or two records that claim the same (variant, evaluation).
    """
    if not metric_files:
        raise ValueError("no metrics files to aggregate")
    rows = []
    records = {}
    for f in metric_files:
        rec = read_json(f)
        key = (rec["model"], rec["variant"]["variant"], rec["evaluation"])
        if key in records:
            raise ValueError(f"duplicate metrics record for {key} in {f}")
        records[key] = rec
        rows.extend(rows_from_record(rec))
    rows.extend(paired_rows(records))
    rows.extend(zeroshot_rows(records))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["model", "method", "level", "ratio", "repeat", "healing", "quant", "evaluation", "dataset",
                           "metric"],
                          kind="stable").reset_index(drop=True)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    write_text_atomic(path, df.to_csv(index=False))
