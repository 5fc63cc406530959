"""Our structured pruning next to torch-pruning (Fang et al. 2023, "DepGraph"; VainF/Torch-Pruning) on the
embedded model: parameters, PTB perplexity and pruning wall time side by side.

torch-pruning is a peer to compare with, not a dependency: this script makes its own virtualenv
(``--venv``, default ``~/.cache/llm-compression/venvs/torch-pruning-<version>``) with
``torch-pruning==<version> --no-deps`` and a ``.pth`` file that points at the running interpreter's
site-packages, so both sides use the same torch and transformers. The torch-pruning side runs in a
subprocess of that virtualenv (``--worker``) and reuses this repository's model loader and perplexity
function (``PYTHONPATH=src``), so the protocol is the same.

Rows: block level at ``--ratios`` (0.25 0.5) with Taylor and L2 importance. Ours: heads and MLP channels
of layers 1..28 (:func:`llm_compression.prune.structured.prune_structured`, defaults), ``element1``
(first-order Taylor) or ``l2``. torch-pruning: its LLM recipe (``examples/LLMs/prune_llm.py``:
``MetaPruner`` over all layers, hidden size, heads (``prune_num_heads``, ``head_pruning_ratio`` = the
row's ratio) and MLP channels, ``round_to=4``, LM head ignored) with ``GroupTaylorImportance`` or
``GroupMagnitudeImportance(p=2)``. Matching parameter counts: torch-pruning's channel ``pruning_ratio``
is bisected (on a copy, magnitude importance: the count does not depend on the criterion) until its
parameter count is the closest it can reach to ours; the residual difference is printed.

Protocol: PTB test, ``sparsegpt`` preset (space-joined, 512-token windows), first ``--max-tokens`` (4,096)
tokens; calibration for both Taylor variants: LAMBADA test, 10 x 128 tokens, seed 0 (one backward pass
over the same samples).

    OMP_NUM_THREADS=2 nice -n 5 python benchmarks/structured_vs_torch_pruning.py --out tp.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TP_VERSION = "1.6.1"
CRITERIA = {"taylor": "element1", "l2": "l2"}


def make_venv(venv: Path, version: str) -> Path:
    """The virtualenv's python, creating it (and installing torch-pruning) when missing."""
    py = venv / "bin" / "python"
    stamp = venv / f".torch-pruning-{version}"
    if stamp.exists():
        return py
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # same torch/transformers/numpy as this interpreter (a peer for comparison, not a second install)
    Path(site, "parent-site-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", f"torch-pruning=={version}"], check=True)
    stamp.write_text(version + "\n")
    return py


def setup(args):
    import torch

    from llm_compression.data import load_text, sample_calibration, tokenize_stream
    from llm_compression.models import load_source

    torch.set_num_threads(args.threads)
    model, tok = load_source(args.source)
    ids = tokenize_stream(tok, load_text("ptb", "test", join="space").text)[: args.max_tokens]
    calib = sample_calibration(tok, load_text("lambada", "test").text, samples=args.samples, seqlen=args.seqlen,
                               seed=args.calib_seed)
    return model, tok, ids, calib


def ppl(model, ids) -> float:
    import torch

    from llm_compression.evaluate.perplexity import perplexity

    with torch.no_grad():
        return perplexity(model, ids, seqlen=512)["perplexity"]


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# --- torch-pruning side (runs inside the torch-pruning virtualenv) ----------------------------------------

def tp_prune(model, tok, calib, *, ratio: float, head_ratio: float, importance: str):
    """torch-pruning's LLM recipe on ``model`` in place; returns seconds (gradients included)."""
    import torch
    import torch_pruning as tp

    t0 = time.perf_counter()
    cfg = model.config
    num_heads = {}
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[m.q_proj] = cfg.num_attention_heads
            num_heads[m.k_proj] = cfg.num_key_value_heads
            num_heads[m.v_proj] = cfg.num_key_value_heads
    if importance == "taylor":
        imp = tp.importance.GroupTaylorImportance()
    elif importance == "l2":
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    else:
        raise ValueError(f"importance {importance!r} is not taylor or l2")
    example = calib[:1, :16]
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=example, importance=imp, global_pruning=False, pruning_ratio=ratio,
        ignored_layers=[model.lm_head], num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=head_ratio, round_to=4, output_transform=lambda out: out.logits)
    if importance == "taylor":
        model.zero_grad()
        with torch.enable_grad():
            for s in range(calib.shape[0]):
                x = calib[s:s + 1]
                (model(input_ids=x, labels=x, use_cache=False).loss / calib.shape[0]).backward()
    for g in pruner.step(interactive=True):
        g.prune()
    model.zero_grad(set_to_none=True)
    # module attributes and config after pruning, as torch-pruning's example does
    n_q = n_kv = None
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            n_q = m.q_proj.out_features // m.head_dim
            n_kv = m.k_proj.out_features // m.head_dim
            m.num_key_value_groups = n_q // n_kv
            for a in ("num_heads", "num_attention_heads"):
                if hasattr(m, a):
                    setattr(m, a, n_q)
        elif name.endswith("mlp"):
            cfg.intermediate_size = m.gate_proj.out_features
    cfg.hidden_size = model.get_input_embeddings().weight.shape[1]
    cfg.num_attention_heads, cfg.num_key_value_heads = n_q, n_kv
    return time.perf_counter() - t0


