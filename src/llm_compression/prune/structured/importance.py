"""Importance of structured groups (LLM-Pruner, Ma et al. 2023, Sec. 3.2, Eq. 2-5).

For a group ``G`` (see :mod:`.groups`) and calibration data ``D`` with loss ``L`` (mean token
negative log-likelihood, averaged over the calibration samples):

- ``element1`` -- first-order Taylor, element-wise (Eq. 4 without the second-order term):
  ``I(W_k) = |dL/dW_k * W_k|``, summed over the elements of the member's slice.
- ``element2`` -- element-wise Taylor with the second-order term, the Hessian diagonal replaced by
  the empirical Fisher ``H_kk ~ (1/N) sum_j (dL(D_j)/dW_k)^2`` over the N calibration samples
  (Eq. 5): ``I(W_k) = |dL/dW_k * W_k - 1/2 * (1/N) sum_j (dL(D_j)/dW_k * W_k)^2|``. The sign
  follows the expansion ``L(W=0) - L(W) ~ -g W + 1/2 W H W``; it needs one backward pass per
  sample.
- ``vector`` -- vector-wise Taylor (Eq. 3): ``I(W_i) = |sum_k dL/dW_k * W_k|`` over the whole slice
  ``W_i`` that the group owns in one tensor.
- ``taylor`` -- alias of ``element1`` (LLM-Pruner's ``--pruner_type taylor`` with its
  ``--taylor param_first`` setting); canonicalized by :func:`canonical_importance`.
- ``l1`` / ``l2`` -- magnitude of the slice (``sum |W|``, ``sqrt(sum W^2)``); no calibration.
- ``random`` -- uniform random score per group from a seeded generator; no calibration.
- ``activation`` (block, channel), ``contribution`` (block), ``block-influence`` and ``angular`` (layer) -- from calibration
  activations, no gradients: see :mod:`.activations`.

Group aggregation: the per-member scores of a group (one per tensor slice it owns) are combined
by ``sum`` (LLM-Pruner's default ``grouping_strategy``), ``mean`` or ``max``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint

from ...options.pruning import (  # noqa: F401  (one definition each, torch-free)
    ACTIVATION_IMPORTANCES,
    AGGREGATIONS,
    ALIASES,
    GRADIENT_IMPORTANCES,
    IMPORTANCE_LEVELS,
    IMPORTANCES,
    canonical_importance,
    check_importance_level,
    needs_gradients,
)
from ...options.pruning import importance_needs_calibration as needs_calibration  # noqa: F401
from .groups import GroupSet, StructuredPruningError

@contextlib.contextmanager
def checkpointed_blocks(model):
    """Inside the ``with`` statement, every decoder block of ``model`` runs under activation checkpointing
    (``torch.utils.checkpoint``, non-reentrant; Chen et al. 2016, "Training Deep Nets with Sublinear Memory
    Cost"): autograd keeps each block's inputs only and recomputes the block's intermediates in the backward
    pass. The gradients are those of the plain pass (the recomputation runs the same operations on the same
    inputs, with the RNG state restored); the cost is one more forward pass per backward.

    transformers' own ``gradient_checkpointing_enable`` acts only in training mode; the Taylor criteria run the
    model in eval mode (no dropout), hence this wrapper. The blocks' ``forward`` is restored on exit.

    Raises:
        TypeError: ``model`` has no decoder layer list (:func:`llm_compression.modules.decoder_layers`).
    """
    from ...modules import decoder_layers

    layers = list(decoder_layers(model))

    def wrapped(forward):
        def run(*args, **kwargs):
            if not torch.is_grad_enabled():
                return forward(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return run

    for layer in layers:
        layer.forward = wrapped(layer.forward)
    try:
        yield model
    finally:
        for layer in layers:
            del layer.forward  # the instance attribute; the class's forward shows again


def collect_gradients(model, calib_ids: torch.Tensor, names: set[str], *, second_order: bool,
                      batch_size: int = 1, device: str | None = None,
                      gradient_checkpointing: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Mean gradient of the calibration loss (and, for the Fisher term, mean squared per-sample gradient).

    Args:
        calib_ids: LongTensor ``[N, seqlen]`` of calibration token ids.
        names: parameter names (``model.named_parameters()``) whose gradients are kept.
        second_order: also accumulate ``(1/N) sum_j g_j^2`` (one backward per sample).
        batch_size: samples per backward pass when ``second_order`` is False.
        gradient_checkpointing: recompute each decoder block in the backward pass (:func:`checkpointed_blocks`):
            the activations kept for the backward pass shrink from every block's intermediates to one block's
            plus each block's input; the gradients are unchanged.

    Returns:
        name -> ``{"grad": (1/N) sum_j g_j, "fisher": (1/N) sum_j g_j^2 (only when second_order)}``,
        float32 tensors of the parameter's shape, where ``g_j = dL(D_j)/dW`` and ``L(D_j)`` is the mean
        token NLL of sample ``j``.

    Raises:
        StructuredPruningError: ``calib_ids`` is not a non-empty 2-D LongTensor.
    """
    if not (isinstance(calib_ids, torch.Tensor) and calib_ids.dim() == 2 and calib_ids.numel() > 0):
        raise StructuredPruningError("gradient importance needs calib_ids, a LongTensor [samples, seqlen]")
    params = dict(model.named_parameters())
    missing = names - params.keys()
    if missing:
        raise KeyError(f"parameters not in model: {sorted(missing)[:5]}")
    was_training = model.training
    flags = {n: p.requires_grad for n, p in params.items()}
    for n, p in params.items():
        p.requires_grad_(n in names)
        p.grad = None
    model.eval()
    dev = device or next(model.parameters()).device
    n = calib_ids.shape[0]
    bs = 1 if second_order else max(1, batch_size)
    acc = {k: {"grad": torch.zeros_like(params[k], dtype=torch.float32)} for k in names}
    if second_order:
        for k in names:
            acc[k]["fisher"] = torch.zeros_like(params[k], dtype=torch.float32)
    ctx = checkpointed_blocks(model) if gradient_checkpointing else contextlib.nullcontext()
    try:
        with ctx:
            _accumulate(model, calib_ids, params, names, acc, dev=dev, bs=bs, second_order=second_order)
    finally:
        for k, p in params.items():
            p.grad = None
            p.requires_grad_(flags[k])
        model.train(was_training)
    return acc


def _accumulate(model, calib_ids, params, names, acc, *, dev, bs, second_order) -> None:
    """The backward passes of :func:`collect_gradients`, accumulating into ``acc``."""
    n = calib_ids.shape[0]
    for s in range(0, n, bs):
        ids = calib_ids[s:s + bs].to(dev)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        (loss * ids.shape[0] / n).backward()  # grad accumulates (1/N) sum_j g_j
        for k in names:
            g = params[k].grad
            if g is None:
                continue
            if second_order:
                # this sample's gradient is the increment since the last step
                gj = (g.float() - acc[k]["grad"]) * n
                acc[k]["fisher"] += gj * gj / n
                acc[k]["grad"].copy_(g.float())
            else:
                acc[k]["grad"].copy_(g.float())


def _block_reduce(t: torch.Tensor, dim: int, n_groups: int) -> torch.Tensor:
    """Sum of ``t`` over each of ``n_groups`` contiguous blocks along ``dim`` -> ``[n_groups]``."""
    return t.movedim(dim, 0).reshape(n_groups, -1).sum(1)


@torch.no_grad()
def member_scores(gs: GroupSet, params: dict[str, torch.Tensor], importance: str,
                  grads: dict | None = None) -> torch.Tensor:
    """Per-member, per-group scores ``[n_members, n_groups]`` (float64) of one group set.

    Raises:
        StructuredPruningError: a gradient criterion without gradients.
    """
    importance = canonical_importance(importance)
    rows = []
    for m in gs.members:
        w = params[m.name].detach().double()
        if importance in GRADIENT_IMPORTANCES:
            if grads is None or m.name not in grads:
                raise StructuredPruningError(f"importance {importance!r} needs gradients of {m.name}")
            wg = w * grads[m.name]["grad"].double()
            if importance == "element1":
                s = _block_reduce(wg.abs(), m.dim, gs.n_groups)
            elif importance == "element2":
                fisher = grads[m.name].get("fisher")
                if fisher is None:
                    raise StructuredPruningError("importance 'element2' needs the Fisher term (second_order=True)")
                s = _block_reduce((wg - 0.5 * w * w * fisher.double()).abs(), m.dim, gs.n_groups)
            else:  # vector
                s = _block_reduce(wg, m.dim, gs.n_groups).abs()
        elif importance == "l1":
            s = _block_reduce(w.abs(), m.dim, gs.n_groups)
        elif importance == "l2":
            s = _block_reduce(w * w, m.dim, gs.n_groups).sqrt()
        else:
            raise StructuredPruningError(f"member_scores does not score {importance!r}")
        rows.append(s)
    return torch.stack(rows)


def aggregate(scores: torch.Tensor, how: str) -> torch.Tensor:
    """Combine member scores ``[n_members, n_groups]`` into group scores ``[n_groups]``.

    Raises:
        StructuredPruningError: unknown aggregation.
    """
    if how == "sum":
        return scores.sum(0)
    if how == "mean":
        return scores.mean(0)
    if how == "max":
        return scores.max(0).values
    raise StructuredPruningError(f"aggregation {how!r} is not one of {', '.join(AGGREGATIONS)}")


def group_importance(groupsets: list[GroupSet], model, importance: str, *, aggregation: str = "sum",
                     grads: dict | None = None, seed: int = 0) -> list[torch.Tensor]:
    """Importance ``[n_groups]`` (float64) of every group of every group set; higher = keep.

    ``random`` draws ``torch.rand`` from one ``torch.Generator`` seeded with ``seed``, group sets in
    order, so the same seed and model give the same choice.
    """
    importance = canonical_importance(importance)
    if aggregation not in AGGREGATIONS:
        raise StructuredPruningError(f"aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    if importance == "random":
        g = torch.Generator().manual_seed(int(seed))
        return [torch.rand(gs.n_groups, generator=g, dtype=torch.float64) for gs in groupsets]
    params = dict(model.named_parameters())
    return [aggregate(member_scores(gs, params, importance, grads), aggregation) for gs in groupsets]
