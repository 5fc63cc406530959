"""Memory of this process, torch-free: the resident-set readings (``/proc/self/status``), the reset of its
high-water mark, the peak over a block of work (CPU resident set or CUDA allocated), and the quantization
scheme a checkpoint records. Shared by the PyTorch memory probe (:mod:`.memory`), perplexity
(:mod:`.perplexity`) and llama.cpp (:mod:`.llamacpp`); see :mod:`.memory` for what the readings mean.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


def _proc_status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


#: the highest ``VmHWM`` this process reached before any reset of it (:func:`process_peak_rss_bytes`)
_PEAK_BEFORE_RESETS = 0


def process_peak_rss_bytes() -> int | None:
    """This process's peak resident set since it started, resets of the high-water mark by
    :func:`_reset_peak_rss` notwithstanding (the highest ``VmHWM`` seen before each, and now)."""
    now = _proc_status_bytes("VmHWM")
    if now is None:
        return None
    return max(now, _PEAK_BEFORE_RESETS)


def _reset_peak_rss() -> bool:
    global _PEAK_BEFORE_RESETS
    _PEAK_BEFORE_RESETS = max(_PEAK_BEFORE_RESETS, _proc_status_bytes("VmHWM") or 0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def track_peak_memory(device) -> Iterator[dict]:
    """Peak memory of the work done inside the ``with`` block, in this process; the yielded dict is
    filled on exit with ``peak_memory_bytes``, ``memory_before_bytes`` (what was resident or allocated
    when the block started: the model) and ``peak_memory_kind``.

    - CUDA (``device`` ``"cuda"``/``"cuda:N"``): ``torch.cuda.max_memory_allocated`` after
      ``reset_peak_memory_stats`` (PyTorch's caching allocator; not the CUDA context).
    - CPU (Linux): ``VmHWM`` of this process after resetting it (``/proc/self/clear_refs`` ``5``) at the
      start, so loading before the block is not counted (the model stays resident and is). This also
      lowers what ``ru_maxrss`` reports for this process afterwards. Where the reset is refused, the
      whole-process peak ``ru_maxrss`` is reported and the kind says so.
    """
    out: dict = {}
    cuda = str(device).startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize(device)
        before = int(torch.cuda.memory_allocated(device))
        torch.cuda.reset_peak_memory_stats(device)
        reset = True
    else:
        before = _proc_status_bytes("VmRSS")
        reset = _reset_peak_rss()
    try:
        yield out
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            peak, kind = int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated (reset at start)"
        else:
            hwm = _proc_status_bytes("VmHWM")
            if reset and hwm is not None:
                peak, kind = hwm, "CPU resident set, VmHWM (reset at start; resident model included)"
            else:
                import resource

                peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
                kind = "CPU resident set, ru_maxrss of the whole process (peak reset unavailable; includes loading)"
        out.update(peak_memory_bytes=peak, memory_before_bytes=before, peak_memory_kind=kind)


def quant_scheme(ckpt_dir) -> str | None:
    """The quantization scheme of a checkpoint (``compression.json``), or None."""
    from ..checkpoint import read_compression

    return (read_compression(ckpt_dir).get("quantization") or {}).get("scheme")


def _rss_split(stage: str) -> dict:
    """``rss_anon_<stage>_bytes`` and ``rss_file_<stage>_bytes``: ``/proc/self/status`` RssAnon and RssFile
    now (empty where the kernel does not report them)."""
    anon, file = _proc_status_bytes("RssAnon"), _proc_status_bytes("RssFile")
    return {} if anon is None or file is None else {f"rss_anon_{stage}_bytes": anon, f"rss_file_{stage}_bytes": file}


def rss_after_load(out: dict) -> bool:
    """Record in ``out`` the resident set after loading a model (``rss_after_load_bytes``, its anonymous/file
    split, ``peak_rss_through_load_bytes``), then reset the high-water mark; return whether the reset worked."""
    out["rss_after_load_bytes"] = _proc_status_bytes("VmRSS")
    out.update(_rss_split("after_load"))
    out["peak_rss_through_load_bytes"] = _proc_status_bytes("VmHWM")
    return _reset_peak_rss()


def rss_after_work(out: dict, reset: bool, work: str, *, peak_is_rss: bool = True) -> None:
    """Record in ``out`` the peak resident set over ``work`` done since :func:`rss_after_load`
    (``peak_rss_forward_bytes``, ``peak_rss_kind``, the split after it) and, with ``peak_is_rss`` (CPU), make it
    the record's ``peak_memory_bytes`` (``peak_memory_kind``, ``peak_memory_over_load_bytes``)."""
    import resource

    hwm = _proc_status_bytes("VmHWM")
    out.update(_rss_split("after_forward"))
    if reset and hwm is not None:
        out["peak_rss_forward_bytes"] = hwm
        rss_kind = f"VmHWM over {work} (reset after load)"
    else:
        out["peak_rss_forward_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        rss_kind = "ru_maxrss of the whole process (peak reset unavailable; includes loading)"
    if peak_is_rss:
        out["peak_memory_bytes"] = out["peak_rss_forward_bytes"]
        out["peak_memory_kind"] = "CPU resident set, " + rss_kind
        out["peak_memory_over_load_bytes"] = out["peak_memory_bytes"] - out["rss_after_load_bytes"]
    out["peak_rss_kind"] = rss_kind
