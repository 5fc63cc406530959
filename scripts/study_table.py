#!/usr/bin/env python
"""Markdown table of a finished run for the docs: one row per pruned/healed model, each measured value
of the unquantized variant next to that of its NF4-DQ twin (``none / nf4``).

    python scripts/study_table.py results/study-embedded/summary.csv > docs/study-embedded/table.md

Columns: model (family, ratio, repeat, healing), measured sparsity (decoder Linear weights removed or
zero), parameters and non-zero parameters (M, unquantized), GMACs of one forward at the cost protocol's
length, perplexity per dataset (unquantized / NF4-DQ), mean zero-shot accuracy over the tasks (%), size on
disk (MB) and decode tokens/s (median), each unquantized / NF4-DQ. Every number is read from the table
(``summary.csv``) the workflow wrote; nothing is computed here but the mean over zero-shot tasks
(:func:`llm_compression.report.plots.wide`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llm_compression.report.plots import ordered_families, display_name, ppl_columns, wide  # noqa: E402


def _num(v, fmt: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if fmt == "ppl":  # 4 significant digits, no exponent: 30.57, 402.7, 4,711, 55,320
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return format(v, fmt)


def paired(a, b, fmt: str) -> str:
    """``a / b`` formatted, ``a`` alone when there is no quantized twin."""
    sa, sb = _num(a, fmt), _num(b, fmt)
    return f"{sa} / {sb}" if sb else sa


def study_table(df: pd.DataFrame) -> str:
    w = wide(df)
    key = ["method", "level", "importance", "ratio", "repeat", "healing"]
    w["_fam"] = w.family.map(ordered_families(w).index)  # the figures' legend order
    w["_healed"] = w.healing != "none"
    base = w[w.quant == "none"].sort_values(["_fam", "level", "_healed", "measured_sparsity", "repeat"], kind="stable")
    quant = w[w.quant != "none"].set_index(key)
    ppl = ppl_columns(w)
    has = set(w.columns)
    hdr = ["model", "sparsity", "params (M)", "non-zero (M)", "GMACs"]
    hdr += [f"{c.removeprefix('ppl_').split('_')[0]} ppl" for c in ppl]
    if "zeroshot_acc" in has:
        hdr.append("zero-shot acc (%)")
    if "disk_bytes" in has:
        hdr.append("on disk (MB)")
    if "decode_tokens_per_second_median" in has:
        hdr.append("decode tok/s")
    lines = ["| " + " | ".join(hdr) + " |", "|---|" + "---:|" * (len(hdr) - 1)]
    for _, r in base.iterrows():
        k = tuple(r[c] for c in key)
        q = quant.loc[k] if k in quant.index else None
        if isinstance(q, pd.DataFrame):
            q = q.iloc[0]
        qv = (lambda c: q[c] if q is not None and c in q.index else None)
        cells = [display_name(r, quant=False), f"{100 * r.measured_sparsity:.1f}%",
                 _num(r.get("parameters", math.nan) / 1e6, ".1f"), _num(r.get("nonzero_parameters", math.nan) / 1e6, ".1f"),
                 _num(r.get("gmacs"), ".1f")]
        cells += [paired(r[c], qv(c), "ppl") for c in ppl]
        if "zeroshot_acc" in has:
            a, b = r.zeroshot_acc, qv("zeroshot_acc")
            cells.append(paired(100 * a, None if b is None else 100 * b, ".1f"))
        if "disk_bytes" in has:
            b = qv("disk_bytes")
            cells.append(paired(r.disk_bytes / 1e6, None if b is None else b / 1e6, ".0f"))
        if "decode_tokens_per_second_median" in has:
            cells.append(paired(r.decode_tokens_per_second_median, qv("decode_tokens_per_second_median"), ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summary", help="summary.csv of a finished run")
    args = ap.parse_args(argv)
    path = Path(args.summary)
    if not path.is_file():
        ap.error(f"{path} is not a file (the summary.csv of a finished run)")
    sys.stdout.write(study_table(pd.read_csv(path, keep_default_na=False, na_values=[""])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
