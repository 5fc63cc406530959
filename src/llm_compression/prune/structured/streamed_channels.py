"""The ``channel`` level (the hidden dimension of the whole model) with one decoder block resident at a time
(streamed pruning, :func:`llm_compression.streaming.prune_streamed`).

The hidden channels are one group set whose members lie in every block and outside them (embeddings, head, final
norm), so the scores are taken in a first pass over the blocks and the cut in a second:

- ``l1`` / ``l2``: each member's per-channel row (:func:`.importance.member_scores`) is computed while its block
  is resident (the weights outside the blocks are read one tensor at a time), and the rows are aggregated in the
  members' order, as in memory;
- ``random``: the same draw as in memory, nothing read;
- ``activation`` (Minitron, Muralidharan et al. 2024, Sec. 2.2: ``sum_N |LN_N(h)|`` over every hidden-size norm,
  sequence mean, batch L2): the calibration set is replayed block by block, each batch's ``|LN(h)|`` summed over
  the norms in the order the model calls them (the blocks' norms, then the final norm), then aggregated as in
  :func:`.activations.activation_statistics`.

Then every block is read, its members cut to the kept channels and written; the weights outside the blocks are cut
when written (``block_io.outer_cut``). Kept channels, tensors and report equal the in-memory ones (tested).

``block_io``: the streamed pruning's block writer (``load``/``done`` as for the block level, ``read``/``release``
for scoring, ``read_tensor(name)`` for a weight outside the blocks, ``load_norm()`` for the final norm,
``outer_cut``: name -> ``(dim, index)`` applied when the outer weights are written).
"""

from __future__ import annotations

import torch

from ...modules import decoder_layers
from .activations import _check_calib
from .apply import select, shrink
from .groups import GroupSet, hidden_norms
from .importance import aggregate, group_importance, member_scores


def _block_of(name: str, prefix: str) -> int | None:
    head = prefix + "."
    return int(name[len(head):].split(".", 1)[0]) if name.startswith(head) else None


@torch.no_grad()
def hidden_channel_scores(model, gs: GroupSet, block_io, *, importance: str, aggregation: str, seed: int,
                          calib_ids=None, batch_size: int = 1) -> torch.Tensor:
    """Importance ``[hidden]`` (float64) of the hidden channels, one block resident at a time (module doc).

    Raises:
        StructuredPruningError: bad ``calib_ids`` for ``activation``; an unknown criterion or aggregation.
    """
    if importance == "random":
        return group_importance([gs], model, "random", seed=seed)[0]
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    if importance == "activation":
        return _activation_scores(model, block_io, prefix, calib_ids, batch_size)
    rows: dict[str, torch.Tensor] = {}
    outer = [m for m in gs.members if _block_of(m.name, prefix) is None]
    for m in outer:  # one tensor at a time
        part = GroupSet(gs.kind, None, gs.n_groups, [m])
        rows[m.name] = member_scores(part, {m.name: block_io.read_tensor(m.name)}, importance)[0]
    for i in range(len(layers)):
        mine = [m for m in gs.members if _block_of(m.name, prefix) == i]
        block_io.read(i)
        try:
            params = dict(model.named_parameters())
            for m, row in zip(mine, member_scores(GroupSet(gs.kind, None, gs.n_groups, mine), params, importance)):
                rows[m.name] = row
        finally:
            block_io.release(i)
    return aggregate(torch.stack([rows[m.name] for m in gs.members]), aggregation)


def _activation_scores(model, block_io, prefix: str, calib_ids, batch_size: int) -> torch.Tensor:
    from ..calibration import _block_output, capture_block_inputs

    _check_calib(calib_ids)
    hidden, call_args = capture_block_inputs(model, calib_ids, max(1, int(batch_size)))
    if hasattr(block_io, "inputs_captured"):
        block_io.inputs_captured()
    norms = hidden_norms(model)
    summed: list[torch.Tensor | None] = [None] * len(hidden)  # per batch: sum over the norms of |LN(h)|
    cur = {}

    def norm_hook(_mod, _args, out):
        v = out.double().abs()
        j = cur["batch"]
        summed[j] = v if summed[j] is None else summed[j] + v

    layers = decoder_layers(model)
    for i in range(len(layers)):
        block = block_io.read(i)
        mine = [m for n, m in norms if _block_of(n, prefix) == i]
        hooks = [m.register_forward_hook(norm_hook) for m in mine]
        try:
            for j, (args, kwargs) in enumerate(call_args[i]):
                cur["batch"] = j
                hidden[j] = _block_output(block(hidden[j], *args, **kwargs))
        finally:
            for h in hooks:
                h.remove()
            block_io.release(i)
        call_args[i] = None
    final = [m for n, m in norms if _block_of(n, prefix) is None]  # the final norm
    block_io.load_norm()
    hooks = [m.register_forward_hook(norm_hook) for m in final]
    try:
        for j in range(len(hidden)):
            cur["batch"] = j
            model.model.norm(hidden[j])
            hidden[j] = None
    finally:
        for h in hooks:
            h.remove()
    acc = None
    for s in summed:  # sequence mean, then the sum of squares over samples, batch by batch
        sq = (s.mean(1).double() ** 2).sum(0).cpu()
        acc = sq if acc is None else acc + sq
    return acc.sqrt()


@torch.no_grad()
def prune_channels_streamed(model, gs: GroupSet, block_io, *, ratio: float, importance: str, aggregation: str,
                            snap: bool, seed: int, log, calib_ids=None, batch_size: int = 1) -> torch.Tensor:
    """Score, select and cut the hidden channels block by block (module doc); returns the kept channel indices.

    Raises:
        StructuredPruningError: see :func:`hidden_channel_scores` and :func:`.apply.select` (snapping).
    """
    select(gs, torch.zeros(gs.n_groups, dtype=torch.float64), ratio, snap=snap, log=None)  # snapping, before work
    if ratio > 0:
        scores = hidden_channel_scores(model, gs, block_io, importance=importance, aggregation=aggregation,
                                       seed=seed, calib_ids=calib_ids, batch_size=batch_size)
    else:
        scores = torch.zeros(gs.n_groups, dtype=torch.float64)
    keep = select(gs, scores, ratio, snap=snap, log=log)
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    for i in range(len(layers)):
        block_io.load(i)
        mine = [m for m in gs.members if _block_of(m.name, prefix) == i]
        shrink(model, [GroupSet(gs.kind, None, gs.n_groups, mine)], [keep])
        block_io.done(i)
    outer = [m for m in gs.members if _block_of(m.name, prefix) is None]
    block_io.outer_cut = {m.name: (m.dim, keep) for m in outer}
    # the skeleton's own weights outside the blocks (on meta) take the new width, so the config follows
    block_io.free_outer()
    shrink(model, [GroupSet(gs.kind, None, gs.n_groups, outer)], [keep])
    return keep
