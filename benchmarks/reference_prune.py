#!/usr/bin/env python
"""Time the original research code of SparseGPT and Wanda on a checkpoint, the way their scripts run.

Imports the per-layer classes of the reference repositories (``SparseGPT`` from IST-DASLab/sparsegpt
``sparsegpt.py``; ``WrappedGPT`` from locuslab/wanda ``lib/layerwrapper.py``) and drives them as their
Llama scripts do (``llama_sequential`` / ``prune_wanda``): block-0 inputs of every calibration
window captured into one ``[n, seqlen, hidden]`` buffer, then per block: one window at a time
through the block with forward hooks feeding the layer objects, prune every Linear (SparseGPT
``fasterprune(ratio, 0, 0, percdamp, blocksize)``; Wanda ``|W| * sqrt(scaler_row)``, the lowest
``int(cols * ratio)`` of each row by a stable sort), one window at a time again for the next
block's inputs. The corpus is tokenized as their data loaders do it, the whole text in one
tokenizer call (that call's transient memory is part of the reference code's peak RSS, as it is
when their scripts run). The model loading and the window starts are this project's (the imported
fp32 checkpoint; the starts of our default sampler), so the windows are ours, token for token
(``windows_sha256`` in the row), and the two are timed on the same work.

    python benchmarks/reference_prune.py --reference-dir DIR --method sparsegpt --out row.json

``DIR`` holds ``sparsegpt/`` (a checkout of https://github.com/IST-DASLab/sparsegpt) and ``wanda/``
(https://github.com/locuslab/wanda); nothing of them is copied into this repository.
:mod:`prune_benchmark` runs this in a fresh process per method (``--reference-dir``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args) -> dict:
    import psutil
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    from llm_compression.data import load_text, torch_starts, windows_sha256
    from llm_compression.models import load_checkpoint

    ref = Path(args.reference_dir)
    if args.method == "sparsegpt":
        sys.path.insert(0, str(ref / "sparsegpt"))
        torch.cuda.synchronize = lambda *a, **k: None  # CPU: fasterprune calls it for its timing print
        from sparsegpt import SparseGPT as LayerObject  # noqa: N813
    elif args.method == "wanda":
        sys.path.insert(0, str(ref / "wanda" / "lib"))
        from layerwrapper import WrappedGPT as LayerObject  # noqa: N813
    else:
        raise SystemExit(f"--method {args.method!r}: sparsegpt or wanda")

    proc = psutil.Process()
    model, tok = load_checkpoint(args.checkpoint, dtype="float32")
    model.config.use_cache = False
    corpus = load_text(args.corpus, args.split)
    # the reference loaders' tokenization (get_ptb / get_wikitext2 / get_c4 of both repositories): the
    # whole text in one tokenizer call, kept as a tensor; no special tokens, as our default sampler
    # (SmolLM2's tokenizer adds none either way), and our sampler's starts, so the windows are ours
    stream = tok(corpus.text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    starts = torch_starts(stream.numel(), samples=args.samples, seqlen=args.seqlen, seed=args.seed)
    ids = torch.stack([stream[s : s + args.seqlen] for s in starts])
    del corpus
    rss_loaded = proc.memory_info().rss
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    layers = model.model.layers
    n = ids.shape[0]
    with torch.no_grad():
        inps = torch.zeros(n, args.seqlen, model.config.hidden_size)
        seen = {"i": 0, "kwargs": None}

        class Capture(nn.Module):
            def __init__(self, block):
                super().__init__()
                self.block = block

            def forward(self, x, **kwargs):
                inps[seen["i"]] = x[0]
                seen["i"] += 1
                seen["kwargs"] = kwargs
                raise ValueError  # stop after block 0's input

        layers[0] = Capture(layers[0])
        for j in range(n):
            try:
                model(ids[j : j + 1])
            except ValueError:
                pass
        layers[0] = layers[0].block
        kwargs = {k: v for k, v in seen["kwargs"].items() if k not in ("past_key_values", "past_key_value", "use_cache")}
        outs = torch.zeros_like(inps)

        def forward_all(layer):
            for j in range(n):
                o = layer(inps[j].unsqueeze(0), **kwargs)
                outs[j] = (o[0] if isinstance(o, (tuple, list)) else o).reshape(inps[j].shape)

        for layer in layers:
            subset = {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}
            objs = {name: LayerObject(m) for name, m in subset.items()}

            def feed(name):
                def f(_, inp, out):
                    objs[name].add_batch(inp[0].data, out.data)
                return f

            hooks = [m.register_forward_hook(feed(name)) for name, m in subset.items()]
            forward_all(layer)
            for h in hooks:
                h.remove()
            for name, m in subset.items():
                if args.method == "sparsegpt":
                    with contextlib.redirect_stdout(io.StringIO()):
                        objs[name].fasterprune(args.ratio, prunen=0, prunem=0, percdamp=0.01, blocksize=128)
                    objs[name].free()
                else:
                    W = m.weight.data
                    metric = W.abs() * torch.sqrt(objs[name].scaler_row.reshape(1, -1))
                    order = torch.sort(metric, dim=-1, stable=True)[1]
                    mask = torch.zeros_like(metric, dtype=torch.bool)
                    mask.scatter_(1, order[:, : int(W.shape[1] * args.ratio)], True)
                    W[mask] = 0
            del objs
            forward_all(layer)
            inps, outs = outs, inps
    prune_s = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    zeros = sum(int((m.weight == 0).sum()) for layer in layers for m in layer.modules() if isinstance(m, nn.Linear))
    total = sum(m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, nn.Linear))
    return {
        "method": f"reference-{args.method}", "level": "unstructured", "ratio": args.ratio, "samples": n,
        "seqlen": args.seqlen, "threads": args.threads, "dtype": "float32", "batch_size": 1,
        "prune_seconds": prune_s,
        "prune_cpu_seconds": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
        "rss_after_load_mb": rss_loaded / 1e6, "blocks": len(layers),
        "block_seconds_mean": prune_s / len(layers), "block_seconds_max": None,
        "sparsity": zeros / total, "load_avg_1min_end": os.getloadavg()[0],
        "windows_sha256": windows_sha256(ids),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-dir", required=True, help="folder with sparsegpt/ and wanda/ checkouts")
    ap.add_argument("--method", required=True, choices=["sparsegpt", "wanda"])
    ap.add_argument("--checkpoint", default=str(ROOT / "results" / "smollm2-135m" / "base"))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--corpus", default="ptb")
    ap.add_argument("--split", default="train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the row as JSON here (else print it)")
    args = ap.parse_args(argv)
    row = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(row))
    else:
        print(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
