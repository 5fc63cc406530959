"""Metrics records of one checkpoint: :func:`evaluate_perplexity`, :func:`evaluate_zeroshot`,
:func:`evaluate_cost` and :func:`evaluate_latency` load a checkpoint, measure it, and return the values
*and* the protocol that produced them (:func:`~llm_compression.evaluate.memory.evaluate_memory`, which
measures in a fresh process, lives in :mod:`.memory`). Imports torch; the package :mod:`llm_compression.evaluate`
loads this module on first use of one of its names.
"""

from __future__ import annotations

import time

import torch

from ..data import load_text, tokenize_stream
from ..models import load_checkpoint, read_compression
from .cost import cost_metrics, cost_notes, nm_pattern
from .latency import measure_latency
from .memory import evaluate_memory, measure_peak_memory, quant_scheme as _quant_scheme  # noqa: F401
from .perplexity import bos_rows, check_bos_fed, perplexity, with_bos  # noqa: F401 (BOS helpers, shared)
from ..protocols import (PRESETS, ProtocolError, check_eval_dtype, expected_windows, model_context_length,  # noqa: F401
                         resolve_protocol)

from .run import METRICS_SCHEMA  # noqa: E402,F401


def needs_bos(model) -> bool:
    """Models whose evaluation windows must start with BOS (Gemma: PTB perplexity 111 with it, 352 without)."""
    return str(getattr(model.config, "model_type", "")).startswith("gemma")


def _runtime(model) -> dict:
    p = next(model.parameters())
    return {"device": str(p.device), "dtype": str(getattr(model, "dtype", p.dtype)).replace("torch.", ""),
            "torch_threads": torch.get_num_threads()}


def resolve_bos(model, tokenizer, bos: str | bool = "auto") -> int | None:
    """BOS token id to put in front of every window, or None.

    ``"auto"``: only for models that need it (:func:`needs_bos`); ``True``/``False`` force it.

    Raises:
        ValueError: BOS requested but the tokenizer has none; an unknown ``bos`` value.
    """
    if bos not in ("auto", True, False, "true", "false"):
        raise ValueError(f"bos {bos!r} must be 'auto', true or false")
    use = needs_bos(model) if bos == "auto" else bos in (True, "true")
    if use and tokenizer.bos_token_id is None:
        raise ValueError("bos requested but the tokenizer has no BOS token")
    return tokenizer.bos_token_id if use else None


def perplexity_of_model(
    model,
    tokenizer,
    *,
    dataset: str,
    preset: str = "custom",
    split: str | None = None,
    join: str | None = None,
    documents: int | None = None,
    path: str | None = None,
    seqlen: int | None = 512,
    max_tokens: int | None = None,
    batch_size: int = 1,
    last_window: str = "drop",
    bos: str | bool = "auto",
    device: str | None = None,
    dtype: str = "float32",
    progress: bool = False,
) -> dict:
    """Perplexity of an already-loaded ``model`` under a named protocol (see :mod:`.protocols`).

    Args:
        preset: ``sparsegpt``, ``llm-pruner`` or ``custom``; fixes split/join/window rules.
        seqlen: window length (``None``: the model's ``max_position_embeddings``); llm-pruner uses 128.
        max_tokens: cap on the token stream (recorded as ``limit_tokens``/``capped``).
        batch_size: windows per forward pass; the value does not depend on it.
        bos: ``"auto"`` (BOS per window only for models that need it, e.g. Gemma), True or False.
        dtype: compute dtype, ``float32`` (default), ``bfloat16`` or ``float16`` (not on CPU): the forward
            runs under ``torch.autocast`` in it, losses are fp32 (see :func:`.perplexity.perplexity`).

    Returns:
        ``{"metrics": {"perplexity", "perplexity_ci95_low", "perplexity_ci95_high", "nll_sum"}, "windows": {"nll",
        "tokens"}, "protocol": {...}, "runtime": {...}}``; the protocol holds
        preset, reference, dataset, split, source, join, seqlen, stride, windows, scored/stream/split
        tokens, cap, BOS use, last-window rule, batch size and compute ``dtype``; the runtime holds the
        device, the weights' dtype, threads, wall and CPU seconds, tokens/s and the evaluation's peak
        memory (``peak_memory_bytes``: CPU resident set or CUDA allocated, model included, bytes).

    Raises:
        ProtocolError: a setting that contradicts the preset, or a bad ``dtype`` (``float16`` on CPU).
        CorpusError: the corpus cannot be loaded.
    """
    check_eval_dtype(dtype, device if device is not None else next(model.parameters()).device)
    proto = resolve_protocol(preset, dataset, seqlen=seqlen, split=split, join=join, documents=documents,
                             last_window=last_window)
    window = proto.seqlen if proto.seqlen is not None else model_context_length(model)
    bos_id = resolve_bos(model, tokenizer, bos)
    corpus = load_text(dataset, proto.split, path=path, join=proto.join, documents=proto.documents)
    ids = tokenize_stream(tokenizer, corpus.text)
    full_tokens = int(ids.numel())
    if proto.max_windows is not None:
        ids = ids[: proto.max_windows * window]
    available = int(ids.numel())
    if max_tokens is not None:
        ids = ids[:max_tokens]
    r = perplexity(model, ids, seqlen=window, batch_size=batch_size, bos_token_id=bos_id,
                   last_window=proto.last_window, device=device, dtype=dtype, progress=progress)
    protocol = {
        **corpus.protocol,
        "preset": proto.preset,
        "reference": proto.reference,
        **({"note": proto.note} if proto.note else {}),
        "seqlen_source": "given" if proto.seqlen is not None else "model max_position_embeddings",
        "max_windows": proto.max_windows,
        "split_tokens": full_tokens,
        "limit_tokens": max_tokens,
        "capped": max_tokens is not None and max_tokens < available,
        **{k: r[k] for k in ("seqlen", "stride", "windows", "scored_tokens", "stream_tokens", "bos", "last_window")},
        "batch_size": batch_size,
        "dtype": r["dtype"],
        "dtype_note": ("forward as loaded (runtime.dtype); fp32 losses" if r["dtype"] == "float32" else
                       f"forward under torch.autocast({r['dtype']}), weights as loaded (runtime.dtype); "
                       "fp32 log-softmax and NLL sum"),
    }
    return {
        "metrics": {"perplexity": r["perplexity"], "perplexity_ci95_low": r["perplexity_ci95_low"],
                    "perplexity_ci95_high": r["perplexity_ci95_high"], "nll_sum": r["nll_sum"]},
        # per-window NLL sums and scored tokens: the units of the interval, and of paired comparisons between
        # variants scored on the same windows (llm_compression.stats.paired_perplexity_ratio)
        "windows": {"nll": r["window_nll"], "tokens": r["window_tokens"]},
        "protocol": protocol,
        "runtime": {**_runtime(model), **{k: r[k] for k in ("seconds", "cpu_seconds", "tokens_per_second",
                                                             "peak_memory_bytes", "memory_before_bytes",
                                                             "peak_memory_kind")}},
    }


