#!/usr/bin/env python
"""Wall time and peak memory of each pruning method on the embedded model.

For every method, a fresh Python subprocess loads the checkpoint, samples the calibration windows,
prunes, and reports: pruning wall time (seconds, excluding load and calibration sampling), peak
resident set size of the whole process, CPU seconds of the pruning (user + system; less
sensitive than wall time to other jobs on a shared machine) (``resource.getrusage(...).ru_maxrss``, so the peak is per
method), RSS after loading, and seconds per decoder block (mean and max, calibrated methods).

Defaults are the reference calibration budget of the SparseGPT/Wanda anchors measured on this
machine: 64 windows x 512 tokens of PTB *train*, 2 torch threads, fp32. Anchors (original research
code, same model and budget): SparseGPT 50% ~196 s / 2.1 GB peak RSS; Wanda 50% ~132 s / 1.9 GB;
dense evaluation alone ~1.1 GB.

    python benchmarks/prune_benchmark.py                                  # reference budget
    python benchmarks/prune_benchmark.py --samples 16 --methods wanda     # quicker
    python benchmarks/prune_benchmark.py --json out.json                  # also write the rows
    python benchmarks/prune_benchmark.py --methods sparsegpt,wanda --compute-dtypes float32,bfloat16 \
        --reference-dir DIR                                               # issue 15's ratios

``--compute-dtypes`` runs SparseGPT/Wanda once per calibration compute dtype (``prune_model``'s
``compute_dtype``; the weights stay fp32). ``--reference-dir DIR`` (``DIR/sparsegpt``: a checkout of
IST-DASLab/sparsegpt, ``DIR/wanda``: of locuslab/wanda) also times the original research code on the
same checkpoint, windows and threads (:mod:`reference_prune`, a fresh process each), and the table of
ratios gives ours / reference for wall time, CPU time and peak RSS. ``--with-rows FILE`` adds the rows
of an earlier ``--json`` (so runs of ours and of the reference code can be interleaved on a loaded
machine and compared in one table). Optionally ``--ppl-tokens N`` evaluates each pruned model on the
first N tokens of the PTB test split (sparsegpt preset) for the perplexity ratio bf16 / fp32.

Needs the imported fp32 checkpoint (``results/smollm2-135m/base``, made by the workflow's
import_model rule); ``--checkpoint`` points elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = ROOT / "results" / "smollm2-135m" / "base"


def child(args) -> dict:
    """Run one method in this process and return its measurements."""
    import resource

    import psutil
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from llm_compression.data import load_text, sample_calibration, windows_sha256
    from llm_compression.models import load_checkpoint
    from llm_compression.prune import needs_calibration, prune_model

    torch.set_num_threads(args.threads)
    proc = psutil.Process()
    rss_start = proc.memory_info().rss
    t0 = time.perf_counter()
    model, tok = load_checkpoint(args.checkpoint, dtype=args.dtype)
    load_s = time.perf_counter() - t0
    rss_loaded = proc.memory_info().rss
    ids = None
    if needs_calibration(args.method):
        corpus = load_text(args.corpus, args.split)
        ids = sample_calibration(tok, corpus.text, samples=args.samples, seqlen=args.seqlen, seed=args.seed)
        del corpus
    opts = {}
    if args.method == "magnitude":
        opts["scope"] = args.scope
    if args.compute_dtype:
        opts["compute_dtype"] = args.compute_dtype
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t1 = time.perf_counter()
    r = prune_model(model, method=args.method, level=args.level, ratio=args.ratio, calib_ids=ids,
                    batch_size=args.batch_size, share_inputs=not args.no_share, **opts)
    prune_s = time.perf_counter() - t1
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    blocks = [b["seconds"] for b in r["blocks"]]
    ppl = None
    if args.ppl_tokens:
        from llm_compression.evaluate import perplexity_of_model

        ppl = perplexity_of_model(model, tok, dataset="ptb", preset="sparsegpt", max_tokens=args.ppl_tokens,
                                  batch_size=4)["metrics"]["perplexity"]
    return {
        "method": args.method, "level": args.level, "ratio": args.ratio,
        "samples": args.samples if ids is not None else 0, "seqlen": args.seqlen, "threads": args.threads,
        "dtype": args.dtype, "batch_size": args.batch_size, "compute_dtype": r.get("compute_dtype"),
        "ptb_perplexity": ppl, "ppl_tokens": args.ppl_tokens,
        "share_inputs": not args.no_share,
        "prune_seconds": prune_s, "prune_cpu_seconds": cpu_s, "load_seconds": load_s,
        "peak_rss_mb": peak_kib * 1024 / 1e6, "rss_start_mb": rss_start / 1e6, "rss_after_load_mb": rss_loaded / 1e6,
        "blocks": len(blocks), "block_seconds_mean": sum(blocks) / len(blocks) if blocks else None,
        "block_seconds_max": max(blocks) if blocks else None,
        "sparsity": r["sparsity_after"],
        "load_avg_1min_end": os.getloadavg()[0],
        "windows_sha256": windows_sha256(ids) if ids is not None else None,
    }


def ratio_rows(rows: list[dict]) -> list[str]:
    """Lines of ratios: each SparseGPT/Wanda row of ours over the reference code's fp32 row of that
    method (wall time, CPU time, peak RSS), and bf16 perplexity over fp32 perplexity where both exist."""
    out = []
    for method in ("sparsegpt", "wanda"):
        ref = [r for r in rows if r["method"] == f"reference-{method}"]
        ours = [r for r in rows if r["method"] == method]
        fp32_ppl = [r["ptb_perplexity"] for r in ours if r.get("compute_dtype") == "float32" and r.get("ptb_perplexity")]
        for r in ours:
            parts = [f"{method} ({r.get('compute_dtype') or r['dtype']})"]
            if ref:
                b = ref[-1]
                parts.append(f"time {r['prune_seconds'] / b['prune_seconds']:.2f}x, "
                             f"CPU time {r['prune_cpu_seconds'] / b['prune_cpu_seconds']:.2f}x, "
                             f"peak RSS {r['peak_rss_mb'] / b['peak_rss_mb']:.2f}x of the reference code "
                             f"({b['prune_seconds']:.1f} s, {b['peak_rss_mb']:.0f} MB)")
            if r.get("ptb_perplexity") and fp32_ppl and r.get("compute_dtype") != "float32":
                parts.append(f"PTB perplexity {r['ptb_perplexity'] / fp32_ppl[-1]:.4f}x of fp32 "
                             f"({r['ptb_perplexity']:.3f} vs {fp32_ppl[-1]:.3f}, first {r['ppl_tokens']} tokens)")
            if len(parts) > 1:
                out.append("  " + ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if len(parts) > 2 else ""))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT_CKPT), help="fp32 checkpoint dir (default: %(default)s)")
    ap.add_argument("--methods", default="sparsegpt,wanda,magnitude", help="comma list (default: %(default)s)")
    ap.add_argument("--level", default="unstructured", help="unstructured, 2:4 or 4:8")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--scope", default="layer", help="magnitude comparison group")
    ap.add_argument("--samples", type=int, default=64, help="calibration windows (reference: 64)")
    ap.add_argument("--seqlen", type=int, default=512, help="tokens per window (reference: 512)")
    ap.add_argument("--corpus", default="ptb")
    ap.add_argument("--split", default="train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (reference: 2)")
    ap.add_argument("--batch-size", type=int, default=8, help="calibration windows per block forward")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype the model is loaded in")
    ap.add_argument("--compute-dtypes", default="",
                    help="comma list of calibration compute dtypes for sparsegpt/wanda (e.g. float32,bfloat16; "
                         "default: the model's)")
    ap.add_argument("--reference-dir", help="folder with sparsegpt/ and wanda/ checkouts: also time the reference code")
    ap.add_argument("--with-rows", action="append", default=[], help="add the rows of an earlier --json file")
    ap.add_argument("--ppl-tokens", type=int, default=0,
                    help="also PTB-test perplexity (sparsegpt preset) over the first N tokens of each pruned model")
    ap.add_argument("--no-share", action="store_true",
                    help="do not share input statistics between q/k/v and gate/up (to measure that saving)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--compute-dtype", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        Path(args.out).write_text(json.dumps(child(args)))
        return 0
    if not (Path(args.checkpoint) / "config.json").exists():
        ap.error(f"--checkpoint {args.checkpoint} is not a checkpoint (run the workflow's import_model rule first)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    sys.path.insert(0, str(ROOT / "src"))
    from llm_compression.prune import METHODS

    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; valid: {list(METHODS)}")
    rows = []
    for f in args.with_rows:
        rows += json.loads(Path(f).read_text())
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    dtypes = [d.strip() for d in args.compute_dtypes.split(",") if d.strip()] or [None]
    jobs = []
    for m in methods:
        for d in (dtypes if m in ("sparsegpt", "wanda") else [None]):
            jobs.append(([sys.executable, __file__, *passthrough, "--child", "--method", m]
                         + (["--compute-dtype", d] if d else []), f"{m}" + (f" ({d})" if d else "")))
        if args.reference_dir and m in ("sparsegpt", "wanda"):
            jobs.append(([sys.executable, str(Path(__file__).with_name("reference_prune.py")),
                          "--reference-dir", args.reference_dir, "--method", m, "--checkpoint", args.checkpoint,
                          "--ratio", str(args.ratio), "--samples", str(args.samples), "--seqlen", str(args.seqlen),
                          "--corpus", args.corpus, "--split", args.split, "--seed", str(args.seed),
                          "--threads", str(args.threads)], f"reference {m}"))
    for cmd, label in jobs:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            out = fh.name
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        t0 = time.perf_counter()
        res = subprocess.run([*cmd, "--out", out], env=env)
        if res.returncode != 0:
            print(f"{label}: subprocess failed with exit code {res.returncode}", file=sys.stderr)
            return res.returncode
        row = json.loads(Path(out).read_text())
        os.unlink(out)
        row["process_seconds"] = time.perf_counter() - t0
        row["command"] = " ".join(cmd)
        rows.append(row)
        print(f"{label:22s} {args.level} ratio={args.ratio}: prune {row['prune_seconds']:.1f} s "
              f"({row['prune_cpu_seconds']:.1f} CPU s), "
              f"peak RSS {row['peak_rss_mb']:.0f} MB, per block {row['block_seconds_mean'] or 0:.2f} s, "
              f"sparsity {row['sparsity']:.4f}, load {row['load_avg_1min_end']:.1f}", flush=True)
    print()
    print(f"calibration: {args.samples} x {args.seqlen} tokens of {args.corpus}/{args.split}, "
          f"{args.threads} threads, model {args.dtype}, batch {args.batch_size}, "
          f"shared input statistics: {not args.no_share}, load average now {os.getloadavg()[0]:.1f}")
    hdr = (f"{'method':26s} {'prune s':>8s} {'CPU s':>8s} {'s/block':>8s} {'peak RSS MB':>12s} {'RSS loaded MB':>14s} "
           f"{'sparsity':>9s} {'PTB ppl':>9s} {'load1':>6s}")
    print(hdr)
    for r in rows:
        name = r["method"] + (f" ({r['compute_dtype']})" if r.get("compute_dtype") else "")
        ppl = f"{r['ptb_perplexity']:9.3f}" if r.get("ptb_perplexity") else f"{'':9s}"
        print(f"{name:26s} {r['prune_seconds']:8.1f} {r['prune_cpu_seconds']:8.1f} {(r['block_seconds_mean'] or 0):8.2f} "
              f"{r['peak_rss_mb']:12.0f} {r['rss_after_load_mb']:14.0f} {r['sparsity']:9.4f} {ppl} "
              f"{r['load_avg_1min_end']:6.1f}")
    hashes = {r["windows_sha256"] for r in rows if r.get("windows_sha256")}
    if hashes:
        print("calibration windows: " + ("the same tokens in every row" if len(hashes) == 1 else
                                         f"DIFFERENT in {len(hashes)} groups of rows"))
    ratios = ratio_rows(rows)
    if ratios:
        print()
        print("ours / reference code (issue 15 targets: fp32 time <= 0.75, peak RSS <= 0.80; bf16 time <= 0.50; "
              "bf16 perplexity / fp32 perplexity within 1%)")
        for line in ratios:
            print(line)
    print()
    print("commands:")
    for r in rows:
        if r.get("command"):
            print("  OMP_NUM_THREADS=%d %s" % (r["threads"], r["command"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
