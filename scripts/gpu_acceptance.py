#!/usr/bin/env python
"""GPU acceptance: the main path on the embedded model on one CUDA GPU, then a check of every CUDA-specific
record. One command, from the project root, after `make setup` with a CUDA build of torch
(`make setup TORCH_SPEC=torch==2.13.0` on Linux x86-64 is the CUDA build):

    .venv/bin/python scripts/gpu_acceptance.py            # sized for about 8 minutes on one GPU (not yet run)

It runs the workflow with config/gpu-acceptance.yaml into results/gpu-acceptance/ (prune with SparseGPT and
LLM-Pruner block on the GPU, LoRA healing, NF4-DQ through bitsandbytes' CUDA kernels, perplexity, cost, peak
memory, decode speed), then checks:

- every checkpoint was made on CUDA (compression.json: pruning and quantization device), and the LoRA healing
  chose bf16 where the GPU supports it (healing record: dtype, dtype_requested auto);
- every metrics record was measured on CUDA: perplexity and latency runtime device, memory peak from
  torch.cuda.max_memory_allocated (not the CPU resident set), latency with CUDA synchronisation;
- the NF4-DQ checkpoints reload as 4-bit bitsandbytes layers on CUDA and their perplexity is finite;
- the streamed perplexity of the dense model on CUDA equals the in-memory one (llm_compression.streaming).

Prints one line per check and exits non-zero when any fails. ``--check-only`` checks an existing results folder.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "gpu-acceptance.yaml"
RESULTS = ROOT / "results" / "gpu-acceptance"
MODEL = "smollm2-135m"


def require_cuda() -> None:
    """Exit with a clear message when torch sees no CUDA GPU (before any work)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"gpu_acceptance: torch {torch.__version__} sees no CUDA GPU (torch.version.cuda = "
                         f"{torch.version.cuda}); run it on a GPU node with a CUDA build of torch")


def run_workflow(cores: int) -> float:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/default", "--cores", str(cores),
           "--configfile", str(CONFIG)]
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"gpu_acceptance: the workflow failed (exit {r.returncode}); see results/gpu-acceptance/logs/")
    return time.perf_counter() - t0


def checks(results: Path) -> list[tuple[str, bool, str]]:
    """(name, passed, detail) for every CUDA-specific record under ``results``."""
    out = []

    def check(name, ok, detail=""):
        out.append((name, bool(ok), detail))

    root = results / MODEL
    for comp in sorted(root.glob("pruned/*/compression.json")):
        rec = json.loads(comp.read_text())
        dev = rec.get("device")
        check(f"prune on cuda: {comp.parent.name}", str(dev).startswith("cuda"), f"device {dev}")
    for comp in sorted(root.glob("healed/*/*/compression.json")):
        rec = json.loads(comp.read_text())
        info = rec.get("result") or {}
        want = "bfloat16" if _bf16() else "float32"
        check(f"LoRA on cuda, dtype auto -> {want}: {comp.parent.parent.name}",
              str(rec.get("device")).startswith("cuda") and info.get("dtype") == want
              and info.get("dtype_requested") == "auto", json.dumps(
                  {k: info.get(k) for k in ("dtype", "dtype_requested", "dtype_reason")}))
    for comp in sorted(root.glob("quantized/*/*/nf4-dq/compression.json")):
        q = json.loads(comp.read_text()).get("quantization") or {}
        check(f"NF4-DQ on cuda: {comp.parent.parent.parent.name}", str(q.get("device")).startswith("cuda"),
              f"device {q.get('device')}")
    for f in sorted(root.glob("metrics/*/*/*/*.json")):
        rec = json.loads(f.read_text())
        ev, rt, proto = rec["evaluation"], rec.get("runtime") or {}, rec.get("protocol") or {}
        where = "/".join(f.parts[-4:-1])
        if ev.startswith("ppl-"):
            ppl = rec["metrics"]["perplexity"]
            check(f"perplexity on cuda, finite: {where}", str(rt.get("device")).startswith("cuda") and math.isfinite(ppl),
                  f"device {rt.get('device')}, ppl {ppl:.3f}")
        elif ev == "memory":
            kind = proto.get("peak_memory_kind", "")
            check(f"memory from torch.cuda: {where}", kind.startswith("cuda max_memory_allocated"), kind)
        elif ev == "latency":
            check(f"latency on cuda: {where}", str(proto.get("device")).startswith("cuda")
                  and rec["metrics"]["decode_tokens_per_second_median"] > 0, f"device {proto.get('device')}")
    return out


def _bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def live_checks(results: Path) -> list[tuple[str, bool, str]]:
    """4-bit reload on CUDA, and streamed == in-memory perplexity on CUDA."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from llm_compression.evaluate import evaluate_artifact
    from llm_compression.models import load_checkpoint

    out = []
    q = results / MODEL / "quantized" / "dense" / "none" / "nf4-dq"
    if q.exists():
        model, _ = load_checkpoint(q, device="cuda", tokenizer=False)
        kinds = {type(m).__name__ for m in model.modules()}
        dev = next(model.parameters()).device
        out.append(("NF4-DQ reloads as bitsandbytes Linear4bit on cuda", "Linear4bit" in kinds and dev.type == "cuda",
                    f"{sorted(k for k in kinds if 'Linear' in k)} on {dev}"))
        del model
        torch.cuda.empty_cache()
    base = results / MODEL / "base"
    opts = dict(dataset="ptb", preset="sparsegpt", seqlen=512, max_tokens=2048, batch_size=2)
    a = evaluate_artifact(base, "perplexity", device="cuda", job_threads=2, **opts)
    b = evaluate_artifact(base, "perplexity", device="cuda", job_threads=2, streamed=True, **opts)
    out.append(("streamed perplexity on cuda equals in-memory", a["windows"]["nll"] == b["windows"]["nll"],
                f"{a['metrics']['perplexity']:.6f} vs {b['metrics']['perplexity']:.6f}; peak "
                f"{a['runtime']['peak_memory_bytes'] / 1e6:.0f} vs {b['runtime']['peak_memory_bytes'] / 1e6:.0f} MB"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check-only", action="store_true", help="check an existing results folder, run nothing")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--cores", type=int, default=4)
    a = ap.parse_args(argv)
    require_cuda()
    results = Path(a.results)
    if not a.check_only:
        secs = run_workflow(a.cores)
        print(f"workflow: {secs / 60:.1f} min")
    found = checks(results) + live_checks(results)
    if not found:
        print(f"gpu_acceptance: no records under {results}")
        return 1
    for name, ok, detail in found:
        print(f"{'PASS' if ok else 'FAIL'}  {name}  ({detail})")
    failed = sum(not ok for _, ok, _ in found)
    print(f"{len(found) - failed}/{len(found)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
