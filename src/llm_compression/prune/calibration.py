"""Layer-by-layer calibration driver for pruning methods that look at activations.

The model is never run end to end on the calibration set more than once (and then only up to the
first decoder block): the inputs of block 0 are captured, block ``i`` is run on its inputs while
per-Linear statistics are accumulated, its Linears are pruned, and the *pruned* block is run again
to produce the inputs of block ``i + 1`` (the sequential scheme of SparseGPT, Frantar & Alistarh
2023, Sec. 3.3 / Algorithm 1 driver, also used by Wanda, Sun et al. 2024, Sec. 3). Peak memory is one
model copy plus one block's activations for the calibration set.

Work saved without changing a number: the statistics pass of a block stops at the input of its
last Linear (everything after it, e.g. the MLP down projection and the residual add, only makes the
block output, which that pass does not use; the last Linear is found on the block's first batch,
where the block runs whole, and used only when every Linear was called exactly once), and the last
block is not run a second time (its output feeds no block). With ``compute_dtype`` (e.g.
``torch.bfloat16``) the block forwards run on a copy of the block in that dtype while the weights
are pruned (and SparseGPT-updated) in the model's own dtype; the pruners accumulate their
statistics in float32/float64 whatever the activations' dtype.

A method plugs in through a *layer pruner*: an object built per Linear with
``add_batch(inp, out=None)`` (``inp``: ``[..., in_features]``; ``out`` is always ``None``: the
statistics pass does not compute outputs it does not need) and ``prune()`` that zeroes weights in place. A pruner may also offer ``share_from(leader)``: Linears
that read the very same input tensor (q/k/v projections, MLP gate/up) then accumulate their
input statistics once (on the first of them, the leader) and the others adopt them, instead of
computing the same ``X^T X`` (SparseGPT) or ``||X_j||`` (Wanda) two or three times.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Protocol

import torch
from torch import nn

from ..modules import decoder_layers, is_linear
from ..options.dtypes import check_compute_dtype as check_dtype_name
from ..options.dtypes import dtype_name


class LayerPruner(Protocol):
    def add_batch(self, inp: torch.Tensor, out: torch.Tensor | None = None) -> None: ...

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


class _SharedInputs:
    """Forward pre-hooks that feed each Linear's input to its pruner, once per distinct input tensor.

    Within one batch, a Linear whose input is the same tensor object as an earlier Linear's (whose
    pruner has the same type and offers ``share_from``) becomes that Linear's follower: it skips
    ``add_batch`` and adopts the leader's statistics in :meth:`finish`. The tensors seen in the
    current batch are referenced until the batch ends, so their ids cannot be reused by new
    tensors. The grouping is fixed on the first batch and checked on every later one.

    The calls of the first batch are recorded (:attr:`calls`); with :attr:`stop_after` set to a
    Linear's name, its hook raises :class:`_StopForward` once it has fed that Linear's input, after
    checking that every Linear of the block was fed in this batch.
    """

    def __init__(self, pruners: dict, enabled: bool):
        self.pruners = pruners
        self.enabled = enabled
        self.leader_of: dict[str, str] = {}
        self.batch = None
        self.seen: dict[int, tuple[torch.Tensor, str]] = {}
        self.calls: list[str] = []
        self.fed: set[str] = set()
        self.stop_after: str | None = None

    def start_batch(self, batch):
        self.batch = batch
        self.seen = {}
        self.fed = set()

    def hook(self, name: str):
        def f(mod, args):
            x = args[0]  # the object the module was called with (detach() would make a new one)
            p = self.pruners[name]
            prev = self.seen.get(id(x)) if self.enabled else None
            leader = None
            if prev is not None and prev[0] is x:
                cand = prev[1]
                if type(self.pruners[cand]) is type(p) and hasattr(p, "share_from"):
                    leader = cand
            if self.batch == 0:
                self.calls.append(name)
                if leader is not None:
                    self.leader_of[name] = leader
            elif self.leader_of.get(name) != leader:
                raise RuntimeError(
                    f"Linear {name}: inputs shared with {leader!r} in batch {self.batch} but with "
                    f"{self.leader_of.get(name)!r} in batch 0; run with share_inputs=False"
                )
            if leader is None:
                if self.enabled:
                    self.seen[id(x)] = (x, name)
                p.add_batch(x.detach())
            self.fed.add(name)
            if name == self.stop_after:
                missing = sorted(set(self.pruners) - self.fed)
                if missing:
                    raise RuntimeError(f"Linear {name} was the last one called in batch 0 but in batch "
                                       f"{self.batch} it comes before {missing}")
                raise _StopForward

        return f

    def last_linear(self) -> str | None:
        """The Linear called last in batch 0 when every Linear was called exactly once, else None."""
        if sorted(self.calls) != sorted(self.pruners):
            return None
        return self.calls[-1]

    def finish(self):
        for name, leader in self.leader_of.items():
            self.pruners[name].share_from(self.pruners[leader])


def _to_dtype(obj, dtype: torch.dtype):
    """``obj`` with its floating-point tensors (also inside tuples, lists, dicts) cast to ``dtype``."""
    if torch.is_tensor(obj):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_dtype(v, dtype) for v in obj)
    if isinstance(obj, dict):
        return {k: _to_dtype(v, dtype) for k, v in obj.items()}
    return obj


def check_compute_dtype(compute_dtype: torch.dtype | None, device: torch.device | str) -> None:
    """Refuse a calibration compute dtype that cannot work on ``device``, before any heavy work
    (:func:`llm_compression.options.dtypes.check_compute_dtype`; ``None`` = the model's own dtype).

    Raises:
        ValueError: not one of float32/bfloat16/float16, or ``float16`` on a CPU (fp16 matmuls on CPU
            are slow and fp16 activations overflow to inf in deep blocks, which no pruner can use:
            use ``bfloat16``).
    """
    if compute_dtype is None:
        return
    check_dtype_name(dtype_name(compute_dtype), device, purpose="calibration")


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
    share_inputs: bool = True,
    compute_dtype: torch.dtype | None = None,
    block_io=None,
) -> list[dict]:
    """Prune every Linear of every decoder block, block by block, on calibrated activations.

    Args:
        calib_ids: LongTensor ``[n_samples, seqlen]`` of calibration tokens.
        make_pruner: called as ``make_pruner(name, linear)`` for each Linear of the current block
            (``name`` like ``model.layers.3.self_attn.q_proj``); returns a :class:`LayerPruner`.
        batch_size: calibration samples per forward pass through a block.
        share_inputs: let Linears that read the same input tensor share accumulated statistics
            (pruners with ``share_from``); the result is the same, the work is less.
        compute_dtype: dtype of the block forwards (``None``: the model's own). Another dtype runs
            each block's forwards on a copy of the block cast to it (the block inputs are kept in it
            too) while the pruners prune the model's own weights; the pruners accumulate their
            statistics in float32/float64.
        block_io: streamed pruning (:func:`llm_compression.streaming.prune_streamed`): ``block_io.load(i)``
            brings block ``i``'s weights onto the device before its turn and ``block_io.done(i)`` writes the
            pruned block out and frees it after the next block's inputs are computed; ``block_io.inputs_captured()``,
            when it exists, is called once the block-0 inputs are computed.

    Returns:
        One dict per decoder block: ``block``, ``seconds``.

    Raises:
        ValueError: ``compute_dtype`` refused by :func:`check_compute_dtype` (float16 on CPU).
        RuntimeError: a block calls its Linears in a different pattern from batch to batch.
    """
    layers = decoder_layers(model)
    param = next(model.parameters())
    param_device, param_dtype = param.device, param.dtype
    del param  # no reference to the embeddings: streamed pruning frees them once the block inputs exist
    check_compute_dtype(compute_dtype, param_device)
    cast = compute_dtype is not None and compute_dtype != param_dtype
    prefix = next(n for n, m in model.named_modules() if m is layers)
    hidden, call_args = capture_block_inputs(model, calib_ids, batch_size)
    if block_io is not None and hasattr(block_io, "inputs_captured"):
        block_io.inputs_captured()  # streamed: the embeddings and head are not needed from here on
    if cast:
        hidden = [h.to(compute_dtype) for h in hidden]
        call_args = _to_dtype(call_args, compute_dtype)
    last_linear: dict[tuple, str | None] = {}  # (block type, Linear names) -> Linear called last
    report = []
    it = range(len(layers))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="prune blocks", unit="block", mininterval=5)
    for i in it:
        t0 = time.perf_counter()
        if block_io is not None:
            block_io.load(i)
        block = layers[i]
        linears = {n: m for n, m in block.named_modules() if is_linear(m)}
        pruners = {n: make_pruner(f"{prefix}.{i}.{n}", m) for n, m in linears.items()}
        work = copy.deepcopy(block).to(compute_dtype) if cast else block  # runs the forwards
        work_linears = {n: m for n, m in work.named_modules() if is_linear(m)} if cast else linears
        feeder = _SharedInputs(pruners, enabled=share_inputs)
        key = (type(block), tuple(linears))
        feeder.stop_after = last_linear.get(key)
        handles = [m.register_forward_pre_hook(feeder.hook(n)) for n, m in work_linears.items()]
        try:
            for batch, (h, (args, kwargs)) in enumerate(zip(hidden, call_args[i])):
                feeder.start_batch(batch)
                try:
                    work(h, *args, **kwargs)
                except _StopForward:
                    pass
                if batch == 0 and key not in last_linear:
                    last_linear[key] = feeder.stop_after = feeder.last_linear()
        finally:
            feeder.start_batch(None)
            for hd in handles:
                hd.remove()
        feeder.finish()
        for n, p in pruners.items():
            try:
                p.prune()
            except ValueError as e:  # say which Linear; the weights of earlier blocks are already pruned
                raise ValueError(f"{prefix}.{i}.{n}: {e}") from e
        del pruners
        if i + 1 < len(layers):  # the inputs of the next block: the pruned block's outputs
            if cast:
                for n, m in work_linears.items():
                    m.weight.copy_(linears[n].weight)
            for j, (h, (args, kwargs)) in enumerate(zip(hidden, call_args[i])):
                hidden[j] = _block_output(work(h, *args, **kwargs))  # frees the old input as it goes
        del work, work_linears
        if block_io is not None:
            block_io.done(i)
        secs = time.perf_counter() - t0
        report.append({"block": i, "seconds": secs})
        if log:
            log(f"block {i}: pruned {len(linears)} linears in {secs:.2f}s")
    return report
