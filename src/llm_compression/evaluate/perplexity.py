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

from ..protocols import check_eval_dtype
from ..stats import perplexity_interval
from .memory import track_peak_memory


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
        model: a causal LM returning ``.logits`` of shape ``[batch, seq, vocab]``.
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
    if device is None:
        device = next(model.parameters()).device
    check_eval_dtype(dtype, device)
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
    with track_peak_memory(device) as mem, autocast:
        for group in it:
            x = torch.stack(group)
            if bos_token_id is not None:
                x = torch.cat([torch.full((x.shape[0], 1), bos_token_id, dtype=x.dtype), x], dim=1)
            # the record's "bos" is checked against what is fed
            check_bos_fed(*bos_rows(x, bos_token_id), wanted=bos_token_id is not None, what="perplexity")
            x = x.to(device)
            logits = model(input_ids=x, use_cache=False).logits
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
