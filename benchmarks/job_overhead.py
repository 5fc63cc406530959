"""Per-rule job overhead of a finished workflow run: job wall time minus the time of the job's own work.

Every job script calls ``llm_compression.runtime.setup_job``, which writes two lines to the job's log:
when its work starts (seconds after the process started: interpreter start-up, Snakemake's script
preamble and the script's imports) and when it ends (at interpreter exit). Snakemake's ``benchmark:``
file of the same job gives the job's wall time ``s``. Per rule this prints

    jobs | job wall s (sum) | before work s (sum, median) | work s (sum) | after work s (sum) | overhead %

where *before work* is start-up and imports, *work* is everything the job does after ``setup_job``
(model load, prune, evaluation, writing outputs), *after work* is interpreter shutdown and Snakemake's
own bookkeeping inside the benchmarked process, and overhead % = (before + after) / job wall.

Usage (after a run, e.g. ``make run``)::

    .venv/bin/python benchmarks/job_overhead.py [results]          # table as Markdown
    .venv/bin/python benchmarks/job_overhead.py results --csv out.csv

Jobs whose log lacks the timing lines (runs made before they existed) are counted with unknown split.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

_START = re.compile(r"job timing: work starts ([0-9.]+) s after process start")
_END = re.compile(r"job timing: work ends ([0-9.]+) s after process start")


def read_jobs(results: Path) -> list[dict]:
    """One dict per benchmarked job: rule, job (path under the rule), wall, start, end (None if unknown)."""
    jobs = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(results / "benchmarks")
        rule = rel.parts[0]
        with tsv.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue
        wall = float(rows[-1]["s"])
        log = results / "logs" / rel.with_suffix(".log")
        start = end = None
        if log.exists():
            text = log.read_text(errors="replace")
            m1, m2 = _START.findall(text), _END.findall(text)
            start = float(m1[-1]) if m1 else None
            end = float(m2[-1]) if m2 else None
        jobs.append({"rule": rule, "job": str(rel.with_suffix("")), "wall": wall, "start": start, "end": end})
    return jobs


def summarize(jobs: list[dict]) -> list[dict]:
    """Per-rule sums (seconds) and the overhead share; see the module docstring."""
    by_rule = defaultdict(list)
    for j in jobs:
        by_rule[j["rule"]].append(j)
    out = []
    for rule, js in sorted(by_rule.items(), key=lambda kv: -sum(j["wall"] for j in kv[1])):
        known = [j for j in js if j["start"] is not None and j["end"] is not None]
        wall = sum(j["wall"] for j in js)
        row = {"rule": rule, "jobs": len(js), "timed_jobs": len(known), "wall_s": wall}
        if known:
            kwall = sum(j["wall"] for j in known)
            before = [j["start"] for j in known]
            work = sum(j["end"] - j["start"] for j in known)
            after = sum(max(j["wall"] - j["end"], 0.0) for j in known)
            row.update(before_s=sum(before), before_median_s=statistics.median(before), work_s=work,
                       after_s=after, overhead_pct=100.0 * (sum(before) + after) / kwall if kwall else None)
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="?", default="results", help="results folder of a finished run")
    ap.add_argument("--csv", help="also write the per-rule table to this CSV file")
    args = ap.parse_args(argv)
    results = Path(args.results)
    if not (results / "benchmarks").is_dir():
        sys.exit(f"{results}/benchmarks does not exist: run the workflow first (make run)")
    rows = summarize(read_jobs(results))
    cols = ["rule", "jobs", "timed_jobs", "wall_s", "before_s", "before_median_s", "work_s", "after_s", "overhead_pct"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |")
    tot = {k: sum(r.get(k) or 0.0 for r in rows) for k in ("wall_s", "before_s", "after_s")}
    print(f"\nall jobs: {tot['wall_s']:.1f} s of job wall time, {tot['before_s']:.1f} s before work "
          f"(start-up + imports), {tot['after_s']:.1f} s after work")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
