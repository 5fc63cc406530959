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
from .perplexity import (  # noqa: F401 (re-exported: perplexity under a protocol and the BOS helpers live there)
    bos_rows,
    check_bos_fed,
    model_runtime as _runtime,
    needs_bos,
    perplexity,
    perplexity_of_model,
    resolve_bos,
    with_bos,
)
from ..protocols import (PRESETS, ProtocolError, check_eval_dtype, expected_windows, model_context_length,  # noqa: F401
                         resolve_protocol)

from .run import METRICS_SCHEMA  # noqa: E402,F401


def evaluate_perplexity(ckpt_dir, *, device: str = "cpu", streamed: bool = False, gpus: int = 1,
                        device_mb: int | None = None, **kwargs) -> dict:
    """Load the checkpoint at ``ckpt_dir`` and measure :func:`perplexity_of_model` on it.

    Keyword arguments are those of :func:`perplexity_of_model` (dataset, preset, split, join, path,
    seqlen, max_tokens, batch_size, last_window, bos, dtype, progress). The protocol and the dtype
    are checked before the model is loaded. ``streamed``: the model is a
    :class:`~llm_compression.streaming.StreamedCheckpoint` (one decoder block resident at a time). ``gpus`` > 1:
    the model's layers are spread over that many GPUs (``device_mb`` each; see
    :func:`~llm_compression.checkpoint.spread_model`).

    Raises:
        ProtocolError, CorpusError, FileNotFoundError (no checkpoint at ``ckpt_dir``).
    """
    check_eval_dtype(kwargs.get("dtype", "float32"), device)
    resolve_protocol(kwargs.get("preset", "custom"), kwargs["dataset"], seqlen=kwargs.get("seqlen", 512),
                     split=kwargs.get("split"), join=kwargs.get("join"), documents=kwargs.get("documents"),
                     last_window=kwargs.get("last_window", "drop"))
    if streamed:  # the weights stay in their files; one decoder block on the device at a time
        from transformers import AutoTokenizer

        from ..streaming import StreamedCheckpoint

        model, tok = StreamedCheckpoint(ckpt_dir, device=device, load_outer=False), AutoTokenizer.from_pretrained(ckpt_dir)
    else:
        model, tok = load_checkpoint(ckpt_dir, device=device, gpus=gpus, device_mb=device_mb)
    return perplexity_of_model(model, tok, device=device, **kwargs)


def evaluate_zeroshot(ckpt_dir, *, device: str = "cpu", tasks=None, limit=None, batch_size: int = 8,
                      source: str = "auto", gpus: int = 1, device_mb: int | None = None) -> dict:
    """Zero-shot accuracy (lm-eval, :mod:`.zeroshot`) of the checkpoint at ``ckpt_dir`` as loaded by
    :func:`~llm_compression.models.load_checkpoint` (so pruned and 4-bit checkpoints work; ``gpus`` > 1 spreads
    it over that many GPUs).

    Raises:
        ZeroShotError: unknown task/source or missing data, checked before the model is loaded.
    """
    from .zeroshot import TASKS, check_tasks, resolve_source, zeroshot_of_model

    tasks = list(tasks) if tasks else list(TASKS)
    check_tasks(tasks)
    resolve_source(source)
    model, tok = load_checkpoint(ckpt_dir, device=device, gpus=gpus, device_mb=device_mb)
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
