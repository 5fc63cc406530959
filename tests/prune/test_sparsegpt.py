"""SparseGPT (Frantar & Alistarh 2023) against a slow, direct float64 reference of the same equations."""

import math

import pytest
import torch
from torch import nn

from llm_compression.prune.sparsegpt import (
    SparseGPTPruner,
    accumulate_gram_upper_,
    gram_block_width,
    gram_blocks,
    mirror_upper_,
    sparsegpt_prune_weight,
)


def reference_sparsegpt(W, X, ratio, *, nm=None, blocksize=128, percdamp=0.01, already=None):
    """Direct float64 SparseGPT without the Cholesky trick or lazy updates.

    H = 2/n X^T X, damped; the inverse Hessian of the not-yet-fixed columns is kept explicitly and
    one column is eliminated at a time (Gaussian elimination, paper Eq. 4/5): after fixing column j,
    Hinv <- Hinv - Hinv[:, j] Hinv[j, :] / Hinv[j, j]. Column j's OBS update of the later columns is
    W[:, j:] -= (w_j - q_j) / Hinv[j, j] * Hinv[j, j:], applied immediately to all later columns.
    Masks: at each block start, over the rows x block slice, the lowest w^2 / Hinv_(j)[j, j] where
    Hinv_(j) is the inverse after eliminating columns < j (= the squared Cholesky diagonal);
    already-zero weights are forced in and counted; N:M chooses n per group of m per row when the
    sweep reaches the group.
    """
    W = W.double().clone()
    X = X.double()
    rows, cols = W.shape
    if already is None:
        already = W == 0
    H = 2.0 / X.shape[0] * X.T @ X
    dead = torch.diag(H) == 0
    for j in torch.nonzero(dead).flatten().tolist():
        H[j, j] = 1.0
        W[:, j] = 0.0
    H += percdamp * torch.diag(H).mean() * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    diag, rowsj = [], []
    for j in range(cols):  # elimination order is fixed: precompute each step's pivot row
        diag.append(Hinv[j, j].item())
        rowsj.append(Hinv[j, :].clone())
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    diag = torch.tensor(diag, dtype=torch.float64)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if nm is None:
            sal = (W[:, i1:i2] ** 2 / diag[i1:i2]).flatten()
            forced = already[:, i1:i2].flatten()
            k = int(forced.sum()) + math.floor(ratio * int((~forced).sum()))
            sal[forced] = -1.0
            chosen = torch.argsort(sal)[:k]
            blk = torch.zeros_like(forced)
            blk[chosen] = True
            mask[:, i1:i2] = blk.reshape(rows, i2 - i1)
        for j in range(i1, i2):
            if nm is not None and (j - i1) % nm[1] == 0:
                n, m = nm
                for r in range(rows):
                    sal = W[r, j:j + m] ** 2 / diag[j:j + m]
                    forced = already[r, j:j + m]
                    sal[forced] = -1.0
                    k = max(n, int(forced.sum()))
                    mask[r, j + torch.argsort(sal)[:k]] = True
            w = W[:, j].clone()
            q = torch.where(mask[:, j], torch.zeros_like(w), w)
            err = (w - q) / diag[j]
            W[:, j:] -= torch.outer(err, rowsj[j][j:])
            W[:, j] = q
    return W, mask


def _layer(rows=24, cols=32, tokens=200, seed=0, dead=()):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    # correlated inputs, so the OBS update matters
    A = torch.randn(cols, cols, generator=g, dtype=torch.float64) / math.sqrt(cols)
    X = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ (A + torch.eye(cols, dtype=torch.float64))
    for j in dead:
        X[:, j] = 0
    return W, X


def _hessian(X):
    return 2.0 / X.shape[0] * X.T @ X


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
@pytest.mark.parametrize("blocksize", [8, 16, 128])
def test_matches_float64_reference(nm, blocksize):
    W, X = _layer(dead=(5,))
    ref_W, ref_mask = reference_sparsegpt(W, X, 0.5, nm=nm, blocksize=blocksize)
    got_W, got_mask = sparsegpt_prune_weight(W, _hessian(X), 0.5, nm=nm, blocksize=blocksize)
    assert torch.equal(got_mask, ref_mask)
    torch.testing.assert_close(got_W, ref_W, rtol=1e-9, atol=1e-9)
    assert (got_W[got_mask] == 0).all()
    assert (got_W[:, 5] == 0).all()  # dead input column zeroed


