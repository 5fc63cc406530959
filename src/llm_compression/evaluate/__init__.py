"""Evaluation of a checkpoint: perplexity (:mod:`.perplexity`) and cost (:mod:`.cost`).

:func:`evaluate_perplexity` and :func:`evaluate_cost` load a checkpoint, measure it, and return a
metrics record: the values *and* the protocol that produced them, so that two numbers are only
compared when their protocols match.
"""

from __future__ import annotations

import time

import torch

from ..data import load_text, tokenize_stream
from ..models import load_checkpoint, read_compression
from .cost import cost_metrics
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


def evaluate_cost(ckpt_dir, *, device: str = "cpu") -> dict:
    """Parameters (logical), non-zero parameters, sparsity over prunable Linear weights, and weight
    bytes on disk, measured on the checkpoint at ``ckpt_dir``."""
    t0 = time.perf_counter()
    model, _ = load_checkpoint(ckpt_dir, device=device)
    m = cost_metrics(model, ckpt_dir)
    comp = read_compression(ckpt_dir)
    return {
        "metrics": m,
        "protocol": {"what": "parameters, non-zero parameters, sparsity over prunable decoder Linear weights, "
                             "bytes of *.safetensors on disk",
                     "quantization": (comp.get("quantization") or {}).get("scheme")},
        "runtime": {**_runtime(model), "seconds": time.perf_counter() - t0},
    }
