#!/usr/bin/env python
"""How much matrix arithmetic SparseGPT and Wanda pruning need, ours and the reference code's, and how
fast this machine does it: the floor under issue 15's pruning-time ratios.

Counts, per calibration token and decoder block of a Llama-style model (``config.json`` of the
checkpoint: hidden size ``h``, MLP width ``i``, query / key-value heads and head dim), the multiply-adds
(MACs) of each pruning pass:

- *statistics pass*: the block forward that feeds the pruners. Ours stops at the input of the block's
  last Linear (the MLP down projection, whose output that pass does not use); the reference code
  (IST-DASLab/sparsegpt ``llama_sequential``, locuslab/wanda ``prune_wanda``) runs the whole block;
- *output pass*: the pruned block run again to make the next block's inputs. Both skip nothing
  except that ours does not run it for the last block;
- *Hessians* (SparseGPT, ``H = 2/n X^T X``, Frantar & Alistarh 2023, Sec. 3.1/Algorithm 1): ``d^2`` per
  token per Hessian of input width ``d`` in the reference code, one per Linear (7 per block). Ours
  accumulates one Hessian per distinct input (q/k/v share theirs, gate/up theirs: 4 per block), and of
  each only the column blocks on and above the diagonal (``accumulate_gram_upper_``: about 0.56-0.6
  of ``d^2`` for ``d`` of 576 to 4,096). Wanda's statistic,
  ``||X_j||_2^2`` (Sun et al. 2024, Eq. 1), is ``d`` per token: not matrix work, not counted;
- *attention*: ``QK^T`` and ``AV`` of a causal window, ``heads x head_dim x (L+1)`` MACs per token on
  average (lower triangle only; a kernel that computes the masked half does twice that);
- *column sweep* (SparseGPT, Algorithm 1's lazy batch updates): about ``rows x cols^2 / 2`` per Linear
  plus the ``cols^3`` of the inverse-Hessian Cholesky factor; counted once per block, not per token.

It then times this machine's matrix products at the very shapes of one calibration batch (``batch x
seqlen`` rows: the Linear forwards in fp32 and bf16, ``X^T X`` in fp32, the thread count given) and
prints, for each method and implementation, the TFLOP, the time those products alone would take at the
measured rates (the *floor*: no attention softmax, norms, copies or Python), and, with ``--measured
FILE`` (a ``prune_benchmark.py --json`` file), the measured pruning time and measured / floor.

    python benchmarks/prune_flops.py --checkpoint results/smollm2-135m/base
    python benchmarks/prune_flops.py --checkpoint DIR --measured prune.json   # floors next to a run

Ours / reference at equal arithmetic rate is the ratio of the floors: the pruning-time ratio that
doing less arithmetic alone can give; anything below it needs a faster arithmetic rate (bf16) or
less arithmetic than the method's passes need.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def block_shapes(cfg: dict) -> dict:
    """Linear shapes ``name -> (in_features, out_features)`` and attention sizes of one decoder block.

    Raises:
        ValueError: a config without the Llama-style keys this count needs (names the missing key).
    """
    need = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ValueError(f"config.json lacks {missing}: this count covers Llama-style decoders only")
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or h // nh
    return {
        "linears": {
            "q_proj": (h, nh * hd), "k_proj": (h, nkv * hd), "v_proj": (h, nkv * hd),
            "o_proj": (nh * hd, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        },
        "heads": nh, "head_dim": hd, "layers": cfg["num_hidden_layers"], "hidden": h, "mlp": i,
    }


def pass_macs(shapes: dict, seqlen: int) -> dict:
    """MACs per calibration token and block of each pass (see the module docstring)."""
    lin = shapes["linears"]
    linear = {n: a * b for n, (a, b) in lin.items()}
    attention = shapes["heads"] * shapes["head_dim"] * (seqlen + 1)  # causal QK^T + AV, per token
    h, i, o_in = shapes["hidden"], shapes["mlp"], lin["o_proj"][0]
    return {
        "full_forward_linear": sum(linear.values()),
        "stats_forward_linear_ours": sum(linear.values()) - linear["down_proj"],
        "attention": attention,
        # distinct inputs: (q,k,v), o, (gate,up), down, upper blocks only; the reference: one per Linear, whole
        "hessian_ours": 2 * gram_upper_macs(h) + gram_upper_macs(o_in) + gram_upper_macs(i),
        "hessian_reference": 3 * h * h + o_in * o_in + 2 * h * h + i * i,
    }


def gram_upper_macs(d: int) -> int:
    """MACs per token of ours' ``X^T X`` for input width ``d``: the block rows of
    :func:`llm_compression.prune.sparsegpt.accumulate_gram_upper_` (row ``i`` times the columns from
    its first on), ``d^2`` when ``d`` is below two blocks (one block)."""
    from llm_compression.prune.sparsegpt import gram_blocks

    return sum((j - i) * (d - i) for i, j in gram_blocks(d))


def sweep_macs(shapes: dict) -> int:
    """SparseGPT column sweep and inverse-Hessian factor, MACs per block (not per token)."""
    total = 0
    for cols, rows in shapes["linears"].values():
        total += rows * cols * cols // 2 + cols ** 3
    return total


def work(method: str, impl: str, shapes: dict, tokens: int, seqlen: int) -> dict:
    """FLOPs (2 x MACs) of one pruning run by kind: ``forward`` (Linear products), ``attention``,
    ``hessian``, ``sweep``."""
    m = pass_macs(shapes, seqlen)
    layers = shapes["layers"]
    if impl == "ours":
        stats, outputs_blocks = m["stats_forward_linear_ours"], layers - 1
    else:
        stats, outputs_blocks = m["full_forward_linear"], layers
    forward = tokens * (stats * layers + m["full_forward_linear"] * outputs_blocks)
    attention = tokens * m["attention"] * (layers + outputs_blocks)
    hessian = sweep = 0
    if method == "sparsegpt":
        hessian = tokens * layers * m["hessian_ours" if impl == "ours" else "hessian_reference"]
        sweep = layers * sweep_macs(shapes)
    return {"forward": 2 * forward, "attention": 2 * attention, "hessian": 2 * hessian, "sweep": 2 * sweep}


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel choice)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_rates(shapes: dict, rows: int, threads: int, repeats: int) -> dict:
    """GFLOP/s of this machine at one calibration batch's shapes: ``forward_float32``,
    ``forward_bfloat16`` (all seven Linears of a block, ``rows`` tokens), ``hessian_float32`` (the four
    distinct ``X^T X`` widths, accumulated whole into an fp32 ``H`` with ``addmm_``, as the reference code
    does) and ``hessian_upper_float32`` (the same, ours' way: upper column blocks only, their MACs)."""
    from llm_compression.prune.sparsegpt import accumulate_gram_upper_
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        ws = [torch.randn(b, a, dtype=dtype) for a, b in shapes["linears"].values()]
        xs = [torch.randn(rows, a, dtype=dtype) for a, _ in shapes["linears"].values()]
        flops = sum(2 * rows * a * b for a, b in shapes["linears"].values())

        def fwd():
            with torch.no_grad():
                for x, w in zip(xs, ws):
                    torch.nn.functional.linear(x, w)

        rates[f"forward_{str(dtype).removeprefix('torch.')}"] = flops / _median_seconds(fwd, repeats) / 1e9
    lin = shapes["linears"]
    widths = [shapes["hidden"], lin["o_proj"][0], shapes["hidden"], shapes["mlp"]]
    xs = [torch.randn(rows, d) for d in widths]
    hs = [torch.zeros(d, d) for d in widths]
    flops = sum(2 * rows * d * d for d in widths)

    def hess():
        for x, H in zip(xs, hs):
            H.addmm_(x.t(), x, alpha=1e-3)

    rates["hessian_float32"] = flops / _median_seconds(hess, repeats) / 1e9

    def hess_upper():
        for x, H in zip(xs, hs):
            accumulate_gram_upper_(H, x, 1e-3)

    flops_upper = sum(2 * rows * gram_upper_macs(d) for d in widths)
    rates["hessian_upper_float32"] = flops_upper / _median_seconds(hess_upper, repeats) / 1e9
    return rates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="results/smollm2-135m/base", help="folder with config.json")
    ap.add_argument("--samples", type=int, default=64, help="calibration windows (default 64)")
    ap.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per block forward (default 8)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per product (median; default 5)")
    ap.add_argument("--measured", help="prune_benchmark.py --json file: measured times beside the floors")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    cfg_path = Path(args.checkpoint) / "config.json"
    if not cfg_path.is_file():
        ap.error(f"--checkpoint {args.checkpoint!r} has no config.json (import the model first, or point at a folder with one)")
    cfg = json.loads(cfg_path.read_text())
    cfg = cfg.get("text_config", cfg)
    shapes = block_shapes(cfg)
    tokens = args.samples * args.seqlen
    rates = measure_rates(shapes, args.batch_size * args.seqlen, args.threads, args.repeats)
    load = os.getloadavg()
    measured = {}
    if args.measured:
        data = json.loads(Path(args.measured).read_text())
        for row in data["rows"] if isinstance(data, dict) else data:
            method = row["method"]  # "sparsegpt", or "reference-sparsegpt" for the reference code
            impl = "reference" if method.startswith("reference-") else "ours"
            key = (method.removeprefix("reference-"), impl, row.get("compute_dtype") or "float32")
            measured[key] = row.get("prune_seconds")

    print(f"# {args.checkpoint}: {shapes['layers']} blocks, hidden {shapes['hidden']}, MLP {shapes['mlp']}, "
          f"{shapes['heads']} heads x {shapes['head_dim']}; calibration {args.samples} x {args.seqlen} tokens, "
          f"batch {args.batch_size}, {args.threads} threads; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("# measured GFLOP/s at one batch's shapes: "
          + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
    print("| method | implementation | forwards dtype | forward TFLOP | attention TFLOP | Hessian TFLOP "
          "| sweep TFLOP | floor s | measured s | measured / floor |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows, floors = [], {}
    for method in ("sparsegpt", "wanda"):
        for impl in ("ours", "reference"):
            for dtype in (("float32", "bfloat16") if impl == "ours" else ("float32",)):
                w = work(method, impl, shapes, tokens, args.seqlen)
                fwd_rate = rates[f"forward_{dtype}"]
                # attention counted at the forward rate of its dtype; the sweep at the fp32 product rate
                hess_rate = rates["hessian_upper_float32" if impl == "ours" else "hessian_float32"]
                floor = ((w["forward"] + w["attention"]) / fwd_rate + w["hessian"] / hess_rate
                         + w["sweep"] / rates["forward_float32"]) / 1e9
                floors[(method, impl, dtype)] = floor
                meas = measured.get((method, impl, dtype))
                rows.append({"method": method, "implementation": impl, "dtype": dtype, **w, "floor_seconds": floor,
                             "measured_seconds": meas})
                print(f"| {method} | {impl} | {dtype} | {w['forward'] / 1e12:.2f} | {w['attention'] / 1e12:.2f} | "
                      f"{w['hessian'] / 1e12:.2f} | {w['sweep'] / 1e12:.3f} | {floor:.1f} | "
                      f"{'' if meas is None else f'{meas:.1f}'} | {'' if meas is None else f'{meas / floor:.2f}'} |")
    print()
    for method in ("sparsegpt", "wanda"):
        ref = floors[(method, "reference", "float32")]
        print(f"{method}: floor ours / floor reference = fp32 {floors[(method, 'ours', 'float32')] / ref:.3f}, "
              f"bf16 forwards {floors[(method, 'ours', 'bfloat16')] / ref:.3f} (the time ratio at equal efficiency)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rates_gflops": rates, "rows": rows, "loadavg": load,
                                               "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
