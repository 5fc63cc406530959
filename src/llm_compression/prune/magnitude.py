"""Magnitude pruning: remove the weights of smallest absolute value.

Baseline of Han et al. 2015 ("Learning both Weights and Connections", Sec. 3), used per layer as
the magnitude baseline of SparseGPT (Frantar & Alistarh 2023, Sec. 4) and Wanda (Sun et al. 2024,
Sec. 4). Needs no calibration data.

Comparison groups (``scope``): ``layer`` (default: all weights of one matrix), ``row`` (each output
row) or ``global`` (one threshold over all prunable Linear weights of the model, the "global
magnitude" variant; layers then end at different sparsities).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..options.pruning import SCOPES  # noqa: F401  (one definition, torch-free)
from .masks import _check_ratio, nm_mask, unstructured_mask


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """Importance ``|W|`` (float32) for a weight ``[out, in]``."""
    return weight.detach().abs().float()


@torch.no_grad()
def prune_linear_magnitude(
    linear: nn.Linear, ratio: float, *, nm: tuple[int, int] | None = None, scope: str = "layer"
) -> torch.Tensor:
    """Zero the lowest-|W| weights of one Linear in place and return its mask ``[out, in]``.

    Args:
        linear: layer with weight ``[out, in]``.
        ratio: fraction of the remaining (non-zero) weights to prune, in [0, 1); ignored with ``nm``.
        nm: ``(n, m)``: an N:M pattern instead of ``ratio``.
        scope: ``"layer"`` ranks all weights of the matrix; ``"row"`` ranks within each output row
            (``"global"`` needs all layers at once: use :func:`prune_global_magnitude`).

    Already-zero weights stay zero and are not re-chosen (see :mod:`.masks`).

    Raises:
        ValueError: bad ratio or scope, or ``in_features`` not a multiple of ``m``.
    """
    if scope not in ("layer", "row"):
        raise ValueError(f"magnitude scope {scope!r} for one layer must be 'layer' or 'row' "
                         "('global' is applied by prune_global_magnitude over all layers)")
    w = linear.weight
    pruned = w == 0
    score = magnitude_score(w)
    if nm is not None:
        mask = nm_mask(score, *nm, pruned=pruned)
    else:
        mask = unstructured_mask(score, ratio, pruned=pruned, scope=scope)
    w[mask] = 0
    return mask


def _float_bits(x: torch.Tensor) -> torch.Tensor:
    """Bit pattern of non-negative float32 values as int32 (monotone in the value)."""
    return x.float().contiguous().view(torch.int32)


@torch.no_grad()
def prune_global_magnitude(linears: Iterable[nn.Linear], ratio: float) -> dict:
    """Global magnitude pruning: one |W| threshold across all given Linear layers, in place.

    Prunes ``floor(ratio * remaining)`` of the still non-zero weights over all layers together
    (already-zero weights stay zero and are not counted as new), choosing the smallest ``|W|``.
    Ties at the threshold are broken in layer order, then row-major order, so exactly that many
    are pruned. The threshold is found by bisection on the float32 bit pattern (32 counting passes)
    instead of sorting all weights, so extra memory is one layer's worth, not the whole model's.

    Args:
        linears: the prunable Linear layers (weights ``[out_l, in_l]``).
        ratio: fraction of the remaining weights to prune, in [0, 1).

    Returns:
        dict ``threshold`` (|W| at the cut), ``pruned`` (newly pruned count), ``remaining_before``.

    Raises:
        ValueError: ratio outside [0, 1) or no layers.
    """
    _check_ratio(ratio)
    linears = list(linears)
    if not linears:
        raise ValueError("global magnitude pruning needs at least one Linear layer")

    def alive_bits(lin):
        a = lin.weight.detach().abs()
        b = _float_bits(a)
        return b, a != 0

    remaining = sum(int((lin.weight != 0).sum()) for lin in linears)
    k = int(remaining * ratio)  # floor: ratio * remaining >= 0
    if k == 0:
        return {"threshold": 0.0, "pruned": 0, "remaining_before": remaining}

    def count_le(t: int) -> int:
        total = 0
        for lin in linears:
            b, alive = alive_bits(lin)
            total += int(((b <= t) & alive).sum())
        return total

    lo, hi = 0, int(torch.iinfo(torch.int32).max)  # count_le(hi) == remaining >= k (finite |W|)
    while lo < hi:  # smallest t with count_le(t) >= k
        mid = (lo + hi) // 2
        if count_le(mid) >= k:
            hi = mid
        else:
            lo = mid + 1
    t = lo
    below = count_le(t - 1) if t > 0 else 0
    ties_needed = k - below  # >= 1 weights with bits == t are pruned, in layer order
    for lin in linears:
        w = lin.weight
        b, alive = alive_bits(lin)
        cut = (b < t) & alive
        if ties_needed > 0:
            tie = ((b == t) & alive).reshape(-1)
            idx = tie.nonzero().squeeze(1)[:ties_needed]
            flat = cut.reshape(-1)
            flat[idx] = True
            ties_needed -= idx.numel()
        w[cut] = 0
    threshold = torch.tensor([t], dtype=torch.int32).view(torch.float32).item()
    return {"threshold": threshold, "pruned": k, "remaining_before": remaining}
