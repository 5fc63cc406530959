"""The tidy aggregate table: one row per (variant, metric), built from metrics JSON files.

Columns: ``model, variant, method, level, ratio, repeat, healing, quant, evaluation, metric,
dataset, split, value, protocol`` where ``protocol`` is a short text (seqlen, windows, scored
tokens, cap) so rows measured under different protocols are never confused.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..io import read_json, write_text_atomic

COLUMNS = ["model", "variant", "method", "level", "ratio", "repeat", "healing", "quant",
           "evaluation", "metric", "dataset", "split", "value", "protocol"]
#: metrics left out of the table (kept in the JSON): intermediate sums
EXCLUDED_METRICS = {"nll_sum"}


def protocol_label(protocol: dict) -> str:
    """Compact protocol text, e.g. ``seqlen=512 windows=8 scored=4088 cap=4096``."""
    if "seqlen" not in protocol:
        return ""
    cap = protocol.get("limit_tokens")
    return (f"{protocol.get('preset', '')} seqlen={protocol['seqlen']} windows={protocol['windows']} "
            f"scored={protocol['scored_tokens']} join={protocol.get('join', '')}"
            + (f" cap={cap}" if cap else "")).strip()


def rows_from_record(record: dict) -> list[dict]:
    """Tidy rows of one metrics record (see ``workflow/scripts/evaluate.py`` for its layout)."""
    v = record["variant"]
    proto = record.get("protocol", {})
    base = {
        "model": record["model"],
        **{k: v[k] for k in ("variant", "method", "level", "ratio", "repeat", "healing", "quant")},
        "evaluation": record["evaluation"],
        "dataset": proto.get("dataset", ""),
        "split": proto.get("split", ""),
        "protocol": protocol_label(proto),
    }
    return [{**base, "metric": k, "value": float(val)} for k, val in record["metrics"].items()
            if k not in EXCLUDED_METRICS and isinstance(val, (int, float)) and not isinstance(val, bool)]


def build_table(metric_files: list[str | os.PathLike]) -> pd.DataFrame:
    """Read metrics JSON files into the tidy table, sorted by variant and metric.

    Raises:
        ValueError: no files, or two records that claim the same (variant, evaluation).
    """
    if not metric_files:
        raise ValueError("no metrics files to aggregate")
    rows = []
    seen = set()
    for f in metric_files:
        rec = read_json(f)
        key = (rec["model"], rec["variant"]["variant"], rec["evaluation"])
        if key in seen:
            raise ValueError(f"duplicate metrics record for {key} in {f}")
        seen.add(key)
        rows.extend(rows_from_record(rec))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["model", "method", "level", "ratio", "repeat", "healing", "quant", "evaluation", "metric"],
                          kind="stable").reset_index(drop=True)


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    write_text_atomic(path, df.to_csv(index=False))
