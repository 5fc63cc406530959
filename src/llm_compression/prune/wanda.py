"""Wanda: pruning by weights and activations (Sun, Liu, Bair & Kolter 2024, "A Simple and Effective
Pruning Approach for Large Language Models", Eq. 1 and Sec. 3).

The importance of weight ``W_ij`` is ``|W_ij| * ||X_j||_2``, where ``X_j`` is the j-th input
feature over all calibration tokens; weights are compared within each output row (``per-output``
groups, Sec. 3 "Comparison group") and the lowest ``ratio`` of each row is zeroed, with no weight
update.
"""

from __future__ import annotations

import torch
from torch import nn

from ..options.pruning import ZERO_RULES
from .masks import nm_mask, unstructured_mask


#: values per chunk of :meth:`WandaPruner.add_batch`'s sums of squares (1 MiB in float64)
NORM_CHUNK_VALUES = 1 << 17


class WandaPruner:
    """Accumulates ``||X_j||_2^2`` over calibration tokens for one Linear, then prunes it.

    Args:
        linear: layer with weight ``[out, in]``.
        ratio: fraction of each row's remaining weights to prune, in [0, 1).
        nm: ``(n, m)`` for an N:M pattern instead of ``ratio``.
        zeros: ``"keep"`` (default): weights already exactly zero stay zero and the ratio is a fraction
            of the others; ``"rank"``: they are ranked like any weight (score 0) inside the ratio, as
            the reference code (locuslab/wanda ``prune_wanda``) does.

    Raises:
        ValueError: ``zeros`` not ``"keep"`` or ``"rank"``.
    """

    def __init__(self, linear: nn.Linear, ratio: float, nm: tuple[int, int] | None = None, *, zeros: str = "keep"):
        if zeros not in ZERO_RULES:
            raise ValueError(f"Wanda zeros {zeros!r} must be {' or '.join(map(repr, ZERO_RULES))}")
        self.linear = linear
        self.ratio = ratio
        self.nm = nm
        self.zeros = zeros
        self.sq_norm = torch.zeros(linear.in_features, dtype=torch.float64, device=linear.weight.device)
        self.tokens = 0

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor | None = None) -> None:
        """Add calibration inputs ``[..., in_features]`` to the float64 sums of squares.

        The tokens are taken in chunks of about :data:`NORM_CHUNK_VALUES` values, so the widened copy
        that is squared stays small and is reused from the allocator's cache: one float64 copy of a
        whole batch (e.g. 4,096 x 1,536 values, 50 MB) is fresh memory, and faulting its pages in
        took ten times as long as the arithmetic (2-core CPU: 35 ms against 2.4 ms per batch).
        """
        x = inp.reshape(-1, inp.shape[-1])
        # a square of a bf16/fp16 value (8/11-bit mantissa) is exact in float32: the same terms as in
        # float64, at half the memory traffic (bf16 calibration forwards); float32 values are widened
        wide = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else torch.float64
        rows = max(1, NORM_CHUNK_VALUES // max(1, x.shape[-1]))
        for chunk in x.split(rows):
            sq = chunk.to(wide, copy=True).square_()  # copy: never squares the caller's activations
            self.sq_norm += sq.sum(dim=0, dtype=torch.float64)
        self.tokens += x.shape[0]

    def share_from(self, leader: "WandaPruner") -> None:
        """Adopt the input norms of a pruner whose Linear read the same inputs (q/k/v, gate/up)."""
        if leader.sq_norm.shape != self.sq_norm.shape:
            raise ValueError("Wanda share_from: leader statistics have another shape")
        self.sq_norm = leader.sq_norm
        self.tokens = leader.tokens

    def score(self) -> torch.Tensor:
        """``|W| * ||X_j||_2`` as ``[out, in]`` (float32)."""
        return self.linear.weight.detach().abs().float() * self.sq_norm.sqrt().float().unsqueeze(0)

    @torch.no_grad()
    def prune(self) -> torch.Tensor:
        """Zero the chosen weights in place; returns the mask ``[out, in]``.

        Raises:
            RuntimeError: no calibration batch was added.
            ValueError: the input norms are NaN/inf (non-finite activations): no ranking is possible.
        """
        if self.tokens == 0:
            raise RuntimeError("Wanda needs calibration inputs; add_batch was never called")
        bad = ~torch.isfinite(self.sq_norm)
        if bool(bad.any()):
            raise ValueError(
                f"Wanda: the input norm ||X_j||_2 of {int(bad.sum())} of {bad.numel()} input features is NaN/inf: "
                "the layer's calibration inputs (activations) are not finite; look for an overflow (e.g. float16 "
                "activations: load the model in float32/bfloat16) or NaN/inf weights upstream"
            )
        w = self.linear.weight
        # keep: exact zeros stay pruned and the ratio counts the rest; rank: the reference's rule, zeros
        # (score 0) are ranked with every other weight inside the ratio
        pruned = (w == 0) if self.zeros == "keep" else None
        if self.nm is not None:
            mask = nm_mask(self.score(), *self.nm, pruned=pruned)
        else:
            mask = unstructured_mask(self.score(), self.ratio, pruned=pruned, scope="row")
        w[mask] = 0
        return mask