def test_matches_reference_with_already_zero_weights():
    W, X = _layer(seed=1)
    g = torch.Generator().manual_seed(3)
    W[torch.rand(W.shape, generator=g, dtype=torch.float64) < 0.5] = 0.0
    already = W == 0
    ref_W, ref_mask = reference_sparsegpt(W, X, 0.5, blocksize=16)
    got_W, got_mask = sparsegpt_prune_weight(W, _hessian(X), 0.5, blocksize=16)
    assert torch.equal(got_mask, ref_mask)
    torch.testing.assert_close(got_W, ref_W, rtol=1e-9, atol=1e-9)
    assert (got_mask & already).sum() == already.sum()  # old zeros stay in the mask ...
    assert (got_W[already] == 0).all()  # ... and exactly zero although the OBS update moved them
    # about half of the remaining weights are newly pruned (floor per 16-column block)
    new = int((got_mask & ~already).sum())
    assert abs(new - 0.5 * int((~already).sum())) <= W.shape[1] // 16


def test_obs_update_beats_plain_masking():
    W, X = _layer(rows=32, cols=64, tokens=400, seed=2)
    new_W, mask = sparsegpt_prune_weight(W, _hessian(X), 0.5, blocksize=16)
    masked = W.clone()
    masked[mask] = 0
    err_obs = torch.linalg.norm(X @ W.T - X @ new_W.T)
    err_mask = torch.linalg.norm(X @ W.T - X @ masked.T)
    assert err_obs < 0.9 * err_mask, (err_obs, err_mask)


def test_pruner_float32_close_to_float64_and_running_mean():
    W, X = _layer(rows=16, cols=32, tokens=300, seed=4)
    lin = nn.Linear(32, 16, bias=False)
    lin.weight.data = W.float()
    p = SparseGPTPruner(lin, 0.5, blocksize=16)
    for chunk in X.float().split(70):  # uneven batches: running mean must equal 2/n X^T X
        p.add_batch(chunk.unsqueeze(0), None)
    torch.testing.assert_close(p.H.double(), _hessian(X), rtol=1e-4, atol=1e-4)
    p.prune()
    ref_W, ref_mask = reference_sparsegpt(W, X, 0.5, blocksize=16)
    got = lin.weight.detach().double()
    assert ((got == 0) == ref_mask).float().mean() > 0.98
    assert (got[ref_mask & (got == 0)] == 0).all()
    rel = torch.linalg.norm(X @ (got - ref_W).T) / torch.linalg.norm(X @ W.T)
    assert rel < 1e-2


@pytest.mark.parametrize("cols", [100, 255, 256, 300, 576, 1100])
def test_upper_gram_blocks_mirrored_equal_the_full_product(cols):
    # below two blocks one full product; above it, block rows on and above the diagonal, the last
    # block narrower when cols is not a multiple of the width
    g = torch.Generator().manual_seed(cols)
    x = torch.randn(700, cols, generator=g)
    full = torch.full((cols, cols), 0.5)
    full.addmm_(x.t(), x, alpha=0.25)
    G = torch.full((cols, cols), 0.5)
    accumulate_gram_upper_(G, x, 0.25)
    blocks = gram_blocks(cols)
    assert blocks[0][0] == 0 and blocks[-1][1] == cols and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    if cols >= 2 * gram_block_width(cols):  # the lower blocks were not touched
        b = blocks[0][1]
        assert len(blocks) > 1 and (G[b:, :b] == 0.5).all()
    else:
        assert blocks == [(0, cols)]
    mirror_upper_(G)
    torch.testing.assert_close(G, full, rtol=1e-6, atol=1e-4)
    assert torch.equal(G, G.t())


