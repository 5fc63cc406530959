"""Structured pruning in the manner of LLM-Pruner (Ma et al. 2023): remove whole attention heads,
MLP channels or hidden dimensions, so the model becomes physically smaller and faster.

Levels: ``block`` and ``channel`` (:mod:`.groups`), ``layer`` (whole decoder blocks, :mod:`.layers`).
Steps (one module each): :mod:`.groups` finds the coupled structures, :mod:`.importance` scores
them (Taylor element1/element2/vector from calibration gradients, L1, L2, random; :mod:`.activations`:
Minitron activation importance, ShortGPT block influence, Gromov et al. angular distance), :mod:`.apply`
removes the lowest-scored ones and keeps module attributes and the config consistent, and
:func:`llm_compression.checkpoint.load_pruned` loads checkpoints whose layers ended with different widths.

In the workflow, structured methods are named ``llmpruner-<importance>`` (e.g.
``llmpruner-element1``), so a variant's path segment stays ``{method}_{level}_{ratio}_x{repeat}``.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ...modules import decoder_layers
from .apply import LAYER_SHAPES_KEY, is_uniform, layer_shapes, plain_loadable, select, shrink
from .groups import LEVELS as GROUP_LEVELS
from .groups import (
    ATTENTION_UNITS,
    StructuredPruningError,
    build_groups,
    check_architecture,
    resolve_layer_range,
)
from .activations import WIDTH_ACTIVATION_IMPORTANCES, activation_group_importance
from .importance import (
    AGGREGATIONS,
    ALIASES,
    IMPORTANCE_LEVELS,
    IMPORTANCES,
    canonical_importance,
    check_importance_level,
    collect_gradients,
    group_importance,
    needs_calibration,
    needs_gradients,
)
from ...checkpoint import load_pruned, needs_structured_loader  # noqa: F401  (loading lives in checkpoint)

from ...options.pruning import (STREAMED_CHANNEL_IMPORTANCES, STREAMED_DEPTH_IMPORTANCES,
                                STREAMED_STRUCTURED_IMPORTANCES, streamable)
from ...options.pruning import STRUCTURED_LEVELS as LEVELS
from ...options.pruning import STRUCTURED_PREFIX as METHOD_PREFIX

METHODS = tuple(METHOD_PREFIX + i for i in IMPORTANCES)

__all__ = [
    "AGGREGATIONS", "ATTENTION_UNITS", "IMPORTANCE_LEVELS", "IMPORTANCES", "LEVELS", "LAYER_SHAPES_KEY", "METHODS", "METHOD_PREFIX",
    "StructuredPruningError", "build_groups", "canonical_importance", "check_architecture", "check_importance_level",
    "count_parameters", "needs_calibration",
    "importance_of_method", "is_structured_method", "layer_shapes", "load_pruned", "needs_structured_loader",
    "prune_structured", "resolve_layer_range",
]


def is_structured_method(method: str) -> bool:
    return isinstance(method, str) and method.startswith(METHOD_PREFIX)


def importance_of_method(method: str) -> str:
    """``"llmpruner-element1"`` -> ``"element1"``.

    Raises:
        StructuredPruningError: not a structured method name with a known importance.
    """
    if not is_structured_method(method):
        raise StructuredPruningError(f"{method!r} is not a structured method ({METHOD_PREFIX}<importance>)")
    return canonical_importance(method[len(METHOD_PREFIX):])


def count_parameters(model) -> int:
    """Number of distinct parameters (tied tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def apply_width_multiple(groupsets, width_multiple: int) -> None:
    """Ask :func:`.apply.select` to keep a multiple of ``width_multiple`` MLP channels per layer and hidden
    channels (the latter combined with the head-count multiple already there, by least common multiple), where
    that multiple fits in the group set. Query heads and key/value groups are left as they are.

    Raises:
        StructuredPruningError: ``width_multiple`` < 1.
    """
    import math

    m = int(width_multiple)
    if m < 1:
        raise StructuredPruningError(f"width_multiple {width_multiple!r} must be >= 1")
    if m == 1:
        return
    for gs in groupsets:
        if gs.kind not in ("mlp_channel", "hidden_channel"):
            continue
        multiple = math.lcm(m, int(gs.meta.get("keep_multiple", 1)))
        if multiple > gs.n_groups:
            continue
        reason = gs.meta.get("keep_multiple_reason")
        gs.meta["keep_multiple"] = multiple
        gs.meta["keep_multiple_reason"] = ("; ".join(x for x in (reason, f"width_multiple {m} (row lengths "
                                                                          "llama.cpp's quantizers take whole)") if x))


def prune_structured(
    model,
    *,
    level: str,
    ratio: float,
    importance: str = "element1",
    aggregation: str = "sum",
    layer_range=None,
    attention: str = "query_head",
    snap: bool = True,
    calib_ids: torch.Tensor | None = None,
    batch_size: int = 1,
    seed: int = 0,
    width_multiple: int = 1,
    gradient_checkpointing: bool = False,
    log: Callable[[str], None] | None = None,
    block_io=None,
) -> dict:
    """Structurally prune ``model`` in place (LLM-Pruner, Ma et al. 2023, Sec. 3).

    Args:
        level: ``"block"`` (heads and MLP channels of the decoder layers in ``layer_range``; each
            layer loses the same fraction), ``"channel"`` (the hidden dimension of the whole model) or
            ``"layer"`` (whole decoder layers in ``layer_range``, see :mod:`.layers`; ``ratio`` is the
            fraction of those layers removed, snapped to a whole number).
        ratio: fraction of the groups of each group set to remove, in [0, 1): heads are whole
            (snapped to the nearest count, ties pruning less), channels are rounded.
        importance: ``element1`` (= ``taylor``), ``element2``, ``vector``, ``l1``, ``l2``, ``random``
            (see :mod:`.importance`); ``activation`` (Minitron; block, channel), ``contribution``
            (Minitron's statistic of each head's / MLP channel's output through o_proj / down_proj;
            block), ``block-influence``
            (ShortGPT; layer), ``angular`` (Gromov et al.; layer; removes the run of consecutive blocks
            with the smallest angular distance), see :mod:`.activations`.
        aggregation: ``sum`` (LLM-Pruner's default), ``mean`` or ``max`` over a group's tensors.
        layer_range: ``[start, end)`` of decoder layers for ``block`` and ``layer``; None = all but the
            first and last.
        attention: ``query_head`` (query heads, equal numbers per key/value head, k/v kept; on a
            multi-head layer, as many key/value heads as query heads, a head goes with its k/v slices),
            ``kv_group`` (a key/value head with all its query heads) or ``none`` (MLP only).
        snap: round a head ratio that is no whole number of heads (logged); False raises instead.
        width_multiple: round the kept MLP channels of each layer (block level) and the kept hidden size
            (channel level, together with the head-count rule) to a multiple of this, the nearest one, at least
            one multiple: row lengths that llama.cpp's block quantizers take whole (32 for Q8_0/Q4_0, 256 for
            k-quants). Head counts are not rounded (they move in whole key/value groups); 1 = no rounding.
        calib_ids: LongTensor ``[samples, seqlen]``; required by the gradient and activation criteria.
        batch_size: samples per backward pass (``element2`` always uses 1).
        seed: seed of ``random`` importance.
        gradient_checkpointing: the Taylor criteria recompute each decoder block in their backward passes
            (:func:`.importance.checkpointed_blocks`): less activation memory, the same gradients and scores.
        block_io: streamed pruning (:func:`llm_compression.streaming.prune_streamed`; the criteria of
            :func:`~llm_compression.options.pruning.streamable`): the decoder blocks of ``model`` are on ``meta``
            and ``block_io.load(i)`` brings block ``i`` in, which is scored, cut and handed to ``block_io.done(i)``
            before the next one (``block`` level); the ``channel`` level scores in a first pass and cuts in a second
            (:mod:`.streamed_channels`), the ``layer`` level scores block by block and writes the kept blocks
            renumbered (:mod:`.streamed_layers`). The kept groups, the tensors and the report equal the in-memory
            ones (each score reads the same weights or hidden states; ``random`` draws the same numbers in the same
            order).

    Returns:
        dict with ``parameters_before``/``parameters_after`` (distinct tensors' elements),
        ``parameter_ratio`` (achieved fraction of parameters removed, which differs from ``ratio``),
        ``groups`` (per group set: kind, layer, groups before/after), ``layer_shapes`` (per layer),
        ``hidden_size``, ``calibration_budget`` (samples, seqlen, tokens, passes; None when the criterion
        reads no calibration), ``uniform`` (all decoder layers equally wide), ``plain_loadable`` (True when
        plain ``from_pretrained`` reloads the saved model; else ``loader`` names :func:`load_pruned`),
        ``seconds``.

    Raises:
        StructuredPruningError: bad option, unsupported architecture, missing calibration data,
            a head ratio that is no whole number when ``snap`` is False -- all before any weight changes.
    """
    t0 = time.perf_counter()
    importance = canonical_importance(importance)
    if aggregation not in AGGREGATIONS:
        raise StructuredPruningError(f"aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise StructuredPruningError(f"ratio {ratio!r} is outside [0, 1)")
    ratio = float(ratio)
    if level not in LEVELS:
        raise StructuredPruningError(f"structured level {level!r} is not one of {', '.join(LEVELS)}")
    check_importance_level(importance, level)
    if needs_calibration(importance) and calib_ids is None:
        raise StructuredPruningError(f"importance {importance!r} needs calibration data (calib_ids)")
    if block_io is not None and not streamable({"method": METHOD_PREFIX + importance, "level": level}):
        raise StructuredPruningError(
            f"level {level!r} with importance {importance!r} cannot be pruned block by block (streamed): the block "
            f"level with {', '.join(STREAMED_STRUCTURED_IMPORTANCES)}, the channel level with "
            f"{', '.join(STREAMED_CHANNEL_IMPORTANCES)} and the layer level with "
            f"{', '.join(STREAMED_DEPTH_IMPORTANCES)} can; prune this one in memory")
    if level == "layer":
        return _prune_layers(model, ratio=ratio, importance=importance, aggregation=aggregation,
                             layer_range=layer_range, snap=snap, calib_ids=calib_ids, batch_size=batch_size,
                             seed=seed, log=log, t0=t0, block_io=block_io,
                             gradient_checkpointing=gradient_checkpointing)
    groupsets = build_groups(model, level, layer_range=layer_range, attention=attention)
    apply_width_multiple(groupsets, width_multiple)
    before = count_parameters(model)
    shapes_before = layer_shapes(model)
    seen_msgs: set[str] = set()

    def once(msg):
        if log and msg not in seen_msgs:
            seen_msgs.add(msg)
            log(msg)

    if block_io is not None and level == "channel":
        from .streamed_channels import prune_channels_streamed

        keeps = [prune_channels_streamed(model, gs, block_io, ratio=ratio, importance=importance,
                                         aggregation=aggregation, snap=snap, seed=seed, log=once,
                                         calib_ids=calib_ids, batch_size=batch_size) for gs in groupsets]
    elif block_io is not None:
        keeps = _prune_blocks_streamed(model, groupsets, block_io, ratio=ratio, importance=importance,
                                       aggregation=aggregation, snap=snap, seed=seed, log=once, calib_ids=calib_ids,
                                       batch_size=batch_size)
    if block_io is not None:
        return _structured_report(model, groupsets, keeps, level=level, ratio=ratio, importance=importance,
                                  aggregation=aggregation, attention=attention, layer_range=layer_range,
                                  before=before, shapes_before=shapes_before, calib_ids=calib_ids,
                                  batch_size=batch_size, t_grad=0.0, t0=t0, log=log)
    # scores, then the kept indices (validates snapping) before any tensor changes
    grads = None
    t_grad = 0.0
    if needs_gradients(importance) and ratio > 0:
        tg = time.perf_counter()
        names = {m.name for gs in groupsets for m in gs.members}
        grads = collect_gradients(model, calib_ids, names, second_order=importance == "element2",
                                  batch_size=batch_size, gradient_checkpointing=gradient_checkpointing)
        t_grad = time.perf_counter() - tg
    if ratio > 0 and importance in WIDTH_ACTIVATION_IMPORTANCES:
        tg = time.perf_counter()
        scores = activation_group_importance(groupsets, model, calib_ids, batch_size=batch_size,
                                             importance=importance)
        t_grad = time.perf_counter() - tg
    elif ratio > 0:
        scores = group_importance(groupsets, model, importance, aggregation=aggregation, grads=grads, seed=seed)
    else:  # nothing is removed: no scores needed (and no gradients were taken)
        scores = [torch.zeros(gs.n_groups, dtype=torch.float64) for gs in groupsets]
    del grads
    keeps = [select(gs, s, ratio, snap=snap, log=once) for gs, s in zip(groupsets, scores)]
    shrink(model, groupsets, keeps)
    return _structured_report(model, groupsets, keeps, level=level, ratio=ratio, importance=importance,
                              aggregation=aggregation, attention=attention, layer_range=layer_range, before=before,
                              shapes_before=shapes_before, calib_ids=calib_ids, batch_size=batch_size,
                              t_grad=t_grad, t0=t0, log=log)


@torch.no_grad()
def _prune_blocks_streamed(model, groupsets, block_io, *, ratio, importance, aggregation, snap, seed, log,
                           calib_ids=None, batch_size=1) -> list[torch.Tensor]:
    """The streamed ``block`` level of :func:`prune_structured`: every decoder block in turn is loaded
    (``block_io.load``), its group sets scored from its own weights or, for the activation criteria, from its
    outputs on its (dense) inputs, cut, and handed on (``block_io.done``). The snapping of every group set is
    checked first, before any block is read. Returns the kept indices.

    The activation criteria replay the calibration set block by block (the block-0 inputs captured once, each
    dense block's outputs the next one's inputs, computed before the block is cut): the statistics of
    :func:`.activations.activation_statistics` on the same hidden states, batch by batch in the same order."""
    from ..calibration import _block_output, capture_block_inputs
    from .activations import ActivationStatistics, width_scores

    for gs in groupsets:  # a ratio that is no whole number of heads (snap False) fails before any work
        select(gs, torch.zeros(gs.n_groups, dtype=torch.float64), ratio, snap=snap, log=None)
    drawn = (group_importance(groupsets, model, "random", seed=seed)  # no weights read: the same draws in order
             if importance == "random" else None)
    replay = importance in WIDTH_ACTIVATION_IMPORTANCES and ratio > 0 and groupsets
    if replay:
        if not (isinstance(calib_ids, torch.Tensor) and calib_ids.dim() == 2 and calib_ids.numel() > 0):
            raise StructuredPruningError("activation importance needs calib_ids, a LongTensor [samples, seqlen]")
        hidden, call_args = capture_block_inputs(model, calib_ids, max(1, int(batch_size)))
        if hasattr(block_io, "inputs_captured"):
            block_io.inputs_captured()
        last = max(gs.layer for gs in groupsets)  # no statistics after it: its outputs are not needed
        stats = ActivationStatistics(contribution=importance == "contribution")
    keeps: list[torch.Tensor | None] = [None] * len(groupsets)
    for i in range(len(layer_shapes(model))):
        block = decoder_layers(model)[i]
        block_io.load(i)
        mine = [j for j, gs in enumerate(groupsets) if gs.layer == i]
        if replay and i <= last:
            hooks = stats.attach(i, block) if mine else []
            try:
                for j, (args, kwargs) in enumerate(call_args[i]):
                    out = _block_output(block(hidden[j], *args, **kwargs))
                    hidden[j] = out if i < last else None
            finally:
                for h in hooks:
                    h.remove()
            call_args[i] = None
        if mine:
            if ratio <= 0:
                scores = [torch.zeros(groupsets[j].n_groups, dtype=torch.float64) for j in mine]
            elif drawn is not None:
                scores = [drawn[j] for j in mine]
            elif replay:
                scores = [width_scores(groupsets[j], stats.heads(i), stats.mlp(i)) for j in mine]
            else:
                scores = group_importance([groupsets[j] for j in mine], model, importance, aggregation=aggregation)
            for j, sc in zip(mine, scores):
                keeps[j] = select(groupsets[j], sc, ratio, snap=snap, log=log)
            shrink(model, [groupsets[j] for j in mine], [keeps[j] for j in mine])
        block_io.done(i)
    return keeps


def _structured_report(model, groupsets, keeps, *, level, ratio, importance, aggregation, attention, layer_range,
                       before, shapes_before, calib_ids, batch_size, t_grad, t0, log) -> dict:
    """The result of :func:`prune_structured` (``block`` and ``channel`` levels), logged."""
    groups = [{"kind": gs.kind, "layer": gs.layer, "before": gs.n_groups, "after": int(k.numel()),
               "removed": sorted(set(range(gs.n_groups)) - set(k.tolist()))}
              for gs, k in zip(groupsets, keeps)]
    if log:
        for line in removal_lines(groups):
            log(line)
    result = {
        "level": level,
        "ratio": ratio,
        "importance": importance,
        "aggregation": aggregation,
        "attention": attention,
        "layer_range": list(resolve_layer_range(len(shapes_before), layer_range)) if level == "block" else None,
        **_shape_report(model, before, shapes_before),
        "groups": groups,
        "calibration_budget": calibration_budget(importance, calib_ids, batch_size) if ratio > 0 else None,
        "gradient_seconds": t_grad,  # seconds spent reading calibration (gradients or activations)
        "seconds": time.perf_counter() - t0,
    }
    if log:
        log(f"structured {level} ratio={ratio} importance={importance}/{aggregation}: parameters "
            f"{before:,} -> {result['parameters_after']:,} (removed {result['parameter_ratio']:.4f}); "
            f"uniform widths: {result['uniform']}, "
            f"reload with {result['loader']}")
    return result


#: how the log names the units of each group kind
_UNIT_NAMES = {"attention_head": "attention heads (q/k/v/o slices, each with its own key/value head)",
               "query_head": "query heads (q/o slices; key/value heads kept)",
               "kv_group": "key/value groups (k/v head with its query heads)",
               "mlp_channel": "MLP channels (gate/up rows, down columns)",
               "hidden_channel": "hidden channels (whole model)"}


def removal_lines(groups: list[dict]) -> list[str]:
    """One log line per pruned group set (``groups`` entries of :func:`prune_structured`'s result): the
    layer, the unit, the count before -> after and, for heads, the indices removed."""
    out = []
    for g in groups:
        where = f"layer {g['layer']}" if g["layer"] is not None else "model"
        unit = _UNIT_NAMES.get(g["kind"], g["kind"])
        line = f"{where}: {unit} {g['before']} -> {g['after']}"
        if g["kind"] in ("attention_head", "query_head", "kv_group"):
            line += f", removed {g['removed']}"
        else:
            line += f" ({g['before'] - g['after']} removed)"
        out.append(line)
    return out


def calibration_budget(importance: str, calib_ids, batch_size: int) -> dict | None:
    """What the criterion read: samples, tokens per sample, tokens, passes (None without calibration)."""
    if not needs_calibration(importance) or calib_ids is None:
        return None
    n, t = (int(x) for x in calib_ids.shape)
    return {"samples": n, "seqlen": t, "tokens": n * t, "batch_size": int(batch_size),
            "passes": "forward and backward" if needs_gradients(importance) else "forward only"}


def _shape_report(model, before: int, shapes_before: list[dict]) -> dict:
    """Parameter counts, widths and reload route of a model just pruned (part of the result dict)."""
    after = count_parameters(model)
    loadable = plain_loadable(model)
    return {
        "parameters_before": before,
        "parameters_after": after,
        "parameter_ratio": 1.0 - after / before,
        "hidden_size": int(model.config.hidden_size),
        "layer_shapes_before": shapes_before,
        "layer_shapes": layer_shapes(model),
        "uniform": is_uniform(model),
        "plain_loadable": loadable,
        "loader": "from_pretrained" if loadable else "llm_compression.prune.structured.load_pruned",
    }


def _prune_layers(model, *, ratio, importance, aggregation, layer_range, snap, calib_ids, batch_size, seed,
                  gradient_checkpointing=False,
                  log, t0, block_io=None) -> dict:
    """The ``layer`` level of :func:`prune_structured` (see :mod:`.layers`). With ``block_io`` (streamed) the
    scores come from :mod:`.streamed_layers` (one block resident at a time) and the kept blocks are written,
    renumbered, by ``block_io.renumber`` before the skeleton drops the others."""
    from .apply import snap_count, sync_metadata
    from .activations import angular_distances, block_influence
    from .layers import drop_layers, layer_importance, layer_parameter_names

    check_architecture(model, "block")
    n_layers = len(layer_shapes(model))
    start, end = resolve_layer_range(n_layers, layer_range)
    candidates = list(range(start, end))
    k = snap_count(ratio * len(candidates), len(candidates), what="decoder layers", snap=snap, log=log,
                   min_keep=0 if len(candidates) < n_layers else 1, where=f" in layer_range [{start}, {end})")
    before = count_parameters(model)
    shapes_before = layer_shapes(model)
    t_grad = 0.0
    removed: list[int] = []
    scores = None
    candidates_scored = candidates
    if block_io is not None:
        from . import streamed_layers as scorer
    if k > 0:
        grads = None
        if needs_gradients(importance):
            tg = time.perf_counter()
            grads = collect_gradients(model, calib_ids, layer_parameter_names(model, candidates),
                                      second_order=importance == "element2", batch_size=batch_size,
                                      gradient_checkpointing=gradient_checkpointing)
            t_grad = time.perf_counter() - tg
        if importance == "angular":  # the run of k consecutive blocks whose input and output are closest
            tg = time.perf_counter()
            dist = (scorer.angular_distances(model, block_io, calib_ids, k, batch_size=batch_size)
                    if block_io is not None else angular_distances(model, calib_ids, k, batch_size=batch_size))
            t_grad = time.perf_counter() - tg
            starts = list(range(start, end - k + 1))
            scores = dist[starts]
            best = min(range(len(starts)), key=lambda j: (float(scores[j]), starts[j]))
            removed = list(range(starts[best], starts[best] + k))
            candidates_scored = starts
        else:
            if importance == "block-influence":
                tg = time.perf_counter()
                scores = (scorer.block_influence(model, block_io, calib_ids, batch_size=batch_size)
                          if block_io is not None else block_influence(model, calib_ids, batch_size=batch_size))
                scores = scores[candidates]
                t_grad = time.perf_counter() - tg
            else:
                scores = (scorer.layer_importance(model, block_io, candidates, importance, aggregation=aggregation,
                                                  seed=seed)
                          if block_io is not None else
                          layer_importance(model, candidates, importance, aggregation=aggregation, grads=grads,
                                           seed=seed))
            order = sorted(range(len(candidates)), key=lambda j: (float(scores[j]), candidates[j]))
            removed = sorted(candidates[j] for j in order[:k])
            candidates_scored = candidates
        del grads
    if block_io is not None:  # the kept blocks written as blocks 0, 1, ... before the skeleton drops the rest
        block_io.renumber([i for i in range(n_layers) if i not in set(removed)])
    if k > 0:
        drop_layers(model, removed)
        sync_metadata(model)
    result = {
        "level": "layer",
        "ratio": ratio,
        "importance": importance,
        "aggregation": aggregation,
        "attention": None,
        "layer_range": [start, end],
        **_shape_report(model, before, shapes_before),
        "groups": [{"kind": "layer", "layer": None, "before": len(candidates), "after": len(candidates) - k,
                    "removed": removed,
                    "scores": ({str(c): float(s) for c, s in zip(candidates_scored, scores)}
                               if scores is not None else {}),
                    "scores_of": ("first block of a run of the removed length (angular distance)"
                                  if importance == "angular" else "decoder layer")}],
        "layers_removed": removed,
        "calibration_budget": calibration_budget(importance, calib_ids, batch_size) if k > 0 else None,
        "gradient_seconds": t_grad,  # seconds spent reading calibration (gradients or activations)
        "seconds": time.perf_counter() - t0,
    }
    if log:
        log(f"structured layer ratio={ratio} importance={importance}/{aggregation}: removed decoder layers "
            f"{removed}; parameters {before:,} -> {result['parameters_after']:,} "
            f"(removed {result['parameter_ratio']:.4f})")
    return result
