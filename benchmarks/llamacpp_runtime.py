"""PyTorch against llama.cpp on the checkpoints of a finished run: parity of the GGUF export, then speed, size,
memory and perplexity per format.

Two tables, printed as Markdown:

1. ``--parity``: for each checkpoint (dense, an unstructured, a block-pruned with per-layer widths, a
   channel-pruned and a LoRA-healed one), the f32 GGUF export (:func:`llm_compression.gguf_export.export_artifact`)
   against the checkpoint in PyTorch: PTB perplexity under the workflow's protocol (same tokenizer, windows and
   scoring; ``--tokens`` tokens) in both runtimes, their relative difference, and whether the greedy continuations
   of the demo prompts are identical.
2. ``--speed``: for the dense, block-pruned and channel-pruned checkpoints, PyTorch fp32, bitsandbytes NF4-DQ
   (PyTorch) and llama.cpp f32 / f16 / Q8_0 / Q4_K_M: perplexity, file size, prompt (prefill) and decode
   tokens/s (the latency protocol: ``--prompt-tokens`` prompt, ``--new-tokens`` greedy steps, median of
   ``--repeats``), peak resident memory of one ``--memory-seqlen``-token forward in a fresh process, and the
   tensor types llama.cpp's quantizer actually wrote (fallbacks counted).

Usage (after ``make run``; artifacts go to ``--out``, a scratch folder)::

    .venv/bin/python benchmarks/llamacpp_runtime.py --parity --speed --threads 2

Take timings with nothing else running; the script prints the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PROMPTS = ["The capital of France is", "To make a cup of tea, first"]
CHECKPOINTS = {
    "dense": "base",
    "magnitude 50%": "pruned/magnitude_unstructured_0.5_x1",
    "block 50% (per-layer widths)": "pruned/llmpruner-element1_block_0.5_x1",
    "channel 20%": "pruned/llmpruner-element1_channel_0.2_x1",
    "block 50% + LoRA": "healed/llmpruner-element1_block_0.5_x1/lora",
}
SPEED = ("dense", "block 50% (per-layer widths)", "channel 20%")


def _ppl_kwargs(tokens: int) -> dict:
    return dict(dataset="ptb", preset="sparsegpt", seqlen=512, max_tokens=tokens, batch_size=1)


#: LoRA recipe of the checkpoint this script heals itself when the run's healed one is missing (short, fp32)
QUICK_LORA = {"method": "lora", "steps": 4, "batch_size": 2, "seqlen": 128, "learning_rate": 1.0e-3, "dtype": "float32",
              "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}, "data": {"format": "corpus", "corpus": "lambada",
                                                                          "split": "test"}}


def healed_checkpoint(results: Path, out: Path) -> tuple[Path, str]:
    """The run's LoRA-healed block-pruned checkpoint, or one healed here with :data:`QUICK_LORA` from the run's
    block-pruned checkpoint (merged adapters either way)."""
    ckpt = results / CHECKPOINTS["block 50% + LoRA"]
    if ckpt.exists():
        return ckpt, "the run's"
    own = out / "healed_lora_quick"
    if not own.exists():
        from llm_compression.checkpoint import load_checkpoint, provenance
        from llm_compression.heal import heal_model, save_healed

        pruned = results / CHECKPOINTS["block 50% (per-layer widths)"]
        model, tok = load_checkpoint(pruned)
        res = heal_model(model, tok, QUICK_LORA)
        save_healed(res, tok, own, provenance("heal", str(pruned), healing={"name": "lora", **res.recipe},
                                              result=res.info))
    return own, "4 fp32 LoRA steps, healed here"


def parity(results: Path, out: Path, tokens: int, threads: int, max_new_tokens: int) -> list[str]:
    import torch

    from llm_compression.evaluate.generate import generate_greedy
    from llm_compression.evaluate.llamacpp import evaluate_perplexity_gguf, generate_gguf
    from llm_compression.evaluate.records import evaluate_perplexity
    from llm_compression.gguf_export import export_artifact
    from llm_compression.models import load_checkpoint

    torch.set_num_threads(threads)
    rows = ["| checkpoint | GGUF architecture | PyTorch fp32 PTB ppl | llama.cpp f32 PTB ppl | difference | "
            "greedy continuations identical |", "|---|---|---|---|---|---|"]
    for label, rel in CHECKPOINTS.items():
        ckpt = results / rel
        if label == "block 50% + LoRA" and (results / CHECKPOINTS["block 50% (per-layer widths)"]).exists():
            ckpt, how = healed_checkpoint(results, out)
            label += f" ({how})"
        if not ckpt.exists():
            rows.append(f"| {label} | (no checkpoint at {ckpt}) | | | | |")
            continue
        art = out / rel.replace("/", "_") / "gguf-f32"
        if not art.exists():
            export_artifact(ckpt, art, "gguf-f32", threads=threads)
        rec = __import__("json").loads((art / "gguf.json").read_text())
        pt = evaluate_perplexity(ckpt, **_ppl_kwargs(tokens))["metrics"]["perplexity"]
        lc = evaluate_perplexity_gguf(art, threads=threads, **_ppl_kwargs(tokens))["metrics"]["perplexity"]
        model, tok = load_checkpoint(ckpt)
        g_pt = generate_greedy(model, tok, PROMPTS, max_new_tokens=max_new_tokens)
        g_lc = generate_gguf(art, tok, PROMPTS, max_new_tokens=max_new_tokens, threads=threads)
        same = sum(a["completion"] == b["completion"] for a, b in zip(g_pt, g_lc))
        rows.append(f"| {label} | {rec['architecture']} | {pt:.4f} | {lc:.4f} | {100 * (lc / pt - 1):+.4f}% | "
                    f"{same}/{len(PROMPTS)} |")
        print(rows[-1], flush=True)
    return rows


def speed(results: Path, out: Path, tokens: int, threads: int, prompt_tokens: int, new_tokens: int,
          repeats: int, memory_seqlen: int) -> list[str]:
    import torch

    from llm_compression.evaluate.llamacpp import (evaluate_cost_gguf, evaluate_perplexity_gguf,
                                                   measure_latency_gguf)
    from llm_compression.evaluate.memory import measure_peak_memory
    from llm_compression.evaluate.records import evaluate_latency, evaluate_perplexity
    from llm_compression.evaluate.cost import disk_bytes
    from llm_compression.gguf_export import export_artifact
    from llm_compression.quantize import quantize_checkpoint

    torch.set_num_threads(threads)
    rows = ["| checkpoint | runtime / format | PTB ppl | file MB | prompt tokens/s | decode tokens/s | "
            "peak RSS MB | tensor types (llama.cpp) |", "|---|---|---|---|---|---|---|---|"]
    lat = dict(prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats, warmup=1)
    for label in SPEED:
        ckpt = results / CHECKPOINTS[label]
        if not ckpt.exists():
            rows.append(f"| {label} | (no checkpoint at {ckpt}) | | | | | | |")
            continue
        nf4 = out / CHECKPOINTS[label].replace("/", "_") / "nf4-dq"
        if not nf4.exists():
            quantize_checkpoint(ckpt, nf4, scheme="nf4-dq")
        for name, art in (("PyTorch fp32", ckpt), ("PyTorch NF4-DQ", nf4)):
            p = evaluate_perplexity(art, **_ppl_kwargs(tokens))["metrics"]["perplexity"]
            m = evaluate_latency(art, **lat)["metrics"]
            mem = measure_peak_memory(art, seqlen=memory_seqlen, threads=threads)
            rows.append(f"| {label} | {name} | {p:.3f} | {disk_bytes(art) / 1e6:.1f} | "
                        f"{m['prefill_tokens_per_second_median']:.0f} | {m['decode_tokens_per_second_median']:.1f} "
                        f"({m['decode_tokens_per_second_min']:.1f}-{m['decode_tokens_per_second_max']:.1f}) | "
                        f"{mem['peak_memory_bytes'] / 1e6:.0f} | |")
            print(rows[-1], flush=True)
        for scheme in ("gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"):
            art = out / CHECKPOINTS[label].replace("/", "_") / scheme
            if not art.exists():
                export_artifact(ckpt, art, scheme, threads=threads)
            p = evaluate_perplexity_gguf(art, threads=threads, **_ppl_kwargs(tokens))["metrics"]["perplexity"]
            m = measure_latency_gguf(art, threads=threads, **lat)
            mem = measure_peak_memory(art, seqlen=memory_seqlen, threads=threads)
            c = evaluate_cost_gguf(art, threads=threads)["metrics"]
            types = ", ".join(f"{k} {v}" for k, v in sorted(c["gguf_type_counts"].items(), key=lambda kv: -kv[1]))
            rows.append(f"| {label} | llama.cpp {scheme[5:]} | {p:.3f} | {c['disk_bytes'] / 1e6:.1f} | "
                        f"{m['prefill_tokens_per_second_median']:.0f} | {m['decode_tokens_per_second_median']:.1f} "
                        f"({m['decode_tokens_per_second_min']:.1f}-{m['decode_tokens_per_second_max']:.1f}) | "
                        f"{mem['peak_memory_bytes'] / 1e6:.0f} | {types} ({c['gguf_fallback_count']} fallbacks) |")
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="results folder of a finished run (make run)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="/tmp/llamacpp-benchmark", help="scratch folder for the exported artifacts")
    ap.add_argument("--parity", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--tokens", type=int, default=4096, help="PTB test tokens scored (first N)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-seqlen", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    a = ap.parse_args(argv)
    results = Path(a.results) / a.model
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}; threads {a.threads}", flush=True)
    t0 = time.perf_counter()
    if a.parity:
        print("\n".join(["", "## Parity (f32 GGUF in llama.cpp against the checkpoint in PyTorch)", ""]
                        + parity(results, out, a.tokens, a.threads, a.max_new_tokens)))
    if a.speed:
        print("\n".join(["", "## Runtimes and formats", ""]
                        + speed(results, out, a.tokens, a.threads, a.prompt_tokens, a.new_tokens, a.repeats,
                                a.memory_seqlen)))
    print(f"\nload average at end: {os.getloadavg()}; {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
