"""Models larger than memory: a checkpoint whose weights stay in its safetensors files, with one decoder block
at a time brought onto the execution device.

:class:`StreamedCheckpoint` builds the model's skeleton without memory (``accelerate.init_empty_weights``:
every parameter on the ``meta`` device, per-layer widths of structured pruning applied), loads what is not a
decoder block (embeddings, final norm, output head) and, on request, one block's tensors (safetensors
``safe_open``, one tensor at a time, placed with ``accelerate.utils.set_module_tensor_to_device``), and frees
them again. Its memory is the non-block weights plus one block, not the model.

:func:`streamed_forward` runs every batch through block 0, then every batch through block 1, and so on, as the
SparseGPT reference evaluates perplexity (``llama_eval`` in IST-DASLab/sparsegpt): the block inputs of all
batches are captured once at the first block (with the attention mask and rotary position embeddings the
model hands its blocks), replayed block by block, and turned into logits batch by batch at the end. The
block calls are the model's own, with the same arguments, so the logits equal the in-memory model's bit for
bit on the same device and dtype (tested).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import torch

from .options.pruning import LAYER_SHAPES_KEY, streamable  # noqa: F401 (streamable: public here too)


def trim_heap() -> None:
    """Hand the memory freed by a dropped block back to the operating system: collect garbage, then glibc's
    ``malloc_trim(0)`` (a no-op elsewhere). Without it glibc keeps freed tensor memory below its raised mmap
    threshold in the heap, and a streamed job's resident set grew by about one block's worth every few blocks
    (measured: NF4-DQ streaming of a 1.5 B model, 26 blocks, 771 MB -> 2,103 MB; with it flat at 631 MB)."""
    import gc

    gc.collect()
    global _LIBC
    if _LIBC is None:
        import ctypes

        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


class StreamingError(ValueError):
    """A checkpoint this module cannot stream (the message says why and what works instead)."""


class StreamedCheckpoint:
    """A checkpoint folder held on disk; decoder blocks are brought onto ``device`` one at a time.

    Args:
        ckpt_dir: a checkpoint folder of this project or a Hugging Face one (``config.json`` and
            ``*.safetensors``; per-layer widths through ``config.json``'s ``pruned_layer_shapes``).
        device: where blocks run (``cpu``, ``cuda``, ``cuda:N``).
        dtype: the weights' dtype on the device (a torch dtype name); None keeps the stored dtype.
        load_outer: load the weights outside the decoder blocks now; False leaves them on ``meta`` until
            :meth:`load_outer` brings the part a phase needs (the input embeddings before the blocks, the final
            norm and head after them), so they are never all resident at once.

    Raises:
        FileNotFoundError: no ``config.json`` or no ``*.safetensors`` in ``ckpt_dir``.
        StreamingError: a bitsandbytes-quantized checkpoint (its 4-bit tensors are not plain weights), or a
            model without ``model.layers`` / ``model.norm`` / ``lm_head`` (the layout streamed here).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None,
                 load_outer: bool = True):
        from accelerate import init_empty_weights
        from safetensors import safe_open
        from transformers import AutoConfig, AutoModelForCausalLM

        from .checkpoint import resize_layers
        from .modules import decoder_layers
        from .prune.structured.apply import sync_metadata

        self.dir = Path(ckpt_dir)
        if not (self.dir / "config.json").exists():
            raise FileNotFoundError(f"{self.dir} is not a checkpoint directory (no config.json)")
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.dir} has no *.safetensors weights")
        config = AutoConfig.from_pretrained(self.dir)
        if getattr(config, "quantization_config", None) is not None:
            raise StreamingError(f"{self.dir} is a bitsandbytes-quantized checkpoint: its 4-bit tensors are not "
                                 "streamed; stream its full-precision parent instead")
        if getattr(config, "final_logit_softcapping", None):
            raise StreamingError(f"{self.dir}: final_logit_softcapping is not applied by the streamed head; "
                                 "evaluate it in memory")
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype) if dtype else None
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, **({"dtype": self.dtype} if self.dtype else {}))
            shapes = getattr(config, LAYER_SHAPES_KEY, None)
            if shapes:
                resize_layers(model, shapes)
        for name, p in model.named_parameters():  # resize_layers' new Linears are real: back to meta
            if p.device.type != "meta":
                _set(model, name, "meta")
        sync_metadata(model)
        inner = getattr(model, "model", None)
        if inner is None or not hasattr(inner, "norm") or model.get_output_embeddings() is None:
            raise StreamingError(f"{type(model).__name__}: streamed evaluation needs model.layers, model.norm and "
                                 "lm_head")
        self.model = model.eval()
        self.layers = decoder_layers(model)
        self.prefix = next(n for n, m in model.named_modules() if m is self.layers)
        self._where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    self._where[key] = f
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        if self.tied:
            model.tie_weights()
        # everything that is not a decoder block: embeddings, final norm, head (tied: the embedding's name only)
        outer = [n for n, _ in model.named_parameters() if not n.startswith(self.prefix + ".")]
        missing = [n for n in outer if n not in self._where]
        if missing:
            raise StreamingError(f"{self.dir}: tensors missing from the checkpoint: {missing[:5]}")
        output_side = {id(p) for m in (inner.norm, model.get_output_embeddings()) for p in m.parameters()}
        input_ids = {id(p) for p in model.get_input_embeddings().parameters()}
        self.output_names = [n for n, p in model.named_parameters() if id(p) in output_side and id(p) not in input_ids]
        self.input_names = [n for n in outer if n not in self.output_names]
        for name, buf in model.named_buffers():  # rotary inv_freq etc.: built on CPU by the config
            if buf.device != self.device:
                _set(model, name, self.device, buf)
        if load_outer:
            self.load_outer()

    @property
    def config(self):
        """The model's config (as the in-memory model's ``.config``)."""
        return self.model.config

    def _load(self, names: Iterable[str]) -> None:
        for n in names:
            t = self.read(n)
            _set(self.model, n, self.device, t.to(self.dtype) if self.dtype and t.is_floating_point() else t)

    def read(self, name: str) -> torch.Tensor:
        """One stored tensor as saved (CPU, stored dtype), read from its file without placing it in the model
        (also for copying weights a job leaves unchanged)."""
        from safetensors import safe_open

        # get_tensor maps the file, and the mapping (with every page read through it) stays resident while the
        # file is open or any tensor of it lives: open it per tensor and keep a copy, so at most one tensor's
        # pages are mapped at a time and none outlive their tensor
        with safe_open(str(self._where[name]), framework="pt", device="cpu") as fh:
            return fh.get_tensor(name).clone()

    def block_names(self, i: int) -> list[str]:
        """Parameter names of decoder block ``i`` (``model.layers.<i>.*``)."""
        head = f"{self.prefix}.{i}."
        return [n for n, _ in self.model.named_parameters() if n.startswith(head)]

    def load_block(self, i: int) -> torch.nn.Module:
        """Bring block ``i``'s weights onto the device; returns the block.

        Raises:
            StreamingError: a tensor of the block is not in the checkpoint.
        """
        names = self.block_names(i)
        missing = [n for n in names if n not in self._where]
        if missing:
            raise StreamingError(f"{self.dir}: block {i} tensors missing from the checkpoint: {missing[:5]}")
        self._load(names)
        return self.layers[i]

    def free_block(self, i: int) -> None:
        """Drop block ``i``'s weights (back to ``meta``: no memory)."""
        for n in self.block_names(i):
            _set(self.model, n, "meta")
        trim_heap()

    def _outer(self, part: str) -> list[str]:
        if part not in ("all", "input", "output"):
            raise ValueError(f"part {part!r}: one of 'all', 'input', 'output'")
        return {"input": self.input_names, "output": self.output_names}.get(part, self.input_names + self.output_names)

    def load_outer(self, part: str = "all") -> None:
        """Bring the weights outside the decoder blocks onto the device: ``input`` (the embeddings the blocks'
        inputs come from), ``output`` (final norm and head; a head tied to the embeddings brings them too) or
        ``all``. Weights already resident are not read again.

        Raises:
            ValueError: another ``part``.
        """
        names = self._outer(part)
        if part == "output" and self.tied:
            names = names + self.input_names
        self._load([n for n in names if self.model.get_parameter(n).device.type == "meta"])
        if self.tied:  # the head shares the embedding's (new) parameter
            self.model.tie_weights()

    def free_outer(self, part: str = "all") -> None:
        """Drop the weights outside the decoder blocks (back to ``meta``): ``input``, ``output`` or ``all`` as in
        :meth:`load_outer`, for work that needs only the blocks once the block inputs exist (pruning,
        quantization) or only the head after them (evaluation). A tied head keeps the embeddings resident while
        the output part is.

        Raises:
            ValueError: another ``part``.
        """
        names = self._outer(part)
        if part == "input" and self.tied and self.model.get_output_embeddings().weight.device.type != "meta":
            names = []
        for n in names:
            _set(self.model, n, "meta")
        if self.tied and part != "output":
            self.model.tie_weights()
        trim_heap()

    def resident_bytes(self) -> int:
        """Bytes of the weights on the device now."""
        seen, total = set(), 0
        for p in self.model.parameters():
            if p.device.type != "meta" and id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
        return total


