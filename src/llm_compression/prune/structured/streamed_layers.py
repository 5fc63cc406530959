"""Depth-pruning scores (``layer`` level) with one decoder block resident at a time (streamed pruning,
:func:`llm_compression.streaming.prune_streamed`).

Each function equals its in-memory counterpart bit for bit (tested): :func:`layer_importance` that of
:func:`.layers.layer_importance` (each block's weight norms read from that block alone; ``random`` reads nothing),
:func:`block_influence` and :func:`angular_distances` those of :mod:`.activations` (ShortGPT, Men et al. 2024,
Eq. 2; Gromov et al. 2024, Eq. 7): the calibration set's block-0 inputs are captured once and replayed block by
block, the residual stream at each block boundary is the previous block's output, and each score adds its
batches in the same order as the in-memory loop does.

``block_io`` is the streamed pruning's block reader: ``read(i)`` brings block ``i`` onto the device and
returns it, ``release(i)`` drops it again, ``inputs_captured()`` (optional) is called once the block-0 inputs
exist.
"""

from __future__ import annotations

import torch

from ...modules import decoder_layers
from .activations import _check_calib, angular_distance, cosine
from .groups import StructuredPruningError
from .layers import layer_importance as layer_importance_in_memory


def layer_importance(model, block_io, layers: list[int], importance: str, *, aggregation: str = "sum",
                     seed: int = 0) -> torch.Tensor:
    """:func:`.layers.layer_importance` (``l1``, ``l2``, ``random``) with one block resident at a time:
    ``[len(layers)]`` float64, higher = keep.

    Raises:
        StructuredPruningError: a criterion that needs gradients, unknown criterion or aggregation.
    """
    if importance == "random":  # one draw for all layers, as in memory: no weights read
        return layer_importance_in_memory(model, layers, importance, seed=seed)
    if importance not in ("l1", "l2"):
        raise StructuredPruningError(f"importance {importance!r} is not scored block by block; l1, l2, random are")
    out = []
    for i in layers:
        block_io.read(i)
        try:
            out.append(layer_importance_in_memory(model, [i], importance, aggregation=aggregation)[0])
        finally:
            block_io.release(i)
    return torch.stack(out)


def _replay(model, block_io, calib_ids: torch.Tensor, batch_size: int):
    """Yield ``(i, inputs, outputs)`` for every decoder block ``i`` in order: the lists (one entry per
    calibration batch) of the block's input and output hidden states, the block resident only for its turn."""
    from ..calibration import _block_output, capture_block_inputs

    hidden, call_args = capture_block_inputs(model, calib_ids, max(1, int(batch_size)))
    if hasattr(block_io, "inputs_captured"):
        block_io.inputs_captured()
    for i in range(len(decoder_layers(model))):
        block = block_io.read(i)
        try:
            out = [_block_output(block(h, *a, **kw)) for h, (a, kw) in zip(hidden, call_args[i])]
        finally:
            block_io.release(i)
        call_args[i] = None
        yield i, hidden, out
        hidden = out


@torch.no_grad()
def block_influence(model, block_io, calib_ids: torch.Tensor, *, batch_size: int = 1) -> torch.Tensor:
    """:func:`.activations.block_influence` block by block: ``[n_layers]`` float64, ``1 - mean cos(h_i, h_{i+1})``
    over every calibration token.

    Raises:
        StructuredPruningError: ``calib_ids`` is not a non-empty 2-D LongTensor.
    """
    _check_calib(calib_ids)
    total = torch.zeros(len(decoder_layers(model)), dtype=torch.float64)
    for i, inputs, outputs in _replay(model, block_io, calib_ids, batch_size):
        for h, o in zip(inputs, outputs):
            total[i] += cosine(h.detach().double().cpu(), o.detach().double().cpu()).sum()
    return 1.0 - total / calib_ids.numel()


@torch.no_grad()
def angular_distances(model, block_io, calib_ids: torch.Tensor, n: int, *, batch_size: int = 1) -> torch.Tensor:
    """:func:`.activations.angular_distances` (every token) block by block: ``[n_layers - n + 1]`` float64, the
    angular distance between the input of block ``l`` and the output of block ``l + n - 1``. The stream at the
    last ``n + 1`` block boundaries is kept (in the activations' own dtype, widened to float64 when compared).

    Raises:
        StructuredPruningError: ``n`` outside ``[1, n_layers]``, bad ``calib_ids``.
    """
    _check_calib(calib_ids)
    layers = len(decoder_layers(model))
    if not 1 <= int(n) <= layers:
        raise StructuredPruningError(f"angular distance over n={n} blocks needs 1 <= n <= {layers}")
    total = torch.zeros(layers - n + 1, dtype=torch.float64)
    boundary: dict[int, list[torch.Tensor]] = {}
    for i, inputs, outputs in _replay(model, block_io, calib_ids, batch_size):
        boundary[i] = [h.detach().cpu() for h in inputs]
        boundary[i + 1] = [o.detach().cpu() for o in outputs]
        l = i + 1 - n  # the run of n blocks that ends with block i
        if l >= 0:
            for a, b in zip(boundary[l], boundary[i + 1]):
                total[l] += angular_distance(a.double(), b.double()).sum()
            del boundary[l]
    return total / calib_ids.numel()
