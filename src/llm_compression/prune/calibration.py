"""Layer-by-layer calibration driver for pruning methods that look at activations.

The model is never run end to end on the calibration set more than once (and then only up to the
first decoder block): the inputs of block 0 are captured, block ``i`` is run on its inputs while
per-Linear statistics are accumulated, its Linears are pruned, and the *pruned* block is run again
to produce the inputs of block ``i + 1`` (the sequential scheme of SparseGPT, Frantar & Alistarh
2023, Sec. 3.3 / Algorithm 1 driver, also used by Wanda, Sun et al. 2024, Sec. 3). Peak memory is one
model copy plus one block's activations for the calibration set.

A method plugs in through a *layer pruner*: an object built per Linear with
``add_batch(inp, out)`` (``inp``: ``[..., in_features]``, ``out``: ``[..., out_features]``) and
``prune()`` that zeroes weights in place.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

import torch
from torch import nn

from ..modules import decoder_layers, is_linear


class LayerPruner(Protocol):
    def add_batch(self, inp: torch.Tensor, out: torch.Tensor) -> None: ...

    def prune(self) -> None: ...


class _StopForward(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for a decoder block during capture: records its call and passes the input through."""

    def __init__(self, block: nn.Module, sink: list, stop: bool, keep_hidden: bool):
        super().__init__()
        self.block = block
        self.sink = sink
        self.stop = stop
        self.keep_hidden = keep_hidden

    def __getattr__(self, name):  # e.g. Gemma-3 reads decoder_layer.attention_type
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)

    def forward(self, hidden_states, *args, **kwargs):
        self.sink.append((hidden_states.detach() if self.keep_hidden else None, args, kwargs))
        if self.stop:
            raise _StopForward
        return hidden_states


@torch.no_grad()
def capture_block_inputs(model, calib_ids: torch.Tensor, batch_size: int):
    """Run the calibration set up to the decoder blocks.

    Args:
        calib_ids: LongTensor ``[n_samples, seqlen]``.

    Returns:
        ``(hidden, call_args)``: ``hidden`` is a list (one per mini-batch) of block-0 inputs
        ``[b, seqlen, hidden]``; ``call_args[i][j]`` is the ``(args, kwargs)`` block ``i`` receives
        for mini-batch ``j`` (attention mask, position embeddings, ...).
    """
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    originals = list(layers)
    sinks = [[] for _ in originals]
    for i, block in enumerate(originals):
        layers[i] = _Recorder(block, sinks[i], stop=(i == len(originals) - 1), keep_hidden=(i == 0))
    try:
        for start in range(0, calib_ids.shape[0], batch_size):
            try:
                model(input_ids=calib_ids[start : start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for i, block in enumerate(originals):
            layers[i] = block
    hidden = [h for h, _, _ in sinks[0]]
    call_args = [[(a, k) for _, a, k in sink] for sink in sinks]
    return hidden, call_args


def _block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def sequential_prune(
    model,
    calib_ids: torch.Tensor,
    make_pruner: Callable[[str, nn.Linear], LayerPruner],
    *,
    batch_size: int = 8,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Prune every Linear of every decoder block, block by block, on calibrated activations.

    Args:
        calib_ids: LongTensor ``[n_samples, seqlen]`` of calibration tokens.
        make_pruner: called as ``make_pruner(name, linear)`` for each Linear of the current block
            (``name`` like ``model.layers.3.self_attn.q_proj``); returns a :class:`LayerPruner`.
        batch_size: calibration samples per forward pass through a block.

    Returns:
        One dict per decoder block: ``block``, ``seconds``.
    """
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    hidden, call_args = capture_block_inputs(model, calib_ids, batch_size)
    report = []
    it = range(len(layers))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="prune blocks", unit="block", mininterval=5)
    for i in it:
        t0 = time.perf_counter()
        block = layers[i]
        linears = {n: m for n, m in block.named_modules() if is_linear(m)}
        pruners = {n: make_pruner(f"{prefix}.{i}.{n}", m) for n, m in linears.items()}
        handles = [
            m.register_forward_hook(lambda mod, inp, out, p=pruners[n]: p.add_batch(inp[0].detach(), out.detach()))
            for n, m in linears.items()
        ]
        try:
            for h, (args, kwargs) in zip(hidden, call_args[i]):
                block(h, *args, **kwargs)
        finally:
            for hd in handles:
                hd.remove()
        for p in pruners.values():
            p.prune()
        del pruners
        hidden = [_block_output(block(h, *args, **kwargs)) for h, (args, kwargs) in zip(hidden, call_args[i])]
        secs = time.perf_counter() - t0
        report.append({"block": i, "seconds": secs})
        if log:
            log(f"block {i}: pruned {len(linears)} linears in {secs:.2f}s")
    return report
