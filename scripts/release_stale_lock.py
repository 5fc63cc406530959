#!/usr/bin/env python3
"""Release the lock that a killed Snakemake run left in this project, so the same command resumes it.

Snakemake locks the project folder while it runs (``.snakemake/locks/``) and removes the lock when it
ends, also on Ctrl-C. A run that is killed outright (SIGKILL, an out-of-memory kill, a lost machine)
leaves the lock behind, and the next run refuses to start ("Directory cannot be locked ... --unlock").
``make run`` / ``make study`` call this first, with the Snakemake arguments they are about to run:

- no lock files: nothing to do;
- a Snakemake process of this machine runs in this folder (a run, or a job a killed run left running):
  the lock is live and left alone (the run that follows then stops with Snakemake's own message);
- otherwise the lock is stale: ``snakemake --unlock`` with the same arguments releases it, and a line
  says so. The interrupted jobs are then redone by the run (``rerun-incomplete`` in profiles/default),
  the finished ones are not.

Only processes of this machine are seen (Linux ``/proc``; elsewhere nothing is done): do not share one
project folder between Snakemake runs on several hosts.

    python scripts/release_stale_lock.py -- --profile profiles/default --configfile config/study-embedded.yaml
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def lock_files(project: Path) -> list[Path]:
    locks = project / ".snakemake" / "locks"
    return sorted(locks.iterdir()) if locks.is_dir() else []


def _ancestors() -> set[int]:
    """This process and its parents (make, the shell of a recipe line), which are not other runs."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def snakemake_processes(project: Path) -> list[int]:
    """PIDs of this machine's processes, other than this one and its parents, with ``project`` as their
    working directory and "snakemake" in their first three arguments: a Snakemake run (``snakemake ...``,
    ``python -m snakemake ...``) or one of its jobs (``python .snakemake/scripts/tmp....py``), which may
    outlive a killed run. Empty where ``/proc`` is absent."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    project, mine = project.resolve(), _ancestors()
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd")).resolve()
        except OSError:
            continue  # ended meanwhile, or not ours to read
        if cwd == project and any(b"snakemake" in a for a in argv[:3]):
            pids.append(int(entry.name))
    return pids


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    project = Path.cwd()
    if not lock_files(project):
        return 0
    live = snakemake_processes(project)
    if live or not Path("/proc").is_dir():
        return 0
    print(f"release_stale_lock: {project}/.snakemake/locks holds a lock and no Snakemake process runs here: "
          "releasing the lock of an interrupted run (snakemake --unlock); its unfinished jobs will be redone",
          file=sys.stderr)
    cmd = [sys.executable, "-m", "snakemake", *args, "--unlock"]
    return subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main())
