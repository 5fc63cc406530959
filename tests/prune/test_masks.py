import itertools

import pytest
import torch
from torch import nn

from llm_compression.prune.magnitude import prune_linear_magnitude
from llm_compression.prune.masks import nm_mask, parse_nm, unstructured_mask
from llm_compression.prune.wanda import WandaPruner


def brute_force_row_mask(score, ratio, pruned=None):
    """Per row: already-pruned entries plus the floor(ratio * remaining) smallest of the rest."""
    out = torch.zeros_like(score, dtype=torch.bool)
    for r in range(score.shape[0]):
        done = [] if pruned is None else [j for j in range(score.shape[1]) if pruned[r, j]]
        rest = [j for j in range(score.shape[1]) if j not in done]
        k = int(len(rest) * ratio)
        chosen = sorted(rest, key=lambda j: (float(score[r, j]), j))[:k]
        for j in done + chosen:
            out[r, j] = True
    return out


def test_row_mask_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(7, 13, generator=g)
    for ratio in (0.0, 0.3, 0.5, 0.9):
        assert torch.equal(unstructured_mask(s, ratio, scope="row"), brute_force_row_mask(s, ratio))


def test_repeat_never_rechooses_pruned_weights():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(6, 40, generator=g)
    first = unstructured_mask(s, 0.5, scope="row")
    # make the already-pruned weights the *lowest* scores, as zeros are under |W|
    s2 = s.masked_fill(first, 0.0)
    second = unstructured_mask(s2, 0.5, pruned=first, scope="row")
    assert torch.equal(second, brute_force_row_mask(s2, 0.5, first))
    assert (first & ~second).sum() == 0
    assert second.float().mean() == pytest.approx(0.75)


def test_layer_scope_counts_whole_matrix():
    s = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    m = unstructured_mask(s, 0.5, scope="layer")
    assert m.sum() == 10 and m.flatten()[:10].all()


def test_magnitude_layer_brute_force_and_repeat():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16, bias=False)
    w0 = lin.weight.detach().clone()
    prune_linear_magnitude(lin, 0.5)
    k = int(w0.numel() * 0.5)
    expected = torch.zeros(w0.numel(), dtype=torch.bool)
    expected[torch.argsort(w0.abs().flatten(), stable=True)[:k]] = True
    assert torch.equal(lin.weight.flatten() == 0, expected)
    prune_linear_magnitude(lin, 0.5)
    assert (lin.weight == 0).float().mean() == pytest.approx(0.75)


def test_wanda_mask_matches_brute_force():
    torch.manual_seed(0)
    lin = nn.Linear(24, 10, bias=False)
    x = torch.randn(3, 50, 24) * torch.linspace(0.1, 3.0, 24)  # columns of very different norms
    w0 = lin.weight.detach().clone()
    p = WandaPruner(lin, 0.5)
    p.add_batch(x[:2])
    p.add_batch(x[2:])
    p.prune()
    col_norm = x.reshape(-1, 24).norm(dim=0)
    score = w0.abs() * col_norm  # |W_ij| * ||X_j||_2  (Wanda Eq. 1)
    assert torch.equal(lin.weight == 0, brute_force_row_mask(score, 0.5))
    assert ((lin.weight == 0).sum(dim=1) == 12).all()


def test_wanda_requires_calibration():
    with pytest.raises(RuntimeError, match="calibration"):
        WandaPruner(nn.Linear(4, 4), 0.5).prune()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_nm_mask_pattern_and_brute_force(n, m):
    g = torch.Generator().manual_seed(2)
    s = torch.rand(5, 4 * m, generator=g)
    mask = nm_mask(s, n, m)
    groups = mask.reshape(5, -1, m)
    assert (groups.sum(dim=2) == n).all()
    for r, gi in itertools.product(range(5), range(4)):
        vals = s[r, gi * m:(gi + 1) * m]
        want = set(torch.argsort(vals)[:n].tolist())
        assert set(torch.nonzero(groups[r, gi]).flatten().tolist()) == want


def test_nm_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        nm_mask(torch.rand(3, 10), 2, 4)
    with pytest.raises(ValueError, match="0 < N < M"):
        nm_mask(torch.rand(3, 8), 4, 4)
    with pytest.raises(ValueError, match="not 'unstructured'"):
        parse_nm("half")
    assert parse_nm("2:4") == (2, 4) and parse_nm("unstructured") is None


def test_ratio_out_of_range():
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        unstructured_mask(torch.rand(2, 2), 1.0)