def worker(args) -> None:
    model, tok, ids, calib = setup(args)
    target = args.target
    # bisection of the channel ratio to land at ``target`` parameters (magnitude importance, on copies)
    lo, hi = 0.0, 0.9
    best = None
    for _ in range(args.bisect_steps):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        tp_prune(m, tok, calib, ratio=mid, head_ratio=args.ratio, importance="l2")
        n = count(m)
        del m
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (mid, n)
        if n > target:
            lo = mid
        else:
            hi = mid
    ratio = best[0]
    m = copy.deepcopy(model)
    seconds = tp_prune(m, tok, calib, ratio=ratio, head_ratio=args.ratio, importance=args.importance)
    layer = m.model.layers[len(m.model.layers) // 2]
    rec = {"side": f"torch-pruning {TP_VERSION}", "importance": args.importance, "ratio": args.ratio,
           "tp_pruning_ratio": ratio, "parameters": count(m), "target_parameters": target,
           "perplexity": ppl(m, ids), "prune_seconds": seconds,
           "hidden_size": m.get_input_embeddings().weight.shape[1],
           "middle_layer": {"num_attention_heads": layer.self_attn.q_proj.out_features // layer.self_attn.head_dim,
                            "num_key_value_heads": layer.self_attn.k_proj.out_features // layer.self_attn.head_dim,
                            "intermediate_size": layer.mlp.gate_proj.out_features}}
    Path(args.worker_out).write_text(json.dumps(rec))


# --- driver ---------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="JSON-lines file of the rows (appended)")
    ap.add_argument("--venv", default=str(Path.home() / ".cache/llm-compression/venvs" / f"torch-pruning-{TP_VERSION}"))
    ap.add_argument("--source", default="embedded:smollm2-135m")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=list(CRITERIA))
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--calib-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bisect-steps", type=int, default=10)
    ap.add_argument("--tp-timeout", type=float, default=3600.0,
                    help="seconds allowed to one torch-pruning worker (bisection + pruning + evaluation)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--ratio", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--importance", help=argparse.SUPPRESS)
    ap.add_argument("--target", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.out:
        ap.error("--out is required")
    py = make_venv(Path(args.venv), TP_VERSION)

    from llm_compression.prune.structured import prune_structured

    model, tok, ids, calib = setup(args)
    dense = {"parameters": count(model), "perplexity": ppl(model, ids)}
    print(f"dense: {dense['parameters']:,} parameters, PTB perplexity {dense['perplexity']:.1f}", flush=True)
    rows = []
    out = Path(args.out)
    for ratio in args.ratios:
        for crit in args.criteria:
            m = copy.deepcopy(model)
            res = prune_structured(m, level="block", ratio=ratio, importance=CRITERIA[crit], calib_ids=calib)
            ours = {"side": "ours", "importance": crit, "ratio": ratio, "parameters": res["parameters_after"],
                    "perplexity": ppl(m, ids), "prune_seconds": res["seconds"], "hidden_size": res["hidden_size"],
                    "middle_layer": res["layer_shapes"][len(res["layer_shapes"]) // 2]}
            del m
            wout = out.with_suffix(f".tp-{crit}-{ratio}.json")
            env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
            cmd = [str(py), __file__, "--worker", "--worker-out", str(wout), "--ratio", str(ratio),
                   "--importance", crit, "--target", str(ours["parameters"]), "--source", args.source,
                   "--max-tokens", str(args.max_tokens), "--samples", str(args.samples), "--seqlen",
                   str(args.seqlen), "--calib-seed", str(args.calib_seed), "--threads", str(args.threads),
                   "--bisect-steps", str(args.bisect_steps)]
            try:
                subprocess.run(cmd, check=True, env=env, timeout=args.tp_timeout)
                theirs = json.loads(wout.read_text())
            except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
                # torch-pruning 1.6.1 can loop forever building the dependency graph of a grouped-query
                # attention model (VainF/Torch-Pruning#527): report it instead of hanging
                theirs = {"side": f"torch-pruning {TP_VERSION}", "importance": crit, "ratio": ratio,
                          "error": f"{type(e).__name__}: {str(e)[:300]}"}
            with out.open("a") as f:
                for r in (ours, theirs):
                    f.write(json.dumps({**r, "dense": dense, "max_tokens": args.max_tokens}) + "\n")
            rows.append((ours, theirs))
            tp_txt = (f"{theirs['parameters']:,} / {theirs['perplexity']:,.1f} / {theirs['prune_seconds']:.0f}s"
                      if "error" not in theirs else f"failed ({theirs['error']})")
            print(f"block {ratio} {crit}: ours {ours['parameters']:,} / {ours['perplexity']:,.1f} / "
                  f"{ours['prune_seconds']:.0f}s | torch-pruning {tp_txt}", flush=True)
    print(f"\nPTB test (sparsegpt preset), first {args.max_tokens} tokens; dense {dense['parameters']:,} "
          f"parameters, perplexity {dense['perplexity']:.1f}\n")
    print("| level | ratio | criterion | ours parameters | ours PTB ppl | ours s | torch-pruning parameters | "
          "torch-pruning PTB ppl | torch-pruning s | torch-pruning channel ratio |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for o, t in rows:
        tp_cells = (f"{t['parameters']:,} | {t['perplexity']:,.1f} | {t['prune_seconds']:.0f} | "
                    f"{t['tp_pruning_ratio']:.4f}" if "error" not in t else "failed | | | ")
        print(f"| block | {o['ratio']} | {o['importance']} | {o['parameters']:,} | {o['perplexity']:,.1f} | "
              f"{o['prune_seconds']:.0f} | {tp_cells} |")


if __name__ == "__main__":
    main()
