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

from .options.pruning import LAYER_SHAPES_KEY


class StreamingError(ValueError):
    """A checkpoint this module cannot stream (the message says why and what works instead)."""


class StreamedCheckpoint:
    """A checkpoint folder held on disk; decoder blocks are brought onto ``device`` one at a time.

    Args:
        ckpt_dir: a checkpoint folder of this project or a Hugging Face one (``config.json`` and
            ``*.safetensors``; per-layer widths through ``config.json``'s ``pruned_layer_shapes``).
        device: where blocks run (``cpu``, ``cuda``, ``cuda:N``).
        dtype: the weights' dtype on the device (a torch dtype name); None keeps the stored dtype.

    Raises:
        FileNotFoundError: no ``config.json`` or no ``*.safetensors`` in ``ckpt_dir``.
        StreamingError: a bitsandbytes-quantized checkpoint (its 4-bit tensors are not plain weights), or a
            model without ``model.layers`` / ``model.norm`` / ``lm_head`` (the layout streamed here).
    """

    def __init__(self, ckpt_dir: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None):
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
        # everything that is not a decoder block: embeddings, final norm, head (tied or not)
        outer = [n for n, _ in model.named_parameters() if not n.startswith(self.prefix + ".")]
        self._load([n for n in outer if n in self._where])
        tied = bool(getattr(config, "tie_word_embeddings", False))
        if tied:
            model.tie_weights()
        left = [n for n, p in model.named_parameters() if p.device.type == "meta" and not n.startswith(self.prefix + ".")]
        if left:
            raise StreamingError(f"{self.dir}: tensors missing from the checkpoint: {left[:5]}")
        for name, buf in model.named_buffers():  # rotary inv_freq etc.: built on CPU by the config
            if buf.device != self.device:
                _set(model, name, self.device, buf)

    @property
    def config(self):
        """The model's config (as the in-memory model's ``.config``)."""
        return self.model.config

    def _load(self, names: Iterable[str]) -> None:
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for n in names:
            by_file.setdefault(self._where[n], []).append(n)
        for f, ns in by_file.items():
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for n in ns:
                    t = fh.get_tensor(n)
                    _set(self.model, n, self.device, t.to(self.dtype) if self.dtype and t.is_floating_point() else t)

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

    hidden, call_args = [], [[] for _ in sc.layers]
    for x in batches:  # block-0 inputs and each block's call arguments (mask, position embeddings)
        h, args = capture_block_inputs(sc.model, x.to(sc.device), batch_size=x.shape[0])
        hidden += h
        for i, a in enumerate(args):
            call_args[i] += a
    for i in range(len(sc.layers)):
        block = sc.load_block(i)
        try:
            for j, (args, kwargs) in enumerate(call_args[i]):
                hidden[j] = _block_output(block(hidden[j], *args, **kwargs))
        finally:
            sc.free_block(i)
        call_args[i] = None  # this block's arguments are no longer needed
    norm, head = sc.model.model.norm, sc.model.get_output_embeddings()
    for j in range(len(hidden)):
        yield head(norm(hidden[j]))
        hidden[j] = None
