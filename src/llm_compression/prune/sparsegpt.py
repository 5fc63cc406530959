"""SparseGPT: one-shot pruning with an optimal-brain-surgeon (OBS) weight update, solved layer by
layer (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", Sec. 3 and Algorithm 1).

For one Linear layer with weight ``W`` ``[rows, cols]`` (``rows = out_features``, ``cols =
in_features``) and calibration inputs ``X`` ``[n_tokens, cols]`` the layer-wise objective is
``||W X^T - W' X^T||^2`` with Hessian ``H = 2/n * X^T X`` ``[cols, cols]`` (Sec. 3.1, up to the
constant). The algorithm:

1. dampen: ``H += percdamp * mean(diag(H)) * I``; *dead* inputs (``H_jj == 0``: the input is zero on
   every calibration token) get ``H_jj = 1`` and their weight column is set to zero (the column
   cannot influence the output on the calibration set);
2. ``U = chol(H^-1)`` upper triangular, so that row ``i`` of ``U`` holds the OBS update of the
   columns ``>= i`` after columns ``< i`` are fixed (Sec. 3.2, "Hessian synchronization");
3. sweep the columns left to right in blocks of ``blocksize`` (Sec. 3.3, "lazy batch updates"):
   at the start of a block, choose the mask of the whole ``rows x blocksize`` slice by the OBS
   saliency ``w^2 / U_jj^2`` (Sec. 3.3 "adaptive mask selection"; one threshold over the slice, as
   the reference implementation does, not one per row); within the block, zero column ``j`` where
   masked, and spread the error ``e = (w - w') / U_jj`` over the not-yet-processed columns of the
   block (``W[:, j:] -= e U[j, j:]``); after the block, apply the accumulated errors to all later
   columns at once. (Implemented with the lazy update once more inside the block: a column's error
   reaches the rest of its sub-block of :data:`SWEEP_SUBBLOCK` columns at once and the rest of the
   block by one matrix product per sub-block; the same sums grouped differently, equal to float
   rounding, several times faster on CPU than one outer-product update per column.)
4. N:M (Sec. 3.4 "semi-structured sparsity"): instead of a per-block threshold, when the sweep
   reaches the first column of each group of ``M`` consecutive inputs it zeroes the ``N`` weights of
   lowest saliency in that group, separately for every row.

Repeated pruning: the weights that are *exactly zero when pruning starts* are forced into the mask
and counted, not chosen again. In every block slice the mask holds ``already_zero +
floor(ratio * remaining)`` weights (in every N:M group: the existing zeros, topped up to ``N``), so
pruning an r-sparse layer again at r ends near ``1 - (1 - r)^2``. The OBS update moves the values of
not-yet-processed weights, including formerly-zero ones; because the mask is fixed from the zeros
at the start (not from the current values), every masked weight is set back to exactly zero when
its column is reached and its displacement is compensated like any pruned weight.
"""

from __future__ import annotations

import torch
from torch import nn

from ..options.pruning import HESSIAN_DTYPES, ZERO_RULES, SparseGPTOptions
from .masks import nm_mask, unstructured_mask

DEFAULT_BLOCKSIZE = SparseGPTOptions.blocksize
DEFAULT_PERCDAMP = SparseGPTOptions.percdamp
_HESSIAN_DTYPES = {name: getattr(torch, name) for name in HESSIAN_DTYPES}


def check_sparsegpt_options(blocksize: int, percdamp: float, nm: tuple[int, int] | None = None) -> None:
    """Validate SparseGPT options before any heavy work.

    Raises:
        ValueError: ``blocksize < 1``, ``percdamp`` not in (0, 1], or an N:M ``m`` that does not
            divide ``blocksize`` (an N:M group must not straddle two blocks).
    """
    level = "unstructured" if nm is None else f"{nm[0]}:{nm[1]}"
    SparseGPTOptions(blocksize=blocksize, percdamp=percdamp).validate(level)


def check_finite_hessian(hessian: torch.Tensor) -> None:
    """Refuse a Hessian with NaN/inf entries: no damping makes it usable, its inputs are the fault.

    Raises:
        ValueError: naming how many entries are NaN and how many infinite.
    """
    finite = torch.isfinite(hessian)
    if not bool(finite.all()):
        nan = int(torch.isnan(hessian).sum())
        inf = int((~finite).sum()) - nan
        cols = hessian.shape[0]
        raise ValueError(
            f"SparseGPT: Hessian [{cols}x{cols}] has {nan} NaN and {inf} infinite entries: the layer's "
            "calibration inputs (activations) are not finite, so no percdamp can help; look for an overflow "
            "(e.g. float16 activations: load the model in float32/bfloat16) or NaN/inf weights upstream"
        )