def test_pruner_hessian_read_between_batches_stays_whole():
    # reading H mirrors it; later batches accumulate the upper blocks again and a second read
    # mirrors again, so H equals 2/n X^T X after every read
    cols = 300
    g = torch.Generator().manual_seed(1)
    X = torch.randn(900, cols, generator=g, dtype=torch.float64)
    p = SparseGPTPruner(nn.Linear(cols, 8, bias=False), 0.5, hessian_dtype="float64")
    seen = 0
    for chunk in X.split(250):
        p.add_batch(chunk)
        seen += chunk.shape[0]
        torch.testing.assert_close(p.H, _hessian(X[:seen]), rtol=1e-10, atol=1e-10)


def test_repeat_reaches_cumulative_sparsity():
    W, X = _layer(rows=32, cols=64, tokens=300, seed=5)
    H = _hessian(X)
    w1, m1 = sparsegpt_prune_weight(W, H.clone(), 0.5, blocksize=16)
    w2, m2 = sparsegpt_prune_weight(w1, H.clone(), 0.5, blocksize=16)
    assert (m1 & ~m2).sum() == 0
    assert (w2 == 0).double().mean().item() == pytest.approx(0.75, abs=0.01)


def test_errors_are_clear():
    lin = nn.Linear(6, 4)
    with pytest.raises(ValueError, match="divisible by 4"):
        SparseGPTPruner(lin, 0.5, nm=(2, 4), blocksize=8)
    with pytest.raises(ValueError, match="multiple of M=8"):
        SparseGPTPruner(nn.Linear(16, 4), 0.5, nm=(4, 8), blocksize=12)
    with pytest.raises(ValueError, match="percdamp"):
        SparseGPTPruner(lin, 0.5, percdamp=0.0)
    with pytest.raises(ValueError, match="outside"):
        SparseGPTPruner(lin, 1.0)
    with pytest.raises(RuntimeError, match="add_batch"):
        SparseGPTPruner(lin, 0.5).prune()


def _reference_code_block_choice(saliency, ratio):
    """The unstructured choice of the SparseGPT reference code in one ``rows x block`` slice
    (IST-DASLab/sparsegpt ``fasterprune``), restated: the value at sorted position
    ``int(numel * ratio)`` is the threshold and every weight at or below it is pruned; exact zeros
    (saliency 0) are ranked with all the others."""
    flat = saliency.flatten()
    return saliency <= flat.sort().values[int(flat.numel() * ratio)]


def test_block_choice_against_the_reference_code_rule():
    """docs/reference-parity.md: at the same saliencies ours prunes exactly the reference code's block
    choice minus the weight at its threshold (one weight per block when there are no ties); a block
    holding ``z`` exact zeros loses ``z + floor((numel - z) / 2)`` weights with ours, ``numel/2 + 1``
    with the reference code (the zeros counted inside its 50%)."""
    from llm_compression.prune.masks import nm_mask, unstructured_mask

    g = torch.Generator().manual_seed(7)
    sal = torch.rand(24, 16, generator=g, dtype=torch.float64)  # continuous: no ties
    n = sal.numel()
    ref = _reference_code_block_choice(sal, 0.5)
    ours = unstructured_mask(sal, 0.5, scope="layer")
    assert int(ref.sum()) == n // 2 + 1 and int(ours.sum()) == n // 2
    assert torch.equal(ours, ref & (sal != sal.flatten().sort().values[n // 2]))

    zeros = torch.rand(24, 16, generator=g) < 0.05
    z = int(zeros.sum())
    assert z >= 3
    sal_z = sal.masked_fill(zeros, 0.0)
    ref_z = _reference_code_block_choice(sal_z, 0.5)
    ours_z = unstructured_mask(sal_z, 0.5, pruned=zeros, scope="layer")
    assert int(ref_z.sum()) == n // 2 + 1
    assert int(ours_z.sum()) == z + (n - z) // 2
    assert not bool((ref_z & ~ours_z).any())  # a superset of the reference choice

    # N:M: the reference's per-group topk(largest=False) over all weights (zeros included) is ours
    ref_nm = torch.zeros_like(sal_z, dtype=torch.bool)
    for i in range(0, 16, 4):
        ref_nm.scatter_(1, i + torch.topk(sal_z[:, i:i + 4], 2, dim=1, largest=False).indices, True)
    assert torch.equal(nm_mask(sal_z, 2, 4, pruned=zeros), ref_nm | zeros)