def _set(model, name: str, device, value: torch.Tensor | None = None) -> None:
    from accelerate.utils import set_module_tensor_to_device

    set_module_tensor_to_device(model, name, device, value=value)


@torch.no_grad()
def streamed_forward(sc: StreamedCheckpoint, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Logits of each batch of token ids (``[b, seq]`` each; batches may differ in length), in order, computed
    block by block: all batches through block 0, then block 1, ... (one block's weights on the device at a
    time), then the final norm and output head batch by batch.

    Yields:
        ``[b, seq, vocab]`` logits per batch, as the model's forward (``use_cache=False``) gives them.
    """
    from .prune.calibration import _block_output, capture_block_inputs

    sc.load_outer("input")
    hidden, call_args = [], [[] for _ in sc.layers]
    for x in batches:  # block-0 inputs and each block's call arguments (mask, position embeddings)
        h, args = capture_block_inputs(sc.model, x.to(sc.device), batch_size=x.shape[0])
        hidden += h
        for i, a in enumerate(args):
            call_args[i] += a
    sc.free_outer("input")  # the embeddings are done with (unless the head is tied to them)
    for i in range(len(sc.layers)):
        block = sc.load_block(i)
        try:
            for j, (args, kwargs) in enumerate(call_args[i]):
                hidden[j] = _block_output(block(hidden[j], *args, **kwargs))
        finally:
            sc.free_block(i)
        call_args[i] = None  # this block's arguments are no longer needed
    sc.load_outer("output")
    norm, head = sc.model.model.norm, sc.model.get_output_embeddings()
    for j in range(len(hidden)):
        yield head(norm(hidden[j]))
        hidden[j] = None


class _BlockWriter:
    """The ``block_io`` of streamed pruning: loads block ``i`` before its turn and, once pruned, measures it,
    writes its tensors to ``out_dir/model-layer-<i>.safetensors`` and frees it."""

    def __init__(self, sc: StreamedCheckpoint, out_dir: Path):
        self.sc, self.out = sc, out_dir
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0
        self.before: dict[str, tuple[int, int]] = {}
        self.after: dict[str, tuple[int, int]] = {}
        self.outer_cut: dict[str, tuple[int, torch.Tensor]] = {}

    def _zeros(self, i: int) -> dict[str, tuple[int, int]]:
        from .modules import zero_counts

        return zero_counts(self.sc.layers[i], prefix=f"{self.sc.prefix}.{i}.")

    def inputs_captured(self) -> None:
        self.sc.free_outer()  # written already; the blocks' work needs only the blocks

    def load(self, i: int) -> None:
        self.sc.load_block(i)
        self.before.update(self._zeros(i))

    def done(self, i: int) -> None:
        self.after.update(self._zeros(i))
        self.write({n: self.sc.model.get_parameter(n) for n in self.sc.block_names(i)},
                   f"model-layer-{i:05d}.safetensors")
        self.sc.free_block(i)

    def read(self, i: int) -> torch.nn.Module:
        """Block ``i`` on the device for scoring only (depth criteria): nothing is written."""
        return self.sc.load_block(i)

    def release(self, i: int) -> None:
        self.sc.free_block(i)

    def renumber(self, kept: list[int]) -> None:
        """Depth pruning: write the blocks ``kept`` (original indices, ascending) as blocks 0, 1, ... of the
        output, one at a time; every block is counted for the sparsity before, the kept ones (under their new
        names) for after."""
        from .modules import zero_counts

        for i in range(len(self.sc.layers)):
            block = self.sc.load_block(i)
            self.before.update(self._zeros(i))
            if i in kept:
                j = kept.index(i)
                old, new = f"{self.sc.prefix}.{i}.", f"{self.sc.prefix}.{j}."
                self.after.update(zero_counts(block, prefix=new))
                self.write({new + n[len(old):]: self.sc.model.get_parameter(n) for n in self.sc.block_names(i)},
                           f"model-layer-{j:05d}.safetensors")
            self.sc.free_block(i)

    def read_tensor(self, name: str) -> torch.Tensor:
        """A weight outside the blocks, as stored (for scoring; the model's copy is not touched)."""
        return self.sc.read(name)

    def load_norm(self) -> None:
        """The final norm onto the device (not the head)."""
        norm = next(n for n, m in self.sc.model.named_modules() if m is self.sc.model.model.norm)
        self.sc._load([n for n in self.sc.output_names if n.startswith(norm + ".")])

    def free_outer(self) -> None:
        self.sc.free_outer()

    def write_outer(self) -> None:
        """Copy the weights outside the decoder blocks one tensor per shard (``model-outer-<k>.safetensors``):
        one of them in memory at a time, unchanged or, for those in :attr:`outer_cut` (``name -> (dim, kept
        indices)``: the hidden channels of the channel level), cut to the kept indices."""
        for k, n in enumerate(self.sc.input_names + self.sc.output_names):
            t = self.sc.read(n)
            if n in self.outer_cut:
                dim, keep = self.outer_cut[n]
                t = t.index_select(dim, keep).contiguous()
            self.write({n: t}, f"model-outer-{k:05d}.safetensors")

    def write(self, tensors: dict, name: str) -> None:
        from safetensors.torch import save_file

        state = {n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}
        save_file(state, str(self.out / name), metadata={"format": "pt"})
        for n, t in state.items():
            self.weight_map[n] = name
            self.total_bytes += t.numel() * t.element_size()

    def finish(self) -> None:
        """Write the weights outside the blocks (:meth:`write_outer`) and the index."""
        import json

        self.write_outer()

        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def prune_streamed(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, *, method: str,
                   level: str = "unstructured", ratio: float = 0.5, calib_ids: torch.Tensor | None = None,
                   batch_size: int = 8, device: str = "cpu", progress: bool = False, log=None,
                   share_inputs: bool = True, compute_dtype: str | None = None, **method_options):
    """Prune the checkpoint at ``ckpt_dir`` block by block with one decoder block on ``device`` at a time, and
    write the pruned checkpoint to ``out_dir`` (sharded safetensors with an index, one shard per block, the
    source's config and tokenizer files): the layer-wise methods (SparseGPT, Wanda, magnitude per layer or
    row) whose reference implementations already walk the model block by block (``llama_sequential`` in
    IST-DASLab/sparsegpt and locuslab/wanda), and structured pruning whose criteria need no whole-model gradient
    (:func:`~llm_compression.options.pruning.streamable`: block, channel and layer levels; the config then carries
    the new widths). Masks and weights equal :func:`llm_compression.prune.prune_model`'s
    on the in-memory model bit for bit (tested); memory is one block and the calibration activations
    (``samples x seqlen x hidden``, twice), with the input embeddings only until the block-0 inputs exist (the
    weights outside the blocks are copied to the output one tensor at a time).

    Args:
        ckpt_dir: the source checkpoint.
        out_dir: an empty (or new) output folder; ``compression.json`` is the caller's to write.
        device: where each block runs.
        method: a layer-wise method (``sparsegpt``, ``wanda``, ``magnitude``) or a streamable structured one
            (``llm-pruner`` with ``importance``, or ``llmpruner-<importance>``); ``level``, ``ratio``,
            ``calib_ids`` (``[samples, seqlen]`` token ids), ``batch_size``, ``share_inputs``, ``compute_dtype``,
            ``progress``, ``log`` and ``method_options`` as :func:`llm_compression.prune.prune_model` takes them.

    Returns:
        :class:`~llm_compression.results.PruneResult` as :func:`~llm_compression.prune.prune_model` returns it,
        with ``streamed: True``.

    Raises:
        StreamingError: a structured criterion or level that is not streamable (gradients, activations, the
            channel and layer levels; see :func:`~llm_compression.options.pruning.streamable`), or a
            bitsandbytes-quantized source.
        ValueError: the checks of :func:`~llm_compression.prune.prune_model`; magnitude with scope global.
    """
    import shutil
    import time

    from .prune import _result, check_prune_request

    sc = StreamedCheckpoint(ckpt_dir, device=device, load_outer=False)
    spec, importance, nm, options, dtype = check_prune_request(
        sc.model, method=method, level=level, ratio=ratio, calib_ids=calib_ids, compute_dtype=compute_dtype,
        **method_options)
    if spec.structured and not streamable({"method": method, "level": level, **method_options}):
        from .options.pruning import (STREAMED_CHANNEL_IMPORTANCES, STREAMED_DEPTH_IMPORTANCES,
                                      STREAMED_STRUCTURED_IMPORTANCES)

        raise StreamingError(
            f"{method} at level {level!r}: this structured criterion reads gradients of the whole model; the "
            f"block level with {', '.join(STREAMED_STRUCTURED_IMPORTANCES)}, the channel level with "
            f"{', '.join(STREAMED_CHANNEL_IMPORTANCES)} and the layer level with "
            f"{', '.join(STREAMED_DEPTH_IMPORTANCES)} stream. Prune this one in memory")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in sc.dir.iterdir():  # config, generation config, tokenizer: unchanged by unstructured pruning
        if f.is_file() and not f.name.endswith(".safetensors") and f.name not in (
                "model.safetensors.index.json", "compression.json", ".snakemake_timestamp"):
            shutil.copy2(f, out / f.name)
    io = _BlockWriter(sc, out)  # the weights outside the blocks are written last (finish), one at a time
    if calib_ids is not None:  # the block-0 inputs come from the embeddings; norm and head are not needed
        sc.load_outer("input")
    run = spec.load_runner()
    t0 = time.perf_counter()
    kw = {"compute_dtype": dtype} if dtype is not None else {}
    res = run(sc.model, level=level, nm=nm, ratio=ratio, importance=importance, calib_ids=calib_ids,
              batch_size=batch_size, options=options, share_inputs=share_inputs, progress=progress, log=log,
              block_io=io, **kw)
    seconds = res.pop("seconds", None) or (time.perf_counter() - t0)
    io.finish()
    if spec.structured:  # new widths: the config as the in-memory model saves it
        sc.model.config.save_pretrained(out)

    from .modules import sparsity_reading

    before, after = sparsity_reading(io.before), sparsity_reading(io.after)
    if log:
        log(f"{method} {level} ratio={ratio} (streamed): sparsity {before['sparsity']:.4f} -> "
            f"{after['sparsity']:.4f} in {seconds:.1f}s")
    return _result(before, after, seconds, res.pop("blocks", []), streamed=True, **res)
