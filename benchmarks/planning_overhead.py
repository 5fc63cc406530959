"""Planning overhead: ``snakemake -n`` on a completed default run against an empty two-rule workflow.

Issue 15's target: a dry run of the real workflow that finds nothing to do takes at most 1.5x the
dry run of a trivial two-rule workflow on the same machine (both pay Snakemake's own start-up; the
difference is what planning this workflow costs: config validation, grid expansion, the DAG).

Usage (from the repository root, after a completed default run into ``results``)::

    .venv/bin/python benchmarks/planning_overhead.py [--runs 5] [--configfile config.yaml] [--cores 2] [TARGET ...]

``TARGET``s (optional) restrict the dry run to those files, e.g. the metrics files of a run whose
latency jobs were left out; the config is still validated and the whole grid planned.

Prints the median wall time of each, over ``--runs`` runs, and their ratio; exits 1 when the
workflow's dry run does not report "Nothing to be done" (the run is not complete, so the number would
include job planning the target does not intend).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

TRIVIAL = """
rule all:
    input: "b.txt"

rule make:
    input: "a.txt"
    output: "b.txt"
    shell: "cp {input} {output}"
"""


def dry_run(args: list[str], cwd: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([SNAKEMAKE, "-n", *args], cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"snakemake -n failed in {cwd}:\n{out.stderr[-2000:]}")
    return dt, out.stdout + out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--configfile", default=None, help="config of the completed run (default: config.yaml)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--mtime-only", action="store_true",
                    help="judge completeness by file times only (--rerun-triggers mtime), for a run made by an "
                         "earlier version of the code")
    ap.add_argument("targets", nargs="*", help="files to dry-run for (default: the workflow's default target)")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "Snakefile").write_text(TRIVIAL)
        Path(tmp, "a.txt").write_text("a\n")
        Path(tmp, "b.txt").write_text("a\n")
        os.utime(Path(tmp, "b.txt"), None)
        trivial = [dry_run(["--cores", "1"], tmp)[0] for _ in range(a.runs)]

    wf_args = list(a.targets) + ["--cores", str(a.cores)] + (["--rerun-triggers", "mtime"] if a.mtime_only else []) + (["--configfile", a.configfile] if a.configfile else [])
    times, log = [], ""
    for _ in range(a.runs):
        dt, log = dry_run(wf_args, str(ROOT))
        times.append(dt)
    if "Nothing to be done" not in log:
        print(log[-3000:])
        raise SystemExit("the workflow is not complete (no 'Nothing to be done'); finish the run first")
    t_wf, t_tr = statistics.median(times), statistics.median(trivial)
    print(f"snakemake -n, empty two-rule workflow : {t_tr:.2f} s (median of {a.runs}: "
          f"{', '.join(f'{t:.2f}' for t in trivial)})")
    print(f"snakemake -n, completed default run   : {t_wf:.2f} s (median of {a.runs}: "
          f"{', '.join(f'{t:.2f}' for t in times)})")
    print(f"ratio                                 : {t_wf / t_tr:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
