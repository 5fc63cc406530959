"""Evaluation of a checkpoint: perplexity (:mod:`.perplexity`, presets in :mod:`.protocols`),
zero-shot accuracy (:mod:`.zeroshot`), generation demo (:mod:`.generate`) and cost (:mod:`.cost`).

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
from .protocols import PRESETS, ProtocolError, expected_windows, model_context_length, resolve_protocol

METRICS_SCHEMA = "llm-compression/metrics/v1"


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
    progress: bool = False,
) -> dict:
    """Perplexity of an already-loaded ``model`` under a named protocol (see :mod:`.protocols`).

    Args:
        preset: ``sparsegpt``, ``llm-pruner`` or ``custom``; fixes split/join/window rules.
        seqlen: window length (``None``: the model's ``max_position_embeddings``); llm-pruner uses 128.
        max_tokens: cap on the token stream (recorded as ``limit_tokens``/``capped``).
        batch_size: windows per forward pass; the value does not depend on it.
        bos: ``"auto"`` (BOS per window only for models that need it, e.g. Gemma), True or False.

    Returns:
        ``{"metrics": {"perplexity", "nll_sum"}, "protocol": {...}, "runtime": {...}}``; the protocol holds
        preset, reference, dataset, split, source, join, seqlen, stride, windows, scored/stream/split
        tokens, cap, BOS use, last-window rule and batch size.

    Raises:
        ProtocolError: a setting that contradicts the preset. CorpusError: the corpus cannot be loaded.
    """
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
                   last_window=proto.last_window, device=device, progress=progress)
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
    }
    return {
        "metrics": {"perplexity": r["perplexity"], "nll_sum": r["nll_sum"]},
        "protocol": protocol,
        "runtime": {**_runtime(model), "seconds": r["seconds"], "tokens_per_second": r["tokens_per_second"]},
    }


def evaluate_perplexity(ckpt_dir, *, device: str = "cpu", **kwargs) -> dict:
    """Load the checkpoint at ``ckpt_dir`` and measure :func:`perplexity_of_model` on it.

    Keyword arguments are those of :func:`perplexity_of_model` (dataset, preset, split, join, path,
    seqlen, max_tokens, batch_size, last_window, bos, progress). The protocol is checked before the
    model is loaded.

    Raises:
        ProtocolError, CorpusError, FileNotFoundError (no checkpoint at ``ckpt_dir``).
    """
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
