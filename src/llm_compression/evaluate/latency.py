"""Latency of an artifact: prefill time for a prompt and greedy decode throughput with a KV cache.

Protocol (one repeat):

1. *prefill*: one forward of ``prompt_tokens`` token ids (batch 1, ``use_cache=True``, logits of the
   last position only, as ``generate`` does), timed;
2. *decode*: starting from that cache, ``new_tokens`` single-token forwards, each feeding the greedy
   (argmax) token of the previous step, timed together; throughput = ``new_tokens / seconds``.

``warmup`` untimed repeats come first (allocator, kernel selection, caches), then ``repeats`` timed
ones; the median is reported with the min and max, and every timed repeat is kept
(``prefill_seconds_repeats``, ``decode_tokens_per_second_repeats``, in run order) so a figure or a
reader can judge the spread; the aggregate table keeps only the scalar summaries. On CUDA every timed region ends with
``torch.cuda.synchronize()``. The prompt is ``prompt_tokens`` ids drawn with a fixed seed: the dense
kernels' cost does not depend on which tokens they are. The device and torch's thread count are
recorded with the numbers; they are meaningless without them.
"""

from __future__ import annotations

import statistics
import time

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def measure_latency(model, *, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 5,
                    warmup: int = 1, seed: int = 0) -> dict:
    """Prefill seconds and decode tokens/s of ``model`` (see the module doc for the protocol).

    Returns:
        dict with ``prefill_seconds_median|min|max``, ``prefill_tokens_per_second_median``,
        ``decode_tokens_per_second_median|min|max``, ``decode_seconds_per_token_median``,
        ``prefill_seconds_repeats`` and ``decode_tokens_per_second_repeats`` (lists of ``repeats``
        values, seconds and tokens/s, one per timed repeat in run order),
        ``prompt_tokens``, ``new_tokens``, ``repeats``, ``warmup``, ``threads``, ``device``.

    Raises:
        ValueError: a count below 1 (``warmup`` may be 0).
    """
    check_latency_counts(prompt_tokens, new_tokens, repeats, warmup)
    device = str(next(model.parameters()).device)
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = torch.randint(0, vocab, (1, int(prompt_tokens)), generator=torch.Generator().manual_seed(seed)).to(device)
    prefill, decode = [], []
    for r in range(int(warmup) + int(repeats)):
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        _sync(device)
        t1 = time.perf_counter()
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(int(new_tokens)):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        t2 = time.perf_counter()
        if r >= warmup:
            prefill.append(t1 - t0)
            decode.append(int(new_tokens) / (t2 - t1))
        del past, out
    return latency_summary(prefill, decode, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                           warmup=warmup, threads=torch.get_num_threads(), device=device)


def check_latency_counts(prompt_tokens, new_tokens, repeats, warmup) -> None:
    """The latency protocol's counts, checked before any work.

    Raises:
        ValueError: a count below 1 (``warmup`` may be 0), naming it.
    """
    for name, v, lo in (("prompt_tokens", prompt_tokens, 1), ("new_tokens", new_tokens, 1),
                        ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if int(v) < lo:
            raise ValueError(f"{name} {v!r} must be >= {lo}")


def latency_summary(prefill: list[float], decode: list[float], *, prompt_tokens: int, new_tokens: int,
                    repeats: int, warmup: int, threads: int, device: str) -> dict:
    """The latency record's metrics from the timed repeats (``prefill`` seconds, ``decode`` tokens/s, run order):
    medians with min and max, the repeats themselves, and the protocol's counts (see :func:`measure_latency`)."""
    pm, dm = statistics.median(prefill), statistics.median(decode)
    return {
        "prefill_seconds_median": pm,
        "prefill_seconds_min": min(prefill),
        "prefill_seconds_max": max(prefill),
        "prefill_tokens_per_second_median": int(prompt_tokens) / pm,
        "decode_tokens_per_second_median": dm,
        "decode_tokens_per_second_min": min(decode),
        "decode_tokens_per_second_max": max(decode),
        "decode_seconds_per_token_median": 1.0 / dm,
        "prefill_seconds_repeats": list(prefill),
        "decode_tokens_per_second_repeats": list(decode),
        "prompt_tokens": int(prompt_tokens),
        "new_tokens": int(new_tokens),
        "repeats": int(repeats),
        "warmup": int(warmup),
        "threads": int(threads),
        "device": device,
    }
