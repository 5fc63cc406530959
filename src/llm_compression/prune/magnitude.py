"""Magnitude pruning: remove the weights of smallest absolute value.

Baseline of Han et al. 2015 ("Learning both Weights and Connections"), used per layer as the
magnitude baseline of SparseGPT and Wanda. Needs no calibration data.
"""

from __future__ import annotations

import torch
from torch import nn

from .masks import nm_mask, unstructured_mask


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """Importance ``|W|`` for a weight ``[out, in]``."""
    return weight.detach().abs().float()


@torch.no_grad()
def prune_linear_magnitude(
    linear: nn.Linear, ratio: float, *, nm: tuple[int, int] | None = None, scope: str = "layer"
) -> torch.Tensor:
    """Zero the lowest-|W| weights of one Linear in place and return its mask ``[out, in]``.

    ``scope="layer"`` (default) ranks all weights of the matrix; ``"row"`` ranks within each output
    row. ``nm=(n, m)`` applies an N:M pattern instead of ``ratio``. Already-zero weights stay zero
    and are not re-chosen (see :mod:`.masks`).
    """
    w = linear.weight
    pruned = w == 0
    score = magnitude_score(w)
    if nm is not None:
        mask = nm_mask(score, *nm, pruned=pruned)
    else:
        mask = unstructured_mask(score, ratio, pruned=pruned, scope=scope)
    w[mask] = 0
    return mask