@torch.no_grad()
def upper_cholesky_of_inverse(hessian: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP) -> torch.Tensor:
    """Dampen ``hessian`` in place and return the upper Cholesky factor of its inverse.

    Args:
        hessian: symmetric PSD ``[cols, cols]`` (float32/float64), with dead inputs already given
            ``H_jj = 1``; modified in place (the damping is added to its diagonal).
        percdamp: damping as a fraction of the mean diagonal (SparseGPT Sec. 3.2/Appendix; default 0.01).

    Returns:
        ``U`` upper triangular ``[cols, cols]`` with ``U^T U = (H + damp I)^-1``.

    Raises:
        ValueError: the Hessian has NaN/inf entries (non-finite activations; damping cannot help), or
            the dampened Hessian is not positive definite (raise ``percdamp``).
    """
    cols = hessian.shape[0]
    check_finite_hessian(hessian)
    damp = percdamp * torch.mean(torch.diag(hessian))
    idx = torch.arange(cols, device=hessian.device)
    hessian[idx, idx] += damp
    L, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0:
        raise ValueError(
            f"SparseGPT: dampened Hessian [{cols}x{cols}] is not positive definite (percdamp={percdamp}); "
            "use a larger percdamp or more calibration samples"
        )
    hinv = torch.cholesky_inverse(L)
    del L  # at most three [cols, cols] matrices at a time: the Hessian, the inverse and one factor
    U, info = torch.linalg.cholesky_ex(hinv, upper=True)
    del hinv
    if int(info) != 0:
        raise ValueError(
            f"SparseGPT: inverse Hessian [{cols}x{cols}] is not positive definite (percdamp={percdamp}); "
            "use a larger percdamp"
        )
    return U


@torch.no_grad()
def sparsegpt_prune_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    ratio: float,
    *,
    nm: tuple[int, int] | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
    percdamp: float = DEFAULT_PERCDAMP,
    already_zero: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one weight matrix given its Hessian (Algorithm 1 of Frantar & Alistarh 2023).

    Args:
        weight: ``[rows, cols]`` (any float dtype; computed in the Hessian's dtype, float32 or 64).
        hessian: ``[cols, cols]``, ``2/n X^T X`` of the layer inputs (not modified: damping and
            dead-input fixes are applied to a copy).
        ratio: fraction of the remaining (non-zero) weights of each ``rows x block`` slice to prune,
            in [0, 1); ignored when ``nm`` is given.
        nm: ``(n, m)``: prune ``n`` of every ``m`` consecutive inputs in each row.
        blocksize: columns per lazy-update block (Sec. 3.3); a multiple of ``m`` for N:M.
        percdamp: Hessian damping as a fraction of its mean diagonal.
        already_zero: bool ``[rows, cols]`` of weights that stay pruned (default ``weight == 0``).

    Returns:
        ``(new_weight, mask)``: the pruned and OBS-updated weight ``[rows, cols]`` in the Hessian's
        dtype, and the bool mask ``[rows, cols]`` (True = pruned), a superset of ``already_zero``;
        ``new_weight[mask]`` is exactly 0.

    Raises:
        ValueError: bad ratio/options, shape mismatch, ``cols`` not a multiple of ``m``, a Hessian
            with NaN/inf entries (non-finite activations), or one that is not positive definite
            after damping.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"sparsity ratio {ratio!r} is outside [0, 1)")
    check_sparsegpt_options(blocksize, percdamp, nm)
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(hessian.shape)} does not match weight columns {cols}")
    if nm is not None and cols % nm[1]:
        raise ValueError(f"N:M {nm[0]}:{nm[1]} needs in_features divisible by {nm[1]}, got {cols}")
    U, dead = inverse_hessian_factor(hessian, percdamp)
    return _sweep(weight, U, dead, ratio, nm=nm, blocksize=blocksize, already_zero=already_zero)


