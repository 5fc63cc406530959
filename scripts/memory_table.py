"""Which model sizes fit which machine, from the memory plan (``llm_compression.memory_plan``): a Markdown table.

For published Llama shapes (their config.json values, written out below: nothing is downloaded) in bf16, it plans
SparseGPT 50% with the reference calibration (128 x 2048 tokens, one window per forward), WikiText-2 perplexity
(windows of 2,048, batch 1), LoRA healing (rank 8, 4 x 128 tokens per step) and NF4-DQ quantization, each on a
GPU (device memory, CUDA context included) and on a CPU-only host, in memory and streamed one decoder block at a
time where the job can stream. A cell says ``yes`` (fits in memory), ``N GPUs`` (perplexity and healing: spread over
the fewest GPUs of the column's size that hold it, at most 8), ``streamed`` (fits only streamed) or ``no``.

    .venv/bin/python scripts/memory_table.py              # the README's table
    .venv/bin/python scripts/memory_table.py --detail     # every estimate in GB

The plan is checked against measured peaks by ``benchmarks/streaming_memory.py`` (135 M to 1.5 B parameters) and
by every job of every run (``benchmarks/memory_plan_check.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llm_compression.memory_plan import (  # noqa: E402
    ModelShape,
    estimate_evaluation,
    estimate_heal,
    estimate_prune,
    estimate_quantize,
    spread,
)

#: published config.json values of the models in the table
SHAPES = {
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
    "Llama-3.2-3B": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True),
    "Llama-2-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "Llama-2-13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40, vocab_size=32000, tie_word_embeddings=False),
    "Llama-2-70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
}
#: machines: (label, GB of GPU memory or None, GB of host memory)
MACHINES = [("24 GB GPU", 24, None), ("40 GB GPU", 40, None), ("80 GB GPU", 80, None), ("24 GB host, no GPU", None, 24)]

SPARSEGPT = {"method": "sparsegpt", "level": "unstructured", "ratio": 0.5,
             "calibration": {"samples": 128, "seqlen": 2048, "batch_size": 1, "dtype": "bfloat16"}}
PERPLEXITY = {"kind": "perplexity", "seqlen": 2048, "batch_size": 1, "max_tokens": 300_000}
LORA = {"method": "lora", "batch_size": 4, "seqlen": 128, "lora": {"rank": 8}}
NF4 = {"scheme": "nf4-dq"}


def estimates(shape: ModelShape, cuda: bool) -> dict:
    """job -> (in-memory estimate, streamed estimate or None)."""
    return {
        "SparseGPT 50%": (estimate_prune(shape, SPARSEGPT, cuda=cuda), estimate_prune(shape, SPARSEGPT, streamed=True,
                                                                                    cuda=cuda)),
        "perplexity": (estimate_evaluation(shape, PERPLEXITY, cuda=cuda),
                       estimate_evaluation(shape, PERPLEXITY, streamed=True, cuda=cuda)),
        "LoRA healing": (estimate_heal(shape, LORA, cuda=cuda), None),
        "NF4-DQ": (estimate_quantize(shape, NF4, cuda=cuda), estimate_quantize(shape, NF4, streamed=True, cuda=cuda)),
    }


#: jobs whose model may be spread over several GPUs of the node (heal, perplexity; see docs/cluster.md)
SPREADABLE = ("perplexity", "LoRA healing")
MAX_GPUS = 8


def verdict(pair, gpu_gb, host_gb, spreadable: bool = False) -> str:
    """``yes``, ``N GPUs`` (spread over the fewest GPUs of that size that hold it, before streaming, as the plan
    chooses), ``streamed`` or ``no``."""
    def fits(e):
        return e.device_bytes <= gpu_gb * 1e9 if gpu_gb else e.host_bytes <= host_gb * 1e9

    mem, streamed = pair
    if fits(mem):
        return "yes"
    if gpu_gb and spreadable:
        n = next((k for k in range(2, MAX_GPUS + 1) if fits(spread(mem, k))), None)
        if n:
            return f"{n} GPUs"
    if streamed is not None and fits(streamed):
        return "streamed"
    return "no"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detail", action="store_true", help="print every estimate (GB) instead of the verdicts")
    ap.add_argument("--compact", action="store_true", help="one row per model, one cell per machine (README)")
    a = ap.parse_args()
    if a.compact:
        print("| model (bf16) | " + " | ".join(m[0] for m in MACHINES) + " |")
        print("|---|" + "---|" * len(MACHINES))
        for name, cfg in SHAPES.items():
            shape = ModelShape.from_config(cfg, "bfloat16")
            gpu, cpu = estimates(shape, True), estimates(shape, False)
            cells = []
            for _, g, h in MACHINES:
                v = {job: verdict(gpu[job] if g else cpu[job], g, h, job in SPREADABLE) for job in gpu}
                if all(x == "yes" for x in v.values()):
                    cells.append("all four jobs")
                    continue
                spread_words = sorted({x for x in v.values() if x.endswith("GPUs")})
                parts = [f"{', '.join(j for j, x in v.items() if x == k)} {word}"
                         for k, word in ([(w, f"on {w}") for w in spread_words]
                                         + [("streamed", "streamed"),
                                            ("no", "do not fit" if list(v.values()).count("no") > 1
                                             else "does not fit")])
                         if k in v.values()]
                cells.append("; ".join(parts))
            print(f"| {name} ({shape.params / 1e9:.1f} B) | " + " | ".join(cells) + " |")
        return
    if a.detail:
        print("| model | params (B) | job | GPU in memory | GPU streamed | host in memory | host streamed |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for name, cfg in SHAPES.items():
            shape = ModelShape.from_config(cfg, "bfloat16")
            gpu, cpu = estimates(shape, True), estimates(shape, False)
            for job in gpu:
                g, c = gpu[job], cpu[job]
                cells = [f"{g[0].device_bytes / 1e9:,.1f}", f"{g[1].device_bytes / 1e9:,.1f}" if g[1] else "-",
                         f"{c[0].host_bytes / 1e9:,.1f}", f"{c[1].host_bytes / 1e9:,.1f}" if c[1] else "-"]
                print(f"| {name} | {shape.params / 1e9:.2f} | {job} | " + " | ".join(cells) + " |")
        return
    print("| model (bf16) | job | " + " | ".join(m[0] for m in MACHINES) + " |")
    print("|---|---|" + "---|" * len(MACHINES))
    for name, cfg in SHAPES.items():
        shape = ModelShape.from_config(cfg, "bfloat16")
        gpu, cpu = estimates(shape, True), estimates(shape, False)
        for job in gpu:
            cells = [verdict(gpu[job] if g else cpu[job], g, h, job in SPREADABLE) for _, g, h in MACHINES]
            print(f"| {name} | {job} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
