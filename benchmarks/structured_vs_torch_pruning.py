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
(first-order Taylor) or ``l2``. torch-pruning, ``--tp-mode``:

- ``recipe`` (default): its LLM example (``examples/LLMs/prune_llm.py``: ``MetaPruner`` over all layers,
  hidden size, heads (``prune_num_heads``, ``head_pruning_ratio`` = the row's ratio) and MLP channels,
  ``round_to=4``, LM head ignored) with ``GroupTaylorImportance`` or ``GroupMagnitudeImportance(p=2)``.
  Matching parameter counts: its channel ``pruning_ratio`` is bisected (on a copy, magnitude importance:
  the count does not depend on the criterion) until its parameter count is the closest it can reach to
  ours (``round_to=4`` steps); the residual difference is printed.
- ``block``: our structure, so that only the criterion differs: the token embedding (hence the hidden
  size) and the first and last decoder layers ignored, ``head_pruning_ratio`` / ``pruning_ratio`` = the
  fractions of heads and MLP channels ours removed per layer; the same parameter count exactly.

Two settings make torch-pruning 1.6.1 trace the embedded model under transformers 5 at all (without them
``MetaPruner.__init__`` never returns, the symptom of VainF/Torch-Pruning#527):

- the tracing forward runs with ``use_cache=False`` (``forward_fn``). With the default
  ``use_cache=True``, the graph traced under transformers 5.23 contains the KV cache's ``torch.cat`` of
  the keys (after the rotary embedding) and of the values, two ``_ConcatOp`` nodes whose offsets
  torch-pruning cannot read; its dependency walk then goes round a cycle (attention -> cache concat ->
  rotary ``rotate_half`` concat -> attention), shifting the channel indices by one key/value width per
  turn, so its "already visited" test never matches and the walk never ends (found with ``py-spy dump``
  on the hung process and a cap on the group size). On a 1-layer tiny Llama (9 query / 3 key/value
  heads) torch-pruning 1.6.1 with the cache on finishes with transformers 4.46.3, 4.48.3 and 4.49.0
  (its own LLM example was run with 4.44-4.46) and not within 40 s with 4.50.3, 4.52.4 and 4.55.4
  (nor 4.57.1 and 5.23 within 60-150 s); with ``use_cache=False`` it finishes in under a second with
  4.50.3 and 5.23.
- eager attention on the torch-pruning side: transformers 5.23's SDPA path hands grouped-query keys and
  values to ``scaled_dot_product_attention`` without ``repeat_kv`` (``enable_gqa``, when there is no
  mask), which torch-pruning treats as an element-wise op over tensors of different widths
  (``RuntimeError: shape '[9, -1]' is invalid for input of size 24``; 4.50.3 still calls ``repeat_kv``
  and traces). Eager attention computes the same attention.

Protocol: PTB test, ``sparsegpt`` preset (space-joined, 512-token windows), first ``--max-tokens`` (4,096)
tokens; calibration for both Taylor variants: LAMBADA test, 10 x 128 tokens, seed 0 (one backward pass
over the same samples).

    OMP_NUM_THREADS=2 nice -n 5 python benchmarks/structured_vs_torch_pruning.py --out tp.jsonl
    OMP_NUM_THREADS=2 nice -n 5 python benchmarks/structured_vs_torch_pruning.py --out tp-block.jsonl --tp-mode block
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

def tp_prune(model, tok, calib, *, ratio: float, head_ratio: float, importance: str,
             frozen_layers: list[int] | None = None):
    """torch-pruning's LLM recipe on ``model`` in place; returns seconds (gradients included).

    ``frozen_layers`` (mode ``block``): also ignore the token embedding (so the hidden size, coupled to it,
    is kept) and every Linear of these decoder layers, which leaves torch-pruning the structures our block
    level prunes: heads and MLP channels of the other layers."""
    import torch
    import torch_pruning as tp

    t0 = time.perf_counter()
    cfg = model.config
    # eager attention: torch-pruning cannot trace grouped-query SDPA without repeat_kv (module docstring)
    model.set_attn_implementation("eager")
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
    ignored = [model.lm_head]
    if frozen_layers is not None:
        ignored.append(model.get_input_embeddings())
        for i in frozen_layers:
            ignored += [m for m in model.model.layers[i].modules() if isinstance(m, torch.nn.Linear)]
    example = calib[:1, :16]
    # use_cache=False: the KV cache's concatenations make the dependency walk endless (module docstring)
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=example, importance=imp, global_pruning=False, pruning_ratio=ratio,
        ignored_layers=ignored, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=head_ratio, round_to=4,
        forward_fn=lambda mod, x: mod(input_ids=x, use_cache=False).logits)
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


def bisect_ratio(model, tok, calib, *, head_ratio: float, target: int, steps: int) -> tuple[float, int]:
    """torch-pruning's channel ``pruning_ratio`` whose parameter count is closest to ``target`` (bisection on
    copies, magnitude importance: the count does not depend on the criterion); returns (ratio, parameters)."""
    lo, hi = 0.0, 0.9
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = copy.deepcopy(model)
        tp_prune(m, tok, calib, ratio=mid, head_ratio=head_ratio, importance="l2")
        n = count(m)
        del m
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (mid, n)
        if n > target:
            lo = mid
        else:
            hi = mid
    return best


def worker(args) -> None:
    """Every torch-pruning row of ``--jobs`` (JSON list of {ratio, importance, target}) in one process (one
    model load); one JSON line per row appended to ``--worker-out`` as soon as it is measured."""
    model, tok, ids, calib = setup(args)
    jobs = json.loads(Path(args.jobs).read_text())
    ratios: dict[tuple[float, int], tuple[float, int]] = {}
    n_layers = len(model.model.layers)
    for job in jobs:
        key = (job["ratio"], job["target"])
        t0 = time.perf_counter()
        frozen = None
        if args.tp_mode == "block":  # our structure: the heads and MLP channels ours removed, layers 1..n-2
            # torch-pruning removes ceil(ratio * heads) heads: a hair below the exact fraction gives the same count
            ratio, head_ratio, frozen = job["mlp_ratio"], max(0.0, job["head_ratio"] - 1e-9), [0, n_layers - 1]
        else:
            if key not in ratios:  # the same target for every criterion of a ratio: bisect once
                ratios[key] = bisect_ratio(model, tok, calib, head_ratio=job["ratio"], target=job["target"],
                                           steps=args.bisect_steps)
            ratio, head_ratio = ratios[key][0], job["ratio"]
        bisect_s = time.perf_counter() - t0
        m = copy.deepcopy(model)
        seconds = tp_prune(m, tok, calib, ratio=ratio, head_ratio=head_ratio, importance=job["importance"],
                           frozen_layers=frozen)
        layer = m.model.layers[len(m.model.layers) // 2]
        rec = {"side": f"torch-pruning {TP_VERSION}", "mode": args.tp_mode, "importance": job["importance"],
               "ratio": job["ratio"], "tp_pruning_ratio": ratio, "tp_head_pruning_ratio": head_ratio, "parameters": count(m), "target_parameters": job["target"],
               "perplexity": ppl(m, ids), "prune_seconds": seconds, "bisect_seconds": bisect_s,
               "attention": "eager",
               "hidden_size": m.get_input_embeddings().weight.shape[1],
               "middle_layer": {"num_attention_heads": layer.self_attn.q_proj.out_features // layer.self_attn.head_dim,
                                "num_key_value_heads": layer.self_attn.k_proj.out_features // layer.self_attn.head_dim,
                                "intermediate_size": layer.mlp.gate_proj.out_features}}
        del m
        with open(args.worker_out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"torch-pruning ({args.tp_mode}) block {job['ratio']} {job['importance']}: {rec['parameters']:,} parameters "
              f"(target {job['target']:,}, channel ratio {ratio:.4f}), PTB {rec['perplexity']:,.1f}, "
              f"prune {seconds:.0f}s (bisection {bisect_s:.0f}s)", flush=True)


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
    ap.add_argument("--tp-timeout", type=float, default=7200.0,
                    help="seconds allowed to the torch-pruning worker (every row: bisection, pruning, evaluation)")
    ap.add_argument("--tp-mode", choices=("recipe", "block"), default="recipe",
                    help="recipe: torch-pruning's LLM example (all layers, hidden size too), its channel ratio "
                         "bisected to our parameter count; block: our structure (hidden size kept, first and last "
                         "layer kept, the same numbers of heads and MLP channels removed), only the criterion differs")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--jobs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.out:
        ap.error("--out is required")
    out = Path(args.out)
    wout = out.with_suffix(".torch-pruning.jsonl")
    if wout.exists():
        ap.error(f"{wout} exists (rows of an earlier run); move it away or choose another --out")
    py = make_venv(Path(args.venv), TP_VERSION)

    from llm_compression.prune.structured import prune_structured

    model, tok, ids, calib = setup(args)
    dense = {"parameters": count(model), "perplexity": ppl(model, ids)}
    print(f"dense: {dense['parameters']:,} parameters, PTB perplexity {dense['perplexity']:.1f}", flush=True)
    ours_rows = []
    for ratio in args.ratios:
        for crit in args.criteria:
            m = copy.deepcopy(model)
            res = prune_structured(m, level="block", ratio=ratio, importance=CRITERIA[crit], calib_ids=calib)
            heads = [g for g in res["groups"] if g["kind"] in ("query_head", "attention_head")]
            mlp = [g for g in res["groups"] if g["kind"] == "mlp_channel"]
            ours = {"side": "ours", "importance": crit, "ratio": ratio, "parameters": res["parameters_after"],
                    "perplexity": ppl(m, ids), "prune_seconds": res["seconds"], "hidden_size": res["hidden_size"],
                    "middle_layer": res["layer_shapes"][len(res["layer_shapes"]) // 2],
                    # fractions actually removed per pruned layer (heads snapped to whole heads)
                    "head_ratio": 1 - heads[0]["after"] / heads[0]["before"],
                    "mlp_ratio": 1 - mlp[0]["after"] / mlp[0]["before"]}
            del m
            with out.open("a") as f:
                f.write(json.dumps({**ours, "dense": dense, "max_tokens": args.max_tokens}) + "\n")
            ours_rows.append(ours)
            print(f"ours block {ratio} {crit}: {ours['parameters']:,} parameters, PTB {ours['perplexity']:,.1f}, "
                  f"prune {ours['prune_seconds']:.0f}s", flush=True)
    del model
    jobs = [{"ratio": o["ratio"], "importance": o["importance"], "target": o["parameters"],
             "head_ratio": o["head_ratio"], "mlp_ratio": o["mlp_ratio"]} for o in ours_rows]
    jobs_file = out.with_suffix(".jobs.json")
    jobs_file.write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [str(py), __file__, "--worker", "--worker-out", str(wout), "--jobs", str(jobs_file),
           "--source", args.source, "--max-tokens", str(args.max_tokens), "--samples", str(args.samples),
           "--seqlen", str(args.seqlen), "--calib-seed", str(args.calib_seed), "--threads", str(args.threads),
           "--bisect-steps", str(args.bisect_steps), "--tp-mode", args.tp_mode]
    error = None
    try:
        subprocess.run(cmd, check=True, env=env, timeout=args.tp_timeout)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
        error = f"{type(e).__name__}: {str(e)[:300]}"
    theirs_by_row = {}
    if wout.exists():
        for line in wout.read_text().splitlines():
            r = json.loads(line)
            theirs_by_row[(r["ratio"], r["importance"])] = r
    rows = []
    with out.open("a") as f:
        for o in ours_rows:
            t = theirs_by_row.get((o["ratio"], o["importance"]),
                                  {"side": f"torch-pruning {TP_VERSION}", "importance": o["importance"],
                                   "ratio": o["ratio"], "error": error or "no row written"})
            f.write(json.dumps({**t, "dense": dense, "max_tokens": args.max_tokens}) + "\n")
            rows.append((o, t))
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
