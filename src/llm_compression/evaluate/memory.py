"""Peak memory of one forward pass, measured in a fresh process.

A fresh process matters: memory freed by an earlier job stays in the allocator of a long-lived
process, and the peak of loading (reading a checkpoint, quantizing) would hide the peak of running.

- CUDA: ``torch.cuda.max_memory_allocated`` over one forward, after ``reset_peak_memory_stats``
  (tensors allocated by PyTorch's caching allocator: weights, activations, workspace; not the CUDA
  context). The allocated bytes after loading are reported as the baseline.
- CPU (Linux): the process's resident set. ``VmRSS`` after imports and after loading are the
  baselines; the kernel's high-water mark ``VmHWM`` is then reset (``/proc/self/clear_refs`` ``5``,
  Linux >= 4.0) so the reported peak covers the forward pass only (with the loaded model resident).
  Where the reset is refused, the whole-process peak ``ru_maxrss`` is reported and flagged.
  The resident set counts file-backed pages too: the safetensors weights (mapped, so they show as
  file pages once a forward has touched them) and the shared libraries' code. How many library pages
  are resident depends on the operating system's page cache (the kernel maps cached neighbours of a
  faulting page too), not on the model: the same checkpoint measured from two virtualenvs of the same
  packages gave 1,016 and 1,077 MB, with the anonymous part identical (143 MB after imports, 278 MB
  after loading) and the file-backed part 40-50 MB apart. So the record also gives ``RssAnon`` and
  ``RssFile`` after imports, after loading and after the forward (``rss_anon_*`` / ``rss_file_*``):
  compare variants within one run, and read a shift between runs against the file part.

Run as ``python -m llm_compression.evaluate.memory CKPT --seqlen N --device cpu`` it prints one
JSON line; :func:`measure_peak_memory` starts it and parses that line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import sys
from pathlib import Path

from .process_memory import (  # noqa: F401  (re-exported: the memory figures' helpers live there)
    _proc_status_bytes,
    _reset_peak_rss,
    _rss_split,
    quant_scheme,
    rss_after_load,
    rss_after_work,
    track_peak_memory,
)


def evaluate_memory(ckpt_dir, *, seqlen: int = 512, device: str = "cpu", threads: int | None = None) -> dict:
    """Peak memory of one ``seqlen``-token forward in a fresh process (:func:`measure_peak_memory`), as a
    metrics record. Torch-free in this process: the job that calls it does not import torch twice."""
    t0 = time.perf_counter()
    r = measure_peak_memory(ckpt_dir, seqlen=int(seqlen), device=device, threads=threads)
    kind = r.pop("peak_memory_kind")
    rss_kind = r.pop("peak_rss_kind")
    return {
        "metrics": r,
        "protocol": {"what": "peak memory of one forward (batch 1, no KV cache) in a fresh process",
                     "seqlen": int(seqlen), "peak_memory_kind": kind, "peak_rss_kind": rss_kind,
                     "quantization": quant_scheme(ckpt_dir)},
        "notes": ["peak_memory_bytes includes the resident weights; unstructured zeros are stored densely and "
                  "do not lower it"],
        "runtime": ({"engine": r["engine"], "device": r["device"], "threads": r["threads"]} if r.get("engine") else
                    {"device": r["device"], "torch_threads": r["threads"]}) | {"seconds": time.perf_counter() - t0},
    }


def probe(ckpt_dir: str, *, seqlen: int, device: str, threads: int | None = None, seed: int = 0) -> dict:
    """Load ``ckpt_dir`` and run one forward of ``seqlen`` tokens in *this* process; return memory figures.
    ``device`` (``auto``/``cpu``/``cuda``) is resolved and checked here (:func:`~llm_compression.models.pick_device`).

    Meant to be called in a fresh process (see :func:`measure_peak_memory`). A GGUF artifact is measured in
    llama.cpp (:func:`~llm_compression.evaluate.llamacpp.probe_gguf`), without importing torch.
    """
    from ..gguf_export import is_gguf_artifact

    if is_gguf_artifact(ckpt_dir):
        from .llamacpp import probe_gguf

        return probe_gguf(ckpt_dir, seqlen=seqlen, threads=threads, seed=seed)
    import torch

    from ..models import load_checkpoint, pick_device

    if threads:
        torch.set_num_threads(int(threads))
    device = pick_device(device)  # auto resolved here; cuda without a GPU refused with a clear error
    rss_start = _proc_status_bytes("VmRSS")
    split_after_imports = _rss_split("after_imports")
    cuda = device.startswith("cuda")
    model, _ = load_checkpoint(ckpt_dir, device=device, tokenizer=False)
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = torch.randint(0, vocab, (1, int(seqlen)), generator=torch.Generator().manual_seed(seed)).to(device)
    out = {"device": device, "threads": torch.get_num_threads(), "seqlen": int(seqlen),
           "rss_after_imports_bytes": rss_start}
    if cuda:
        torch.cuda.synchronize()
        out["cuda_allocated_after_load_bytes"] = int(torch.cuda.memory_allocated())
        torch.cuda.reset_peak_memory_stats()
    out.update(split_after_imports)
    reset = rss_after_load(out)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    if cuda:
        torch.cuda.synchronize()
        out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
        out["peak_memory_kind"] = "cuda max_memory_allocated over one forward"
        out["peak_memory_over_load_bytes"] = out["peak_memory_bytes"] - out["cuda_allocated_after_load_bytes"]
    rss_after_work(out, reset, "one forward", peak_is_rss=not cuda)
    return out


def measure_peak_memory(ckpt_dir: str | os.PathLike, *, seqlen: int, device: str = "cpu",
                        threads: int | None = None, seed: int = 0, timeout_s: float = 1800) -> dict:
    """Run :func:`probe` in a fresh Python process and return its figures.

    Raises:
        ValueError: ``seqlen`` < 1.
        RuntimeError: the child process failed (its stderr tail is in the message).
    """
    if int(seqlen) < 1:
        raise ValueError(f"seqlen {seqlen!r} must be >= 1")
    src_root = str(Path(__file__).resolve().parents[2])  # .../src, so the child imports this library
    env = dict(os.environ)
    env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "llm_compression.evaluate.memory", str(ckpt_dir), "--seqlen", str(int(seqlen)),
           "--device", device, "--seed", str(seed)]
    if threads:
        cmd += ["--threads", str(int(threads))]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe failed (exit {r.returncode}) on {ckpt_dir}: {r.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--seqlen", type=int, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    res = probe(a.ckpt, seqlen=a.seqlen, device=a.device, threads=a.threads, seed=a.seed)
    sys.stdout.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
