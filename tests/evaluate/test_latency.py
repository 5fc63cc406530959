"""Latency protocol on an in-memory tiny model: every timed repeat is recorded with its summaries."""

import statistics

import pytest

from llm_compression.evaluate.latency import measure_latency


def test_latency_records_every_repeat(model):
    r = measure_latency(model.eval(), prompt_tokens=8, new_tokens=3, repeats=4, warmup=1)
    pre, dec = r["prefill_seconds_repeats"], r["decode_tokens_per_second_repeats"]
    assert len(pre) == len(dec) == 4  # the warm-up repeat is not among them
    assert all(x > 0 for x in pre + dec)
    assert (r["prefill_seconds_min"], r["prefill_seconds_max"]) == (min(pre), max(pre))
    assert (r["decode_tokens_per_second_min"], r["decode_tokens_per_second_max"]) == (min(dec), max(dec))
    assert r["prefill_seconds_median"] == statistics.median(pre)
    assert r["decode_tokens_per_second_median"] == statistics.median(dec)
    with pytest.raises(ValueError, match="new_tokens 0"):
        measure_latency(model, new_tokens=0)
