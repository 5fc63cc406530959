"""Perplexity under the standard non-overlapping-window protocol.

Protocol (SparseGPT, Frantar & Alistarh 2023, Sec. 4 "Datasets and evaluation"; Wanda uses the same
code): the test split is joined into one token stream, cut into ``n = floor(N / seqlen)``
non-overlapping windows of ``seqlen`` tokens (a trailing partial window is dropped unless
``last_window="keep"``), each window is scored independently, and

    perplexity = exp( sum of token negative log-likelihoods / number of scored tokens ).

Inside a window without BOS the first token has no context and is not scored, so a window scores
``seqlen - 1`` tokens. With ``bos=True`` a BOS token is put in front of every window and all its
``seqlen`` tokens are scored (Gemma models need this). The count of scored tokens is exact; the
SparseGPT reference code instead multiplies the mean loss by ``seqlen``, a <0.2% difference at 512.

Cost: the loss reads the model's logits in place (:func:`window_nll`), so an evaluation runs at the
speed of a plain ``model(input_ids).logits`` forward over the same windows and holds no second
full-vocabulary copy of them. ``dtype="bfloat16"`` runs the forward under ``torch.autocast`` (fp32
losses); the record gives the dtype, wall and CPU seconds, tokens/s and peak memory.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F

from ..data import load_text, tokenize_stream
from ..protocols import ProtocolError, check_eval_dtype, model_context_length, resolve_protocol
from ..stats import perplexity_interval
from .process_memory import track_peak_memory


def with_bos(ids: list[int], bos_token_id: int) -> list[int]:
    """Token ids with exactly one BOS in front: ``bos_token_id`` is prepended unless ``ids`` already
    starts with it (a tokenizer whose template adds BOS itself), and repeated leading BOS are merged."""
    i = 0
    while i < len(ids) and ids[i] == bos_token_id:
        i += 1
    return [bos_token_id, *ids[i:]]


def bos_rows(x: torch.Tensor, bos_token_id: int | None) -> tuple[int, int, int]:
    """What the model was fed, per row of ``x`` ``[batch, seq]`` (unpadded at the left):
    ``(rows, rows starting with exactly one BOS, rows starting with two or more)``; ``(rows, 0, 0)``
    when the tokenizer has no BOS."""
    rows = int(x.shape[0])
    if bos_token_id is None or x.numel() == 0:
        return rows, 0, 0
    first = x[:, 0] == bos_token_id
    second = x[:, 1] == bos_token_id if x.shape[1] > 1 else torch.zeros_like(first)
    return rows, int((first & ~second).sum()), int((first & second).sum())


def check_bos_fed(rows: int, one_bos: int, more_bos: int, *, wanted: bool, what: str) -> None:
    """Check that the inputs a record will describe are what the protocol says: with ``wanted`` every
    one of ``rows`` starts with exactly one BOS, without it none does.

    Raises:
        RuntimeError: naming how many rows broke the rule (the record would otherwise claim more
            than happened).
    """
    if wanted and (one_bos != rows or more_bos):
        raise RuntimeError(f"{what}: BOS was requested, but only {one_bos} of {rows} model input rows started "
                           f"with exactly one BOS ({more_bos} with several)")
    if not wanted and (one_bos or more_bos):
        raise RuntimeError(f"{what}: BOS was not requested, but {one_bos + more_bos} of {rows} model input rows "
                           "started with it")


def window_stream(ids: torch.Tensor, seqlen: int, last_window: str = "drop") -> list[torch.Tensor]:
    """Split a 1-D token stream ``[N]`` into non-overlapping windows of ``seqlen`` tokens.

    Raises:
        ValueError: ``seqlen < 2``, an unknown ``last_window``, or a stream shorter than one window.
    """
    if seqlen < 2:
        raise ValueError(f"seqlen {seqlen} must be >= 2")
    if last_window not in ("drop", "keep"):
        raise ValueError(f"last_window {last_window!r} must be 'drop' or 'keep'")
    n = ids.numel()
    full = n // seqlen
    windows = [ids[i * seqlen : (i + 1) * seqlen] for i in range(full)]
    if last_window == "keep" and n - full * seqlen >= 2:
        windows.append(ids[full * seqlen :])
    if not windows:
        raise ValueError(f"token stream of {n} tokens is shorter than one window of {seqlen}")
    return windows


#: target positions per log-softmax chunk: bounds the evaluation's fp32 temporary to
#: ``NLL_CHUNK_TOKENS x vocab`` floats (200 MB at SmolLM2's 49,152) whatever the window length
NLL_CHUNK_TOKENS = 1024


def window_nll(logits: torch.Tensor, x: torch.Tensor, *, chunk_tokens: int = NLL_CHUNK_TOKENS,
               per_row: list | None = None) -> torch.Tensor:
    """Summed next-token negative log-likelihood (nats, fp32 0-d tensor) of windows ``x`` ``[batch, seq]``
    given the model's ``logits`` ``[batch, seq, vocab]`` (position t predicts token t+1, so
    ``batch * (seq - 1)`` tokens are scored).

    The logits are read in place: each chunk of at most ``chunk_tokens`` positions of one window is
    a view, upcast to fp32 only when the logits are lower precision (bf16/fp16), log-softmaxed, and
    only the target's log-probability is kept. No full-vocabulary copy of the batch is made. The
    kept log-probabilities are summed by ``F.nll_loss(reduction="sum")`` over the whole batch, as
    ``F.cross_entropy`` over the flattened batch did before (same fp32 values, same summation), so
    fp32 results are bit-identical to that computation.

    ``per_row``, when given, is extended with each window's own NLL sum (nats, Python float, summed in float64),
    the unit of the perplexity's interval (:func:`llm_compression.stats.perplexity_interval`).
    """
    seq = x.shape[1]
    picked = []
    for r in range(x.shape[0]):
        row = []
        for s in range(0, seq - 1, chunk_tokens):
            e = min(s + chunk_tokens, seq - 1)
            logp = torch.log_softmax(logits[r, s:e].float(), dim=-1)  # .float() is a no-op on fp32
            row.append(logp.gather(1, x[r, s + 1 : e + 1].unsqueeze(1)))
        if per_row is not None:
            per_row.append(-float(sum(t.double().sum() for t in row)))
        picked += row
    p = torch.cat(picked)  # [batch * (seq - 1), 1] target log-probabilities
    return F.nll_loss(p, torch.zeros(p.shape[0], dtype=torch.long, device=p.device), reduction="sum")


@torch.no_grad()
def perplexity(
    model,
    ids: torch.Tensor,
    *,
    seqlen: int,
    batch_size: int = 1,
    bos_token_id: int | None = None,
    last_window: str = "drop",
    device: str | torch.device | None = None,
    dtype: str = "float32",
    progress: bool = False,
) -> dict:
    """Perplexity of ``model`` on the token stream ``ids`` (LongTensor ``[N]``).

    Args:
        model: a causal LM returning ``.logits`` of shape ``[batch, seq, vocab]``, or a
            :class:`~llm_compression.streaming.StreamedCheckpoint`: its blocks are then streamed, every window
            through block 0, then block 1, ... (:func:`~llm_compression.streaming.streamed_forward`), with the
            same value bit for bit.
        seqlen: window length in stream tokens.
        batch_size: windows per forward pass; does not change the value (windows of equal length
            are batched; a kept shorter last window runs alone).
        bos_token_id: when given, prepended to every window, and every stream token is scored.
        last_window: ``"drop"`` (standard) or ``"keep"`` a trailing partial window.
        device: where inputs go; defaults to the device of the model's first parameter.
        dtype: compute dtype (:data:`~llm_compression.protocols.EVAL_DTYPES`). ``float32`` runs the
            model as loaded; ``bfloat16``/``float16`` run the forward under ``torch.autocast`` in that
            dtype (matmuls and attention in low precision, weights kept as loaded); log-softmax and
            the NLL sum are fp32 in every case (:func:`window_nll`).

    Returns:
        dict with ``perplexity``, its 95% interval ``perplexity_ci95_low``/``_high`` (windows as the units,
        :func:`llm_compression.stats.perplexity_interval`; None with one window), ``nll_sum`` (nats),
        ``window_nll`` and ``window_tokens`` (each window's NLL sum and scored tokens, in order), ``scored_tokens``, ``windows``,
        ``stream_tokens``, ``seqlen``, ``stride`` (= seqlen), ``bos``, ``last_window``, ``dtype``,
        ``seconds`` (wall), ``cpu_seconds`` (this process, all threads), ``tokens_per_second``
        (stream tokens of the windows / wall seconds) and the evaluation's peak memory
        (``peak_memory_bytes``, ``memory_before_bytes``, ``peak_memory_kind``; see
        :func:`~llm_compression.evaluate.memory.track_peak_memory`).

    Raises:
        ProtocolError: ``dtype`` not valid, or ``float16`` on CPU (checked before any forward).
        ValueError: bad ``seqlen``/``last_window`` or a stream shorter than one window (:func:`window_stream`).
    """
    from ..streaming import StreamedCheckpoint, streamed_forward

    streamed = isinstance(model, StreamedCheckpoint)
    if device is None:
        device = model.device if streamed else next(model.parameters()).device
    check_eval_dtype(dtype, device)
    if streamed and dtype != "float32":
        raise ProtocolError(f"dtype {dtype!r}: a streamed evaluation runs in the weights' own dtype; use float32")
    windows = window_stream(ids, seqlen, last_window)
    groups: list[list[torch.Tensor]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch_size and groups[-1][0].numel() == w.numel():
            groups[-1].append(w)
        else:
            groups.append([w])
    it = groups
    if progress:
        from tqdm import tqdm

        it = tqdm(groups, desc="perplexity", unit="batch", mininterval=5)
    # one autocast context around all batches: its cache casts each weight once, not once per batch
    autocast = (torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype)) if dtype != "float32"
                else contextlib.nullcontext())
    nll_sum = 0.0
    scored = 0
    per_window: list[float] = []
    window_tokens: list[int] = []
    t0, c0 = time.perf_counter(), time.process_time()
    def batches():
        for group in it:
            x = torch.stack(group)
            if bos_token_id is not None:
                x = torch.cat([torch.full((x.shape[0], 1), bos_token_id, dtype=x.dtype), x], dim=1)
            # the record's "bos" is checked against what is fed
            check_bos_fed(*bos_rows(x, bos_token_id), wanted=bos_token_id is not None, what="perplexity")
            yield x.to(device)

    def logits_of():
        if streamed:  # every batch through block 0, then block 1, ...: one block's weights resident
            xs = list(batches())
            yield from zip(xs, streamed_forward(model, xs))
        else:
            for x in batches():
                yield x, model(input_ids=x, use_cache=False).logits

    with track_peak_memory(device) as mem, autocast:
        for x, logits in logits_of():
            # predict token t+1 from position t; with BOS every stream token is a target
            nll_sum += float(window_nll(logits, x, per_row=per_window))
            scored += x.shape[0] * (x.shape[1] - 1)
            window_tokens += [x.shape[1] - 1] * x.shape[0]
            del logits
    seconds = time.perf_counter() - t0
    low, high = perplexity_interval(per_window, window_tokens) if len(per_window) > 1 else (None, None)
    return {
        "perplexity": math.exp(nll_sum / scored),
        "perplexity_ci95_low": low,
        "perplexity_ci95_high": high,
        "nll_sum": nll_sum,
        "window_nll": per_window,
        "window_tokens": window_tokens,
        "scored_tokens": scored,
        "windows": len(windows),
        "stream_tokens": int(ids.numel()),
        "seqlen": seqlen,
        "stride": seqlen,
        "bos": bos_token_id is not None,
        "last_window": last_window,
        "dtype": dtype,
        "seconds": seconds,
        "cpu_seconds": time.process_time() - c0,
        "tokens_per_second": sum(w.numel() for w in windows) / seconds if seconds > 0 else None,
        **mem,
    }


def needs_bos(model) -> bool:
    """Models whose evaluation windows must start with BOS (Gemma: PTB perplexity 111 with it, 352 without)."""
    return str(getattr(model.config, "model_type", "")).startswith("gemma")


def model_runtime(model) -> dict:
    """Where and how a PyTorch model runs: its device, weights' dtype and torch's thread count (and
    ``streamed: true`` for a :class:`~llm_compression.streaming.StreamedCheckpoint`)."""
    from ..streaming import StreamedCheckpoint

    if isinstance(model, StreamedCheckpoint):
        return {"device": str(model.device), "dtype": str(model.model.dtype).replace("torch.", ""),
                "torch_threads": torch.get_num_threads(), "streamed": True}
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
        "runtime": {**model_runtime(model), **{k: r[k] for k in ("seconds", "cpu_seconds", "tokens_per_second",
                                                             "peak_memory_bytes", "memory_before_bytes",
                                                             "peak_memory_kind")}},
    }
