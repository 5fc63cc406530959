import math

import pytest
import torch

from llm_compression.evaluate.perplexity import perplexity, window_nll, window_stream


def hand_perplexity(model, ids, seqlen, bos=None, keep_last=False):
    """Direct computation: loop over windows and positions, sum -log p(next token)."""
    n = ids.numel()
    starts = list(range(0, n - seqlen + 1, seqlen))
    windows = [ids[s:s + seqlen] for s in starts]
    tail = ids[len(starts) * seqlen:]
    if keep_last and tail.numel() >= 2:
        windows.append(tail)
    nll, count = 0.0, 0
    for w in windows:
        x = w if bos is None else torch.cat([torch.tensor([bos]), w])
        with torch.no_grad():
            logp = torch.log_softmax(model(x.unsqueeze(0)).logits[0].double(), dim=-1)
        for t in range(x.numel() - 1):
            nll -= float(logp[t, x[t + 1]])
            count += 1
    return math.exp(nll / count), count, len(windows)


def test_perplexity_matches_hand_computation_on_uneven_stream(model):
    torch.manual_seed(1)
    ids = torch.randint(3, 256, (103,))  # 103 = 6 windows of 16 + 7 leftover tokens
    r = perplexity(model, ids, seqlen=16, batch_size=4)
    ref, count, windows = hand_perplexity(model, ids, 16)
    assert r["windows"] == windows == 6
    assert r["scored_tokens"] == count == 6 * 15
    assert r["perplexity"] == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_keep_last_window_and_bos(model):
    torch.manual_seed(2)
    ids = torch.randint(3, 256, (103,))
    r = perplexity(model, ids, seqlen=16, last_window="keep", bos_token_id=1)
    ref, count, windows = hand_perplexity(model, ids, 16, bos=1, keep_last=True)
    assert (r["windows"], r["scored_tokens"]) == (windows, count) == (7, 103)
    assert r["perplexity"] == pytest.approx(ref, rel=1e-5)


def test_batch_size_does_not_change_value(model):
    ids = torch.randint(3, 256, (200,), generator=torch.Generator().manual_seed(3))
    a = perplexity(model, ids, seqlen=32, batch_size=1)
    b = perplexity(model, ids, seqlen=32, batch_size=5)
    assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-5)


def test_window_errors():
    with pytest.raises(ValueError, match="shorter than one window"):
        window_stream(torch.arange(10), 16)
    with pytest.raises(ValueError, match="last_window"):
        window_stream(torch.arange(100), 16, last_window="pad")


# --- the computation before issue 15, kept verbatim as the fp32 reference ------------------------------

@torch.no_grad()
def reference_nll_sum(model, ids, seqlen, batch_size):
    """NLL sum as computed before issue 15: full-batch logits sliced, copied to fp32 ``[batch*(seq-1), vocab]``
    and passed to ``F.cross_entropy(reduction="sum")``."""
    import torch.nn.functional as F

    windows = window_stream(ids, seqlen)
    total, scored = 0.0, 0
    for i in range(0, len(windows), batch_size):
        x = torch.stack(windows[i:i + batch_size])
        logits = model(input_ids=x, use_cache=False).logits
        pred = logits[:, :-1, :].float()
        target = x[:, 1:]
        total += float(F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="sum"))
        scored += target.numel()
    return total, scored


@pytest.mark.parametrize("batch_size", [1, 3])
def test_fp32_perplexity_bit_identical_to_the_earlier_computation(model, batch_size):
    ids = torch.randint(3, 256, (7 * 32 + 5,), generator=torch.Generator().manual_seed(4))
    r = perplexity(model, ids, seqlen=32, batch_size=batch_size)
    ref, scored = reference_nll_sum(model, ids, 32, batch_size)
    assert r["scored_tokens"] == scored == 7 * 31
    assert r["nll_sum"] == ref  # same fp32 values, same summation: bit-identical
    assert r["dtype"] == "float32"


def test_window_nll_chunks_do_not_change_the_sum():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 40, 50, generator=g) * 4
    x = torch.randint(0, 50, (3, 40), generator=g)
    whole = window_nll(logits, x, chunk_tokens=1024)
    assert window_nll(logits, x, chunk_tokens=7) == whole  # the same log-probabilities, summed the same way
    lp = torch.log_softmax(logits[:, :-1].double(), dim=-1).gather(2, x[:, 1:, None])
    assert float(whole) == pytest.approx(-float(lp.sum()), rel=1e-6)


def test_uniform_model_has_perplexity_equal_to_vocabulary_size(model):
    """Known value: with a zero output head every next-token distribution is uniform over the vocabulary,
    so perplexity = vocab size exactly (256), in fp32 and in bf16 (zero logits are exact in bf16)."""
    from copy import deepcopy

    m = deepcopy(model)
    m.config.tie_word_embeddings = False
    m.lm_head.weight = torch.nn.Parameter(torch.zeros_like(m.lm_head.weight))
    ids = torch.randint(3, 256, (64,), generator=torch.Generator().manual_seed(6))
    for dtype in ("float32", "bfloat16"):
        r = perplexity(m, ids, seqlen=16, batch_size=2, dtype=dtype)
        assert r["perplexity"] == pytest.approx(256.0, rel=1e-6)


def test_bfloat16_evaluation_is_close_and_records_its_dtype(model):
    ids = torch.randint(3, 256, (128,), generator=torch.Generator().manual_seed(7))
    a = perplexity(model, ids, seqlen=32, batch_size=2)
    b = perplexity(model, ids, seqlen=32, batch_size=2, dtype="bfloat16")
    assert (a["dtype"], b["dtype"]) == ("float32", "bfloat16")
    assert b["nll_sum"] != a["nll_sum"]  # it did run in bf16
    assert b["perplexity"] == pytest.approx(a["perplexity"], rel=0.01)
    for r in (a, b):
        assert r["peak_memory_bytes"] > 0 and r["peak_memory_kind"] and r["cpu_seconds"] >= 0


def test_float16_on_cpu_is_refused_before_any_forward(model):
    from llm_compression.protocols import ProtocolError

    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    ids = torch.randint(3, 256, (64,))
    with pytest.raises(ProtocolError, match=r"'float16' is refused on CPU.*'bfloat16' or 'float32'"):
        perplexity(model, ids, seqlen=16, dtype="float16")
    with pytest.raises(ProtocolError, match=r"'int8' is not one of float32, bfloat16, float16"):
        perplexity(model, ids, seqlen=16, dtype="int8")
    assert calls == []
