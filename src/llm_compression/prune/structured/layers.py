"""Layer level: remove whole decoder blocks (depth pruning).

Each decoder layer in ``layer_range`` is one group: all of its parameters (attention, MLP, norms).
Its importance uses the same criteria as the other levels (:mod:`.importance`, LLM-Pruner, Ma et al.
2023, Sec. 3.2): ``element1`` = ``sum |dL/dW * W|`` over the layer's elements (the first-order Taylor
estimate of the loss change when the whole block is zeroed, element-wise), ``element2`` with the
Fisher term, ``vector`` = ``|sum dL/dW * W|`` per tensor, ``l1``/``l2`` weight norms, ``random``;
per-tensor scores are combined with the group aggregation (sum/mean/max). A residual block set to
zero is the identity map, so removing it is what the estimate describes. Removing blocks by an
importance estimate is the depth-pruning baseline of e.g. Kim et al. 2024 ("Shortened LLaMA", Sec. 3).

The kept layers are renumbered (``self_attn.layer_idx`` for the KV cache), ``config.num_hidden_layers``
and, where present, ``config.layer_types`` (Gemma-3 sliding/full attention per layer) follow, so the
checkpoint reloads with plain ``from_pretrained``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...modules import decoder_layers
from .groups import GroupSet, Member, StructuredPruningError
from .importance import aggregate, canonical_importance, member_scores


def layer_parameter_names(model, layers: list[int]) -> set[str]:
    """Names (``model.named_parameters()``) of every parameter of the decoder layers ``layers``."""
    prefix = tuple(f"model.layers.{i}." for i in layers)
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def layer_importance(model, layers: list[int], importance: str, *, aggregation: str = "sum",
                     grads: dict | None = None, seed: int = 0) -> torch.Tensor:
    """Importance ``[len(layers)]`` (float64) of the decoder layers ``layers``; higher = keep.

    Raises:
        StructuredPruningError: unknown criterion or aggregation; a gradient criterion without gradients.
    """
    importance = canonical_importance(importance)
    if importance == "random":
        return torch.rand(len(layers), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    params = dict(model.named_parameters())
    out = []
    for i in layers:
        names = sorted(layer_parameter_names(model, [i]))
        members = [Member(n, 0, params[n].shape[0]) for n in names]
        gs = GroupSet(kind="layer", layer=i, n_groups=1, members=members)
        out.append(aggregate(member_scores(gs, params, importance, grads), aggregation)[0])
    return torch.stack(out)


def drop_layers(model, remove: list[int]) -> list[int]:
    """Remove the decoder layers ``remove`` from ``model`` in place; returns the kept original indices.

    Raises:
        StructuredPruningError: an index out of range, or nothing left.
    """
    layers = decoder_layers(model)
    n = len(layers)
    bad = [i for i in remove if not 0 <= i < n]
    if bad or len(set(remove)) >= n:
        raise StructuredPruningError(f"cannot remove layers {sorted(remove)} of a {n}-layer model")
    kept = [i for i in range(n) if i not in set(remove)]
    model.model.layers = nn.ModuleList([layers[i] for i in kept])
    for j, blk in enumerate(model.model.layers):
        for mod in (blk, getattr(blk, "self_attn", None)):
            if mod is not None and hasattr(mod, "layer_idx"):
                mod.layer_idx = j
    cfg = model.config
    cfg.num_hidden_layers = len(kept)
    if getattr(cfg, "layer_types", None) is not None and len(cfg.layer_types) == n:
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    return kept
