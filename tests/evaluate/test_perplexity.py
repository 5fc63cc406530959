import math

import pytest
import torch

from llm_compression.evaluate.perplexity import perplexity, window_stream


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
