"""The memory plan checked against a finished run: every job's planned peak beside its measured one.

Each prune, heal, quantize and evaluate job writes ``<its log>.memory.json`` (``llm_compression.memory_plan.
record_job_memory``): the estimate it ran under and the peak resident set of its process (``VmHWM``). This prints,
per stage and mode (in memory / streamed), how many jobs, the measured / planned ratio (min, median, max) and the
jobs outside +-25%, then those jobs one per line.

    .venv/bin/python benchmarks/memory_plan_check.py results
    .venv/bin/python benchmarks/memory_plan_check.py results/study-embedded --all
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TOLERANCE = 0.25


def gather(results: Path) -> list[dict]:
    rows = []
    for f in sorted((results / "logs").rglob("*.log.memory.json")):
        rec = json.loads(f.read_text())
        if not rec.get("measured_peak_rss_bytes"):
            continue
        rel = f.relative_to(results / "logs")
        rows.append({"stage": rel.parts[0], "job": str(rel)[: -len(".log.memory.json")],
                     "mode": "streamed" if rec.get("streamed") else "in memory",
                     "planned_mb": rec["estimate_host_bytes"] / 1e6,
                     "measured_mb": rec["measured_peak_rss_bytes"] / 1e6,
                     "ratio": rec["measured_peak_rss_bytes"] / rec["estimate_host_bytes"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a run's results folder (the config's `results`)")
    ap.add_argument("--all", action="store_true", help="list every job, not only those outside +-25%%")
    a = ap.parse_args()
    rows = gather(a.results)
    if not rows:
        raise SystemExit(f"no *.log.memory.json under {a.results / 'logs'}: run the workflow first")
    print("| stage | mode | jobs | measured / planned: min | median | max | outside +-25% |")
    print("|---|---|---:|---:|---:|---:|---:|")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["stage"], r["mode"]), []).append(r)
    for (stage, mode), rs in sorted(groups.items()):
        ratios = [r["ratio"] for r in rs]
        out = sum(abs(x - 1) > TOLERANCE for x in ratios)
        print(f"| {stage} | {mode} | {len(rs)} | {min(ratios):.2f} | {statistics.median(ratios):.2f} | "
              f"{max(ratios):.2f} | {out} |")
    listed = [r for r in rows if a.all or abs(r["ratio"] - 1) > TOLERANCE]
    if listed:
        print("\n| job | mode | planned (MB) | measured (MB) | measured / planned |\n|---|---|---:|---:|---:|")
        for r in listed:
            print(f"| {r['job']} | {r['mode']} | {r['planned_mb']:,.0f} | {r['measured_mb']:,.0f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
