"""Evaluation of a checkpoint: perplexity (:mod:`.perplexity`), cost (:mod:`.cost`), peak memory
(:mod:`.memory`) and latency (:mod:`.latency`).

:func:`evaluate_perplexity`, :func:`evaluate_cost`, :func:`evaluate_memory` and
:func:`evaluate_latency` load a checkpoint, measure it, and return a
metrics record: the values *and* the protocol that produced them, so that two numbers are only
compared when their protocols match.
"""

from __future__ import annotations

import time

import torch

from ..data import load_text, tokenize_stream
from ..models import load_checkpoint, read_compression
from .cost import cost_metrics, cost_notes, nm_pattern
from .latency import measure_latency
from .memory import measure_peak_memory
from .perplexity import perplexity

METRICS_SCHEMA = "llm-compression/metrics/v1"


def needs_bos(model) -> bool:
    """Models whose evaluation windows must start with BOS (Gemma: PTB perplexity 111 with it, 352 without)."""
    return str(getattr(model.config, "model_type", "")).startswith("gemma")


def _runtime(model) -> dict:
    p = next(model.parameters())
    return {"device": str(p.device), "dtype": str(getattr(model, "dtype", p.dtype)).replace("torch.", ""),
            "torch_threads": torch.get_num_threads()}


def evaluate_perplexity(
    ckpt_dir,
    *,
    dataset: str,
    split: str = "test",
    path: str | None = None,
    seqlen: int = 512,
    max_tokens: int | None = None,
    batch_size: int = 1,
    last_window: str = "drop",
    bos: str | bool = "auto",
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Perplexity of the checkpoint at ``ckpt_dir`` on one dataset split (see :mod:`.perplexity`).

    Returns:
        ``{"metrics": {"perplexity": ...}, "protocol": {...}, "runtime": {...}}``; the protocol
        records dataset, split, source, join, seqlen, stride, windows, scored and stream tokens,
        the token cap (``limit_tokens``), BOS use and the last-window rule.
    """
    model, tok = load_checkpoint(ckpt_dir, device=device)
    corpus = load_text(dataset, split, path=path)
    ids = tokenize_stream(tok, corpus.text)
    full_tokens = int(ids.numel())
    if max_tokens is not None:
        ids = ids[:max_tokens]
    use_bos = needs_bos(model) if bos == "auto" else bool(bos)
    bos_id = tok.bos_token_id if use_bos else None
    if use_bos and bos_id is None:
        raise ValueError(f"bos requested but the tokenizer of {ckpt_dir} has no BOS token")
    r = perplexity(model, ids, seqlen=seqlen, batch_size=batch_size, bos_token_id=bos_id,
                   last_window=last_window, device=device, progress=progress)
    protocol = {
        **corpus.protocol,
        "preset": "sparsegpt" if (max_tokens is None and last_window == "drop") else "custom",
        "split_tokens": full_tokens,
        "limit_tokens": max_tokens,
        "capped": max_tokens is not None and max_tokens < full_tokens,
        **{k: r[k] for k in ("seqlen", "stride", "windows", "scored_tokens", "stream_tokens", "bos", "last_window")},
        "batch_size": batch_size,
    }
    return {
        "metrics": {"perplexity": r["perplexity"], "nll_sum": r["nll_sum"]},
        "protocol": protocol,
        "runtime": {**_runtime(model), "seconds": r["seconds"], "tokens_per_second": r["tokens_per_second"]},
    }


def _quant_scheme(ckpt_dir) -> str | None:
    return (read_compression(ckpt_dir).get("quantization") or {}).get("scheme")


def evaluate_cost(ckpt_dir, *, seqlen: int = 512, device: str = "cpu") -> dict:
    """Parameters (logical, non-zero, per module type), sparsity over prunable Linear weights, bytes on
    disk and in memory, stored bits per Linear weight, and MACs of one ``seqlen``-token forward,
    measured on the checkpoint at ``ckpt_dir`` (see :mod:`.cost`).

    Raises:
        ValueError: ``seqlen`` < 1.
    """
    if int(seqlen) < 1:
        raise ValueError(f"cost seqlen {seqlen!r} must be >= 1")
    t0 = time.perf_counter()
    model, _ = load_checkpoint(ckpt_dir, device=device)
    m = cost_metrics(model, ckpt_dir, seqlen=int(seqlen))
    scheme = _quant_scheme(ckpt_dir)
    pattern = nm_pattern(model) if m["sparsity"] > 0 else None
    return {
        "metrics": m,
        "protocol": {"what": "logical parameters (4-bit unpacked), non-zero parameters, sparsity over prunable "
                             "decoder Linear weights, bytes of *.safetensors on disk, bytes of parameters+buffers+"
                             "quantization state in memory, MACs of one forward (batch 1, no KV cache): ptflops "
                             "Linear MACs + attention QK^T and AV over the full LxL",
                     "macs_seqlen": int(seqlen), "batch": 1,
                     "macs_counter": "ptflops pytorch backend, count_functional=False, bnb Linear hooks; "
                                     "attention closed form from module shapes",
                     "quantization": scheme, "sparsity_pattern": pattern or ("unstructured" if m["sparsity"] > 0 else None)},
        "notes": cost_notes(sparsity=m["sparsity"], pattern=pattern, quant=scheme),
        "runtime": {**_runtime(model), "seconds": time.perf_counter() - t0},
    }


def evaluate_memory(ckpt_dir, *, seqlen: int = 512, device: str = "cpu", threads: int | None = None) -> dict:
    """Peak memory of one ``seqlen``-token forward in a fresh process (see :mod:`.memory`)."""
    t0 = time.perf_counter()
    r = measure_peak_memory(ckpt_dir, seqlen=int(seqlen), device=device, threads=threads)
    kind = r.pop("peak_memory_kind")
    rss_kind = r.pop("peak_rss_kind")
    return {
        "metrics": r,
        "protocol": {"what": "peak memory of one forward (batch 1, no KV cache) in a fresh process",
                     "seqlen": int(seqlen), "peak_memory_kind": kind, "peak_rss_kind": rss_kind,
                     "quantization": _quant_scheme(ckpt_dir)},
        "notes": ["peak_memory_bytes includes the resident weights; unstructured zeros are stored densely and "
                  "do not lower it"],
        "runtime": {"device": r["device"], "torch_threads": r["threads"], "seconds": time.perf_counter() - t0},
    }


def evaluate_latency(ckpt_dir, *, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 5,
                     warmup: int = 1, seed: int = 0, device: str = "cpu") -> dict:
    """Prefill seconds and greedy decode tokens/s with a KV cache (see :mod:`.latency`)."""
    t0 = time.perf_counter()
    model, _ = load_checkpoint(ckpt_dir, device=device)
    r = measure_latency(model, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                        warmup=warmup, seed=seed)
    return {
        "metrics": r,
        "protocol": {"what": "prefill: one forward of prompt_tokens (use_cache, last-position logits); decode: "
                             "new_tokens greedy single-token forwards from that KV cache; warm-up repeats "
                             "discarded; median with min and max over repeats",
                     **{k: r[k] for k in ("prompt_tokens", "new_tokens", "repeats", "warmup", "threads", "device")},
                     "seed": seed,
                     "quantization": _quant_scheme(ckpt_dir)},
        "notes": ["measured with the dense/bitsandbytes kernels this artifact loads with; unstructured zeros "
                  "are multiplied like any other weight, so they do not speed it up"],
        "runtime": {**_runtime(model), "seconds": time.perf_counter() - t0},
    }
