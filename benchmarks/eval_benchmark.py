"""Perplexity evaluation against a plain forward, and bf16 against fp32, in one process (issue 15).

Over the same PTB windows (``sparsegpt`` preset: test split, sentences joined by spaces, non-overlapping
``seqlen`` windows, ``--max-tokens`` of them), each round runs, in turn:

- ``plain fp32``: ``model(input_ids).logits`` per batch and nothing else (the speed of the model);
- ``ours fp32``: :func:`llm_compression.evaluate.perplexity.perplexity` (forward + NLL);
- ``plain bf16``: the plain forward under ``torch.autocast(bfloat16)``;
- ``ours bf16``: ``perplexity(..., dtype="bfloat16")``;
- ``before fp32`` (unless ``--no-before``): the computation this project used before issue 15 (full
  logits sliced, copied and passed to ``F.cross_entropy``), kept here only to show what changed.

Rounds are interleaved so that load from other processes hits every variant alike; the table gives
per variant the median wall tokens/s, the median CPU seconds per 1,000 tokens (process CPU time, all
threads: less sensitive to other load than wall time), the peak memory of the stretch (CPU: resident
set, model included, ``VmHWM`` reset at its start; CUDA: ``max_memory_allocated``) and the perplexity.
Then the ratios of issue 15: ours/plain tokens/s in fp32 (goal >= 0.95), bf16/fp32 tokens/s of ours
(goal >= 1.5) and the relative perplexity difference bf16 vs fp32 (goal <= 1%).

Reproduce (after ``make run`` has imported the model into ``results/smollm2-135m/base``; the
numbers in the README were taken with these settings)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/eval_benchmark.py results/smollm2-135m/base \\
        --threads 2 --max-tokens 8192 --batch-size 4 --rounds 3
    # whole PTB test split, fp32 vs bf16 perplexity only (no timing rounds):
    .venv/bin/python benchmarks/eval_benchmark.py results/smollm2-135m/base --max-tokens 0 --rounds 1 \\
        --only ours --no-before
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from llm_compression.data import load_text, tokenize_stream  # noqa: E402
from llm_compression.evaluate.memory import track_peak_memory  # noqa: E402
from llm_compression.evaluate.perplexity import perplexity, window_stream  # noqa: E402
from llm_compression.models import load_checkpoint  # noqa: E402
from llm_compression.protocols import resolve_protocol  # noqa: E402


def _autocast(dtype: str, device: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


@torch.no_grad()
def plain_forward(model, windows, batch_size, device, dtype) -> dict:
    """The speed of the model: ``model(input_ids).logits`` per batch, nothing else."""
    t0, c0 = time.perf_counter(), time.process_time()
    with track_peak_memory(device) as mem, _autocast(dtype, device):
        for i in range(0, len(windows), batch_size):
            x = torch.stack(windows[i:i + batch_size]).to(device)
            model(input_ids=x, use_cache=False).logits
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "perplexity": None, **mem}


@torch.no_grad()
def before_issue15(model, windows, batch_size, device, dtype) -> dict:
    """The perplexity loop as it was before issue 15 (fp32 only): ``logits[:, :-1].float()`` reshaped (a
    full-vocabulary copy when batch > 1) and ``F.cross_entropy(reduction="sum")``."""
    nll, scored = 0.0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    with track_peak_memory(device) as mem:
        for i in range(0, len(windows), batch_size):
            x = torch.stack(windows[i:i + batch_size]).to(device)
            logits = model(input_ids=x, use_cache=False).logits
            pred = logits[:, :-1, :].float()
            target = x[:, 1:]
            nll += float(F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="sum"))
            scored += target.numel()
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "perplexity": math.exp(nll / scored), **mem}


def ours(model, ids, seqlen, batch_size, device, dtype) -> dict:
    r = perplexity(model, ids, seqlen=seqlen, batch_size=batch_size, device=device, dtype=dtype)
    return {k: r[k] for k in ("seconds", "cpu_seconds", "perplexity", "peak_memory_bytes", "memory_before_bytes",
                              "peak_memory_kind")}


VARIANTS = {  # name -> (function, dtype)
    "plain fp32": (plain_forward, "float32"),
    "ours fp32": (ours, "float32"),
    "plain bf16": (plain_forward, "bfloat16"),
    "ours bf16": (ours, "bfloat16"),
    "before fp32": (before_issue15, "float32"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint directory (e.g. results/smollm2-135m/base)")
    ap.add_argument("--dataset", default="ptb")
    ap.add_argument("--path", default=None, help="local corpus folder/file (default: the dataset's loader)")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=8192, help="token cap (0 = the whole split)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", choices=["all", "ours"], default="all", help="ours: skip the plain forwards")
    ap.add_argument("--no-before", action="store_true", help="skip the pre-issue-15 computation")
    ap.add_argument("--json", help="also write every measurement to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    proto = resolve_protocol("sparsegpt", args.dataset, seqlen=args.seqlen)
    model, tok = load_checkpoint(args.checkpoint, device=args.device)
    corpus = load_text(args.dataset, proto.split, path=args.path, join=proto.join)
    ids = tokenize_stream(tok, corpus.text)
    if args.max_tokens:
        ids = ids[:args.max_tokens]
    windows = window_stream(ids, args.seqlen)
    n_tokens = sum(w.numel() for w in windows)
    names = [n for n in VARIANTS if not (args.only == "ours" and n.startswith("plain"))
             and not (args.no_before and n.startswith("before"))]
    print(f"# {args.checkpoint}: {args.dataset} {proto.split} ({proto.join}), {len(windows)} windows of {args.seqlen} "
          f"= {n_tokens} tokens, batch {args.batch_size}, {torch.get_num_threads()} threads, device {args.device}, "
          f"torch {torch.__version__}; {args.rounds} interleaved rounds", flush=True)
    with open("/proc/loadavg") as fh:
        print(f"# load average at start: {' '.join(fh.read().split()[:3])}", flush=True)
    runs = {n: [] for n in names}
    for rnd in range(args.rounds):
        for n in names:
            fn, dtype = VARIANTS[n]
            r = fn(model, ids if fn is ours else windows, *((args.seqlen,) if fn is ours else ()),
                   args.batch_size, args.device, dtype)
            runs[n].append(r)
            print(f"round {rnd + 1} {n:12s} {n_tokens / r['seconds']:8.1f} tok/s  cpu {r['cpu_seconds']:7.1f} s  "
                  f"peak {r['peak_memory_bytes'] / 1e6:7.0f} MB  ppl {r['perplexity']}", flush=True)
    with open("/proc/loadavg") as fh:
        print(f"# load average at end: {' '.join(fh.read().split()[:3])}\n")

    def med(n, key):
        return statistics.median(r[key] for r in runs[n])

    tps = {n: n_tokens / med(n, "seconds") for n in names}
    print("| variant | tokens/s (median) | CPU s per 1k tokens (median) | peak memory MB (max) | perplexity |")
    print("|---|---|---|---|---|")
    for n in names:
        peak = max(r["peak_memory_bytes"] for r in runs[n]) / 1e6
        ppl = runs[n][-1]["perplexity"]
        print(f"| {n} | {tps[n]:.1f} | {1000 * med(n, 'cpu_seconds') / n_tokens:.2f} | {peak:.0f} | "
              f"{'' if ppl is None else f'{ppl:.4f}'} |")
    print()
    cpu = {n: med(n, "cpu_seconds") for n in names}
    if "plain fp32" in tps:
        print(f"ours/plain tokens/s fp32: {tps['ours fp32'] / tps['plain fp32']:.3f} (goal >= 0.95); "
              f"by CPU time: {cpu['plain fp32'] / cpu['ours fp32']:.3f}")
        print(f"ours/plain tokens/s bf16: {tps['ours bf16'] / tps['plain bf16']:.3f}; "
              f"by CPU time: {cpu['plain bf16'] / cpu['ours bf16']:.3f}")
    print(f"bf16/fp32 tokens/s (ours): {tps['ours bf16'] / tps['ours fp32']:.3f} (goal >= 1.5); "
          f"by CPU time: {cpu['ours fp32'] / cpu['ours bf16']:.3f}")
    p32, p16 = runs["ours fp32"][-1]["perplexity"], runs["ours bf16"][-1]["perplexity"]
    print(f"perplexity fp32 {p32:.4f}, bf16 {p16:.4f}: bf16/fp32 - 1 = {100 * (p16 / p32 - 1):+.3f}% (goal within 1%)")
    if "before fp32" in runs:
        pb = runs["before fp32"][-1]["perplexity"]
        print(f"before issue 15 (fp32): perplexity {pb!r} vs ours {p32!r} ({'identical' if pb == p32 else 'differs'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "tokens": n_tokens, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