@torch.no_grad()
def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float = DEFAULT_PERCDAMP, *,
                           overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2 of the module docstring on a copy of ``hessian``: dead inputs, damping, ``chol(H^-1)``.

    Args:
        hessian: ``[cols, cols]``, ``2/n X^T X`` (not modified unless ``overwrite``); computed in float32 unless
            float64.
        overwrite: work in ``hessian`` itself when it is float32/float64 (its owner no longer needs it): the same
            numbers without a copy of the ``[cols, cols]`` matrix.

    Returns:
        ``(U, dead)``: ``U`` upper triangular ``[cols, cols]`` (see :func:`upper_cholesky_of_inverse`)
        and ``dead`` bool ``[cols]`` (inputs that were zero on every calibration token, whose weight
        columns are zeroed). Linears that read the same inputs (q/k/v, gate/up) can share both.

    Raises:
        ValueError: NaN/inf entries, or not positive definite after damping.
    """
    dtype = hessian.dtype if hessian.dtype in (torch.float32, torch.float64) else torch.float32
    H = hessian if overwrite and hessian.dtype == dtype else hessian.to(dtype, copy=True)
    check_finite_hessian(H)
    dead = torch.diag(H) == 0
    if dead.any():
        H[dead, dead] = 1.0
    return upper_cholesky_of_inverse(H, percdamp), dead


#: columns swept one at a time between two matrix-product updates inside a lazy-update block
#: (the lazy batch update of Sec. 3.3 applied once more, at a finer width; a multiple of N:M's m)
SWEEP_SUBBLOCK = 16


@torch.no_grad()
def _sweep(weight, U, dead, ratio, *, nm, blocksize, already_zero):
    """Step 3/4 of the module docstring: the column sweep of ``weight`` ``[rows, cols]`` given ``U``.

    Works on the transposed weight (``[cols, rows]``, so that column ``j`` of ``W`` is a contiguous
    row). Within a block of ``blocksize`` columns, the OBS error of a column is spread at once over
    the next columns of its sub-block of :data:`SWEEP_SUBBLOCK` columns only; the errors of a whole
    sub-block reach the rest of the block by one matrix product, and those of a whole block the
    later columns (Sec. 3.3). The same sums as a column-by-column update, grouped differently, so
    the result agrees with it to float rounding.
    """
    dtype = U.dtype
    rows, cols = weight.shape
    W = weight.detach().to(dtype).clone()
    if already_zero is None:
        already_zero = W == 0
    already_zero = already_zero.to(W.device)
    if dead.any():
        W[:, dead] = 0.0
    Wt = W.t().contiguous()  # [cols, rows]
    del W
    mask_t = torch.zeros(cols, rows, dtype=torch.bool, device=Wt.device)
    sub = SWEEP_SUBBLOCK if nm is None else nm[1] * max(1, SWEEP_SUBBLOCK // nm[1])

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = Wt[i1:i2]  # a view: updated in place
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diag(U1)
        z1 = already_zero[:, i1:i2]
        if nm is None:
            saliency = W1.t().pow(2) / d1.pow(2).unsqueeze(0)  # [rows, count]
            mask1 = unstructured_mask(saliency, ratio, pruned=z1, scope="layer").t()
        else:
            mask1 = z1.t().clone()  # filled group by group as the sweep reaches each group
        for s1 in range(0, count, sub):
            s2 = min(s1 + sub, count)
            for i in range(s1, s2):
                if nm is not None and i % nm[1] == 0:
                    sl = slice(i, i + nm[1])
                    saliency = W1[sl].t().pow(2) / d1[sl].pow(2).unsqueeze(0)
                    mask1[sl] = nm_mask(saliency, nm[0], nm[1], pruned=z1[:, sl]).t()
                w = W1[i]
                err = torch.where(mask1[i], w, 0.0) / d1[i]  # (w - q) / U_jj with q = 0 where pruned
                if i + 1 < s2:
                    W1[i + 1 : s2] -= U1[i, i + 1 : s2].unsqueeze(1) * err.unsqueeze(0)
                w.masked_fill_(mask1[i], 0.0)
                Err1[i] = err
            if s2 < count:
                W1[s2:] -= U1[s1:s2, s2:].t() @ Err1[s1:s2]
        mask_t[i1:i2] = mask1
        if i2 < cols:
            Wt[i2:] -= U[i1:i2, i2:].t() @ Err1
    Wt[mask_t] = 0.0  # already exact by construction; kept as a guard against -0.0/roundoff drift
    return Wt.t().contiguous(), mask_t.t().contiguous()


class _SharedFactor:
    """The Hessian of one input tensor and, once computed, its ``(U, dead)``; shared by the pruners
    of the Linears that read that input, freed when the last of them has pruned."""

    def __init__(self, H: torch.Tensor):
        self.H = H
        self.factor = None
        self.users = 1


#: narrowest column block of :func:`accumulate_gram_upper_` (below two of them, one full product)
GRAM_MIN_BLOCK = 128


def gram_block_width(cols: int) -> int:
    """Column block width of :func:`accumulate_gram_upper_` for a ``[cols, cols]`` Gram matrix: an
    eighth of ``cols``, at least :data:`GRAM_MIN_BLOCK` (on a 2-core CPU, for 4,096 tokens, this saved
    31-36% of the time of one full product for ``cols`` = 576 to 4,096; ``benchmarks/prune_flops.py``
    times both at a calibration batch's shapes)."""
    return max(GRAM_MIN_BLOCK, -(-cols // 8))


def gram_blocks(cols: int) -> list[tuple[int, int]]:
    """The column blocks ``(start, stop)`` of :func:`accumulate_gram_upper_`'s grid for ``cols``
    columns: :func:`gram_block_width` wide, the last one narrower when the width does not divide
    ``cols``; one block (the whole product) when ``cols`` is below two widths."""
    b = gram_block_width(cols)
    if cols < 2 * b:
        return [(0, cols)]
    return [(i, min(i + b, cols)) for i in range(0, cols, b)]


@torch.no_grad()
def accumulate_gram_upper_(G: torch.Tensor, x: torch.Tensor, alpha: float) -> None:
    """``G += alpha * x^T x`` on the blocks on and above the diagonal only; :func:`mirror_upper_`
    completes it. This is how :class:`SparseGPTPruner` accumulates its Hessian ``H = 2/n X^T X``
    (Frantar & Alistarh 2023, Sec. 3.1).

    ``x^T x`` is symmetric, so of a grid of ``k x k`` column blocks only the ``k (k + 1) / 2`` on and
    above the diagonal are computed (block row ``i`` is ``x[:, i]^T x[:, i:]``, one matrix product):
    about ``(k + 1) / 2k`` of the multiply-adds of one full product. Each entry is the same dot product
    over the same tokens as in the full product (with the CPU build of torch 2.13 on the 2-core
    development machine the completed matrix equalled the full product bit for bit, and SparseGPT's
    pruned model was bit-identical; another BLAS may round differently, so the tests ask for float
    tolerance). The lower blocks are left as they were.

    Args:
        G: ``[cols, cols]`` float32/float64, updated in place.
        x: ``[n_tokens, cols]`` in ``G``'s dtype.
        alpha: scale of the product.
    """
    for i, j in gram_blocks(G.shape[0]):
        G[i:j, i:].addmm_(x[:, i:j].t(), x[:, i:], alpha=alpha)


@torch.no_grad()
def mirror_upper_(G: torch.Tensor) -> torch.Tensor:
    """Copy the blocks above the diagonal of :func:`accumulate_gram_upper_`'s grid onto those below
    it, in place, so ``G`` ``[cols, cols]`` is the whole symmetric matrix; returns ``G``."""
    for i, j in gram_blocks(G.shape[0])[:-1]:
        G[j:, i:j] = G[i:j, j:].t()
    return G


class SparseGPTPruner:
    """Per-Linear SparseGPT state: accumulates the Hessian over calibration batches, then prunes.

    Model-agnostic: it sees only the Linear and its inputs; a driver such as
    :func:`~llm_compression.prune.calibration.sequential_prune` feeds it.

    Args:
        linear: layer with weight ``[out, in]``.
        ratio: fraction of the remaining weights to prune, in [0, 1) (ignored with ``nm``).
        nm: ``(n, m)`` for an N:M pattern.
        blocksize: lazy-update block width in columns (default 128).
        percdamp: damping fraction of the mean Hessian diagonal (default 0.01).
        hessian_dtype: ``"float32"`` (default; as the reference) or ``"float64"``.
        zeros: ``"keep"`` (default): weights already exactly zero stay zero and the ratio is a fraction
            of the others; ``"rank"``: they are ranked like any weight (saliency 0) inside the ratio, as
            the reference code (IST-DASLab/sparsegpt ``fasterprune``) does.

    Raises:
        ValueError: bad ratio/options, or ``in_features`` not a multiple of ``m`` (raised here,
            before any calibration forward).
    """

    def __init__(
        self,
        linear: nn.Linear,
        ratio: float,
        nm: tuple[int, int] | None = None,
        *,
        blocksize: int = DEFAULT_BLOCKSIZE,
        percdamp: float = DEFAULT_PERCDAMP,
        hessian_dtype: str = "float32",
        zeros: str = "keep",
    ):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"sparsity ratio {ratio!r} is outside [0, 1)")
        if zeros not in ZERO_RULES:
            raise ValueError(f"SparseGPT zeros {zeros!r} must be {' or '.join(map(repr, ZERO_RULES))}")
        self.zeros = zeros
        check_sparsegpt_options(blocksize, percdamp, nm)
        if hessian_dtype not in _HESSIAN_DTYPES:
            raise ValueError(f"hessian_dtype {hessian_dtype!r} must be one of {list(_HESSIAN_DTYPES)}")
        cols = linear.in_features
        if nm is not None and cols % nm[1]:
            raise ValueError(
                f"N:M {nm[0]}:{nm[1]} needs in_features divisible by {nm[1]}, got a layer with in_features={cols}"
            )
        self.linear = linear
        self.ratio = ratio
        self.nm = nm
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.H = torch.zeros(cols, cols, dtype=_HESSIAN_DTYPES[hessian_dtype], device=linear.weight.device)
        self.tokens = 0
        self._shared = None  # set by share_from: the leader's Hessian and factor

    @property
    def H(self) -> torch.Tensor | None:
        """The Hessian ``[in, in]`` so far (``None`` once pruned); its lower blocks are filled from the
        upper ones (:func:`mirror_upper_`) when it is read after new batches."""
        if self._upper_only:
            mirror_upper_(self._H)
            self._upper_only = False
        return self._H

    @H.setter
    def H(self, value: torch.Tensor | None) -> None:
        self._H = value
        self._upper_only = False

    def add_batch(self, inp: torch.Tensor, out: torch.Tensor | None = None) -> None:
        """Add calibration inputs ``[..., in_features]`` to ``H = 2/n sum_t x_t x_t^T`` (running mean
        over tokens, so ``H`` keeps the scale of one token whatever ``n`` is). Only the blocks on and
        above the diagonal are accumulated (:func:`accumulate_gram_upper_`); reading :attr:`H`
        completes it."""
        H = self._H
        x = inp.reshape(-1, inp.shape[-1]).to(H.dtype)
        n = x.shape[0]
        if n == 0:
            return
        total = self.tokens + n
        H.mul_(self.tokens / total)
        accumulate_gram_upper_(H, x, 2.0 / total)
        self._upper_only = True
        self.tokens = total

    def share_from(self, leader: "SparseGPTPruner") -> None:
        """Adopt the Hessian of a pruner whose Linear read the same inputs (q/k/v, gate/up).

        Raises:
            ValueError: the leader's Hessian has another shape.
        """
        if leader.H is None or leader.H.shape != self.H.shape:
            raise ValueError("SparseGPT share_from: leader Hessian missing or of another shape")
        if leader._shared is None:
            leader._shared = _SharedFactor(leader.H)
        leader._shared.users += 1
        self._shared = leader._shared
        self.H = leader.H  # read-only in prune (factorized on a copy, once per group)
        self.tokens = leader.tokens

    @torch.no_grad()
    def prune(self) -> torch.Tensor:
        """Prune and update the Linear's weight in place; frees the Hessian.

        Returns:
            bool mask ``[out, in]`` (True = pruned).

        Raises:
            RuntimeError: no calibration batch was added.
            ValueError: the Hessian has NaN/inf entries (non-finite activations), or is not positive
                definite after damping.
        """
        if self.tokens == 0:
            raise RuntimeError("SparseGPT needs calibration inputs; add_batch was never called")
        w = self.linear.weight
        shared = self._shared
        if shared is None:  # this Linear's own Hessian: factorized in place, it is not needed afterwards
            hessian, self.H = self.H, None
            factor = inverse_hessian_factor(hessian, self.percdamp, overwrite=True)
            del hessian
        else:  # q/k/v, gate/up: one factorization of their common Hessian
            if shared.factor is None:
                shared.factor = inverse_hessian_factor(shared.H, self.percdamp)
            factor = shared.factor
            shared.users -= 1
            if shared.users == 0:
                shared.H = shared.factor = None
        # keep: exact zeros stay pruned outside the ratio; rank: the reference's rule, they are ranked like
        # any weight (saliency 0) inside it
        already_zero = None if self.zeros == "keep" else torch.zeros_like(w.data, dtype=torch.bool)
        new_w, mask = _sweep(w.data, *factor, self.ratio, nm=self.nm, blocksize=self.blocksize,
                             already_zero=already_zero)
        self.H = self._shared = None  # a shared Hessian is freed once its last user has pruned
        w.data.copy_(new_w.to(w.dtype))
        w.data[mask] = 0  # exact zeros also after a down-cast
        return mask
