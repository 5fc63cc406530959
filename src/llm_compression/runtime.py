"""Job set-up shared by the workflow scripts: logging to the rule's log file, thread count, seeds."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import time

#: prefix of the two timing lines every job writes to its log (read by benchmarks/job_overhead.py)
TIMING_PREFIX = "job timing:"


def _seconds_since_process_start() -> float:
    """Wall seconds since this process started (interpreter start-up, Snakemake's script preamble and
    imports included).

    On Linux both ends are read relative to boot (``/proc/uptime`` and the start time in clock ticks of
    ``/proc/self/stat``), to 10 ms; psutil's ``create_time`` adds the boot time, which the kernel gives
    in whole seconds, so it can be off by up to a second. Elsewhere psutil is used.
    """
    try:
        with open("/proc/self/stat") as fh:
            stat = fh.read()
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: starttime
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        import psutil

        return time.time() - psutil.Process().create_time()


#: lines of a failed job's traceback repeated on the console (the whole traceback is in the log)
CONSOLE_TAIL_LINES = 12


def report_errors_to_console(log_path: str, console=None, tail: int = CONSOLE_TAIL_LINES) -> None:
    """Install a ``sys.excepthook`` that writes an uncaught exception's traceback to the job's log
    (``sys.stderr`` after :func:`setup_job`) and its last ``tail`` lines to ``console`` (the
    process's original stderr, which Snakemake shows, or a SLURM job's output), so a failed job
    says why on the console and not only "CalledProcessError ... check log file(s)"."""
    import traceback

    console = console or sys.__stderr__

    def hook(exc_type, exc, tb):
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        with contextlib.suppress(Exception):
            sys.stderr.write(text)
            sys.stderr.flush()
        lines = text.rstrip("\n").splitlines()[-tail:]
        with contextlib.suppress(Exception):
            console.write(f"\nllm-compression: job failed ({exc_type.__name__}); last lines, full log {log_path}:\n"
                          + "\n".join("    " + ln for ln in lines) + "\n\n")
            console.flush()

    sys.excepthook = hook


def _log_work_ends() -> None:
    logging.getLogger("llm_compression").info("%s work ends %.3f s after process start", TIMING_PREFIX,
                                              _seconds_since_process_start())


def finish_job() -> None:
    """End a job that has succeeded, at once: log its end (the second timing line), flush and close the
    log and the standard streams, and leave the process with status 0 through ``os._exit``, skipping
    Python's interpreter finalization.

    Finalization only tears down modules, and tearing down the ~3,000 that importing torch and
    transformers loads takes about 1 s per job on a 2-core CPU (measured: 1.1 s after the last
    statement with imports only, 0.2 s with ``os._exit``), on every one of a workflow's 150 to 600 jobs.
    Call it only as the last statement of a job script, once every output is written and closed;
    atexit handlers registered by libraries are skipped (none of the stages leaves a child process or an
    unwritten file behind). A job that raises never reaches it and exits through the normal path,
    with its non-zero status and its traceback in the log and on the console (:func:`setup_job`).
    """
    _log_work_ends()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def setup_job(log_path: str | None, threads: int | None = None, seed: int | None = None) -> logging.Logger:
    """Send Python logging, warnings, stdout and stderr of this job to ``log_path`` (if given), set
    torch's thread count to the job's ``threads`` and seed torch/random when ``seed`` is given.
    An uncaught exception also prints its last lines to the console (:func:`report_errors_to_console`)."""
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        console = sys.stderr
        fh = open(log_path, "w", buffering=1)
        sys.stdout = fh
        sys.stderr = fh
        report_errors_to_console(log_path, console)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    log = logging.getLogger("llm_compression")
    # what the job spent before its own work (interpreter, script preamble, imports) and when its work
    # ended: benchmarks/job_overhead.py subtracts these from the rule's benchmark file
    log.info("%s work starts %.3f s after process start", TIMING_PREFIX, _seconds_since_process_start())
    atexit.register(_log_work_ends)  # a job that fails (or never calls finish_job) still logs its end
    if threads is None and seed is None:
        return log  # CPU-only jobs (aggregate, plots) never import torch
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    if seed is not None:
        import random

        random.seed(seed)
        torch.manual_seed(seed)
    return log


def job_gpu_spread(resources, config: dict) -> dict:
    """``gpus`` and ``device_mb`` for :func:`llm_compression.checkpoint.load_checkpoint` in a heal or evaluate job:
    the job's Snakemake ``gpu`` resource (the memory plan's GPU count; > 1 spreads the model over that many GPUs,
    1 when absent) and the config's ``resources.memory.device_mb`` (MB per GPU; None when unset)."""
    return {"gpus": int(getattr(resources, "gpu", 1) or 1),
            "device_mb": ((config.get("resources") or {}).get("memory") or {}).get("device_mb")}
