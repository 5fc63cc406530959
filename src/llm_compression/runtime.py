"""Job set-up shared by the workflow scripts: logging to the rule's log file, thread count, seeds."""

from __future__ import annotations

import logging
import os
import sys


def setup_job(log_path: str | None, threads: int | None = None, seed: int | None = None) -> logging.Logger:
    """Send Python logging, warnings, stdout and stderr of this job to ``log_path`` (if given), set
    torch's thread count to the job's ``threads`` and seed torch/random when ``seed`` is given."""
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        fh = open(log_path, "w", buffering=1)
        sys.stdout = fh
        sys.stderr = fh
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    if threads is None and seed is None:
        return logging.getLogger("llm_compression")  # CPU-only jobs (aggregate, plots) never import torch
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    if seed is not None:
        import random

        random.seed(seed)
        torch.manual_seed(seed)
    return logging.getLogger("llm_compression")
