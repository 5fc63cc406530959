"""CPU throughput of structurally pruned checkpoints against their dense parent.

Measures forward tokens/s (one ``[1, seqlen]`` window of PTB test, no cache) and cached greedy
generation tokens/s, interleaving the checkpoints round by round so that load from other processes
on a shared machine hits all of them alike; reports the median over rounds and the parameter count.

    python benchmarks/structured_throughput.py --threads 2 --rounds 5 \
        results/smollm2-135m/base results/smollm2-135m/pruned/llmpruner-element1_block_0.5_x1 ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from llm_compression.data import load_text, tokenize_stream
from llm_compression.models import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the JSON result here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    models = {}
    for d in a.checkpoints:
        m, tok = load_checkpoint(d)
        models[d] = m
    ids = tokenize_stream(tok, load_text("ptb", "test").text, max_tokens=a.seqlen)[None, :]
    prompt = ids[:, :16]
    fwd = {d: [] for d in models}
    gen = {d: [] for d in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up
            m(ids[:, :64])
        for _ in range(a.rounds):
            for d, m in models.items():
                t0 = time.perf_counter()
                m(ids, use_cache=False)
                fwd[d].append(a.seqlen / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                out = m.generate(prompt, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False,
                                 use_cache=True, pad_token_id=tok.eos_token_id)
                gen[d].append((out.shape[1] - prompt.shape[1]) / (time.perf_counter() - t0))
    rows = []
    base = a.checkpoints[0]
    for d, m in models.items():
        rows.append({
            "checkpoint": d,
            "parameters": sum(p.numel() for p in m.parameters()),
            "forward_tokens_per_s": statistics.median(fwd[d]),
            "generate_tokens_per_s": statistics.median(gen[d]),
            "forward_speedup": statistics.median(fwd[d]) / statistics.median(fwd[base]),
            "generate_speedup": statistics.median(gen[d]) / statistics.median(gen[base]),
        })
    result = {"protocol": {"threads": a.threads, "rounds": a.rounds, "forward_seqlen": a.seqlen,
                           "generate_prompt": prompt.shape[1], "generate_new_tokens": a.new_tokens,
                           "statistic": "median over interleaved rounds", "dtype": "float32", "device": "cpu"},
              "rows": rows}
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