def evaluate_perplexity(ckpt_dir, *, device: str = "cpu", **kwargs) -> dict:
    """Load the checkpoint at ``ckpt_dir`` and measure :func:`perplexity_of_model` on it.

    Keyword arguments are those of :func:`perplexity_of_model` (dataset, preset, split, join, path,
    seqlen, max_tokens, batch_size, last_window, bos, dtype, progress). The protocol and the dtype
    are checked before the model is loaded.

    Raises:
        ProtocolError, CorpusError, FileNotFoundError (no checkpoint at ``ckpt_dir``).
    """
    check_eval_dtype(kwargs.get("dtype", "float32"), device)
    resolve_protocol(kwargs.get("preset", "custom"), kwargs["dataset"], seqlen=kwargs.get("seqlen", 512),
                     split=kwargs.get("split"), join=kwargs.get("join"), documents=kwargs.get("documents"),
                     last_window=kwargs.get("last_window", "drop"))
    model, tok = load_checkpoint(ckpt_dir, device=device)
    return perplexity_of_model(model, tok, device=device, **kwargs)


def evaluate_zeroshot(ckpt_dir, *, device: str = "cpu", tasks=None, limit=None, batch_size: int = 8,
                      source: str = "auto") -> dict:
    """Zero-shot accuracy (lm-eval, :mod:`.zeroshot`) of the checkpoint at ``ckpt_dir`` as loaded by
    :func:`~llm_compression.models.load_checkpoint` (so pruned and 4-bit checkpoints work).

    Raises:
        ZeroShotError: unknown task/source or missing data, checked before the model is loaded.
    """
    from .zeroshot import TASKS, check_tasks, resolve_source, zeroshot_of_model

    tasks = list(tasks) if tasks else list(TASKS)
    check_tasks(tasks)
    resolve_source(source)
    model, tok = load_checkpoint(ckpt_dir, device=device)
    return zeroshot_of_model(model, tok, tasks=tasks, limit=limit, batch_size=batch_size, source=source,
                             device=device)


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
    model, _ = load_checkpoint(ckpt_dir, device=device, tokenizer=False)
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


def evaluate_latency(ckpt_dir, *, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 5,
                     warmup: int = 1, seed: int = 0, device: str = "cpu", threads: int | None = None) -> dict:
    """Prefill seconds and greedy decode tokens/s with a KV cache (see :mod:`.latency`).

    Args:
        threads: torch's thread count for the timed forwards (restored afterwards); None keeps the
            process's. The record's ``threads`` is the count the forwards ran with.
    """
    t0 = time.perf_counter()
    model, _ = load_checkpoint(ckpt_dir, device=device, tokenizer=False)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        r = measure_latency(model, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                            warmup=warmup, seed=seed)
    finally:
        torch.set_num_threads(before)
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
