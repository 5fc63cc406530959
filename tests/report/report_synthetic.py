"""Synthetic metrics records of the study's grid on a SmolLM2-135M-sized model, for figure tests.

Every method family of the study (dense; magnitude and Wanda at 0.5; SparseGPT 0.1..0.9 once and twice
plus one-shot at the cumulative sparsities; LLM-Pruner block and channel at four ratios, each also
LoRA-healed), each unquantized and NF4-DQ, with PTB and WikiText-2 perplexity, cost, memory, latency
(median/min/max over repeats) and zero-shot accuracy. Values follow the shapes of the README's measured
tables (dense PTB 75.4, block 0.25 -> 109.7 M parameters and 62.4 GMACs, ...); they are invented, not
measured, and only the figures' tests use them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from llm_compression.evaluate.zeroshot import add_accuracy_intervals
from llm_compression.stats import perplexity_interval
from llm_compression.variants import Pruning, Variant, cumulative_ratio, metrics_path

DENSE_PARAMS = 134_515_008
DENSE_LINEAR = 106_168_320
DENSE_GMACS = 77.913
#: structured ratio -> (parameters, GMACs, PTB perplexity, healed PTB perplexity)
BLOCK = {0.25: (109.74e6, 62.4, 515.3, 121.0), 0.4: (98.61e6, 56.7, 670.1, 150.0), 0.5: (91.16e6, 52.9, 833.3, 190.0),
         0.6: (77.52e6, 43.1, 28421.0, 610.0)}
CHANNEL = {0.2: (107.19e6, 63.9, 4761.0, 310.0), 0.3: (94.58e6, 57.5, 11503.0, 520.0),
           0.4: (79.87e6, 49.9, 7716.0, 800.0), 0.5: (67.26e6, 43.5, 9833.0, 1500.0)}
TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
PPL = ("ppl-ptb-sparsegpt", "ppl-wikitext2-sparsegpt")


def study_variants(small: bool = False) -> list[Variant]:
    """The study's grid (``small``: SparseGPT at 0.2/0.5/0.8, two ratios per structured level; every
    family, repeat, one-shot twin, healing and quantization still present)."""
    prunings = [Pruning("dense"), Pruning("magnitude", ratio=0.5), Pruning("wanda", ratio=0.5)]
    for r in ((0.2, 0.5, 0.8) if small else (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)):
        prunings += [Pruning("sparsegpt", ratio=r), Pruning("sparsegpt", ratio=r, repeat=2)]
        if cumulative_ratio(r, 2) <= 0.9:
            prunings.append(Pruning("sparsegpt", ratio=cumulative_ratio(r, 2)))
    prunings += [Pruning("llmpruner-element1", "block", r) for r in BLOCK if not small or r in (0.25, 0.5)]
    prunings += [Pruning("llmpruner-element1", "channel", r) for r in CHANNEL if not small or r in (0.2, 0.4)]
    out = []
    for p in dict.fromkeys(prunings):
        healings = ["none", "lora"] if p.level in ("block", "channel") else ["none"]
        out += [Variant(p, h, q) for h in healings for q in ("none", "nf4-dq")]
    return out


def _unstructured_ppl(method: str, sparsity: float, repeat: int) -> float:
    if method == "dense":
        return 75.4
    if method == "magnitude":
        return 1629.0
    if method == "wanda":
        return 165.4
    # SparseGPT: mild up to 50%, decades beyond; a repeat is a little worse than one-shot at its sparsity
    return 75.4 * math.exp(1.2 * sparsity ** 2 + 9.0 * max(0.0, sparsity - 0.55) ** 1.6) * (1.12 if repeat > 1 else 1.0)


def record(v: Variant, evaluation: str, rng: np.random.Generator) -> dict:
    """One metrics record of ``v`` (the layout of ``workflow/scripts/evaluate.py``)."""
    p = v.pruning
    q = v.quant != "none"
    structured = p.level in ("block", "channel")
    if structured:
        params, gmacs, ppl_ptb, ppl_healed = (BLOCK if p.level == "block" else CHANNEL)[p.ratio]
        ppl = ppl_healed if v.healing != "none" else ppl_ptb
        linear = DENSE_LINEAR - (DENSE_PARAMS - params)
        zeros = 0.0
        nonzero = params
    else:
        sparsity = 0.0 if p.is_dense else cumulative_ratio(p.ratio, p.repeat)
        params, gmacs, linear = DENSE_PARAMS, DENSE_GMACS, DENSE_LINEAR
        zeros = 30_000 + sparsity * DENSE_LINEAR
        ppl = _unstructured_ppl(p.method, sparsity, p.repeat)
        nonzero = DENSE_PARAMS - zeros
    if q:  # NF4 rounds the smallest weights to its zero code, and costs perplexity
        zeros += 0.095 * (linear - zeros)
        ppl *= 1.25
        nonzero = params - zeros
    weight_bytes = (params * 4) * (0.315 if q else 1.0)
    variant = v.row()
    if evaluation.startswith("ppl-"):
        ds = evaluation.split("-")[1]
        value = ppl if ds == "ptb" else ppl * 0.48
        proto = {"dataset": ds, "split": "test", "seqlen": 512, "windows": 16, "scored_tokens": 8176,
                 "join": "space" if ds == "ptb" else "blank-lines", "limit_tokens": 8192, "capped": True,
                 "preset": "sparsegpt"}
        # per-window NLLs as the evaluator records them: the same hard/easy windows for every variant (the
        # pairing), plus a little variant noise; centred so the windows give back exactly ``value``
        shared = np.random.default_rng(len(ds)).normal(0, 0.25, 16)
        own = rng.normal(0, 0.02, 16)
        per_token = math.log(value) + shared + own - (shared + own).mean()
        tokens = [511] * 16
        nll = [float(x * t) for x, t in zip(per_token, tokens)]
        lo, hi = perplexity_interval(nll, tokens)
        return {"model": "smollm2-135m", "variant": variant, "evaluation": evaluation,
                "metrics": {"perplexity": value, "perplexity_ci95_low": lo, "perplexity_ci95_high": hi,
                            "nll_sum": float(sum(nll))},
                "windows": {"nll": nll, "tokens": tokens}, "protocol": proto}
    if evaluation == "cost":
        metrics = {"parameters": params, "nonzero_parameters": nonzero, "sparsity": zeros / linear,
                   "prunable_weights": linear, "zero_weights": zeros, "disk_bytes": weight_bytes + 30e3,
                   "weight_bytes_in_memory": weight_bytes, "gmacs": gmacs, "macs_seqlen": 512}
        return {"model": "smollm2-135m", "variant": variant, "evaluation": "cost", "metrics": metrics,
                "protocol": {"macs_seqlen": 512}}
    if evaluation == "memory":
        return {"model": "smollm2-135m", "variant": variant, "evaluation": "memory",
                "metrics": {"peak_memory_bytes": weight_bytes + 620e6 + rng.normal(0, 3e6)},
                "protocol": {"seqlen": 512}}
    if evaluation == "latency":
        speed = (23.6 if q else 15.9) * (DENSE_PARAMS / params) ** 0.6
        reps = speed * (1 + rng.normal(0, 0.06, 5))
        pre = (0.33 * (params / DENSE_PARAMS)) * (1 + rng.normal(0, 0.08, 5))
        metrics = {"prefill_seconds_median": float(np.median(pre)), "prefill_seconds_min": float(pre.min()),
                   "prefill_seconds_max": float(pre.max()), "decode_tokens_per_second_median": float(np.median(reps)),
                   "decode_tokens_per_second_min": float(reps.min()), "decode_tokens_per_second_max": float(reps.max()),
                   "prefill_seconds_repeats": pre.tolist(), "decode_tokens_per_second_repeats": reps.tolist(),
                   "threads": 2, "device": "cpu"}
        return {"model": "smollm2-135m", "variant": variant, "evaluation": "latency", "metrics": metrics,
                "protocol": {"prompt_tokens": 128, "new_tokens": 32, "repeats": 5, "warmup": 1, "threads": 2,
                             "device": "cpu"}}
    if evaluation == "zeroshot":
        acc = max(0.25, 0.42 - 0.25 * math.log10(ppl / 75.4) / 2)
        tasks = {t: {"acc": round((acc + 0.02 * i - 0.06) * 100) / 100, "acc_stderr": 0.05, "samples": 100}
                 for i, t in enumerate(TASKS)}
        metrics = {"acc": float(np.mean([t["acc"] for t in tasks.values()])), "acc_tasks": len(tasks)}
        add_accuracy_intervals(tasks, metrics)
        return {"model": "smollm2-135m", "variant": variant, "evaluation": "zeroshot", "tasks": tasks,
                "metrics": metrics,
                "protocol": {"harness": "lm-eval", "limit": 100, "source": "offline",
                             "tasks": {t: {"split": "validation"} for t in TASKS}}}
    raise ValueError(evaluation)


def write_study_metrics(root: Path, variants: list[Variant] | None = None,
                        evaluations=PPL + ("cost", "memory", "latency", "zeroshot"), seed: int = 0) -> list[Path]:
    """Write one metrics JSON per (variant, evaluation) under ``root``; returns the files."""
    rng = np.random.default_rng(seed)
    files = []
    for v in variants if variants is not None else study_variants():
        for e in evaluations:
            f = Path(root) / metrics_path("smollm2-135m", v, e)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(record(v, e, rng)))
            files.append(f)
    return files
