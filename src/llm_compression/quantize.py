"""Weight quantization through bitsandbytes, saved and reloaded as a quantized checkpoint.

Schemes (``quant`` names used in config and paths):

- ``none``: no quantization (the variant's artifact is its unquantized parent; no stage runs);
- ``nf4``: 4-bit NormalFloat, blockwise absmax scaling (Dettmers et al. 2023, "QLoRA", Sec. 3
  "4-bit NormalFloat Quantization");
- ``nf4-dq``: NF4 plus double quantization of the absmax constants (QLoRA Sec. 3 "Double
  Quantization"): 8-bit constants with a second-level fp32 constant per 256 blocks, so
  ``4 + 8/64 + 32/(64*256) = 4.127`` bits per weight at block size 64;
- ``fp4``: 4-bit float, blockwise absmax;
- ``int8``: LLM.int8() (Dettmers et al. 2022, "LLM.int8()", Sec. 3): row-wise absmax int8 weights;
  at run time input columns with an outlier above ``int8_threshold`` are multiplied in 16-bit.

NF4, FP4 and int8 all have an exact zero code, so weights zeroed by pruning stay exactly zero.
The Linear layers are quantized; embeddings and the LM head stay in full precision
(transformers' bitsandbytes integration skips the output head).

Block size: transformers 5.23's ``BitsAndBytesConfig`` has no ``bnb_4bit_blocksize`` (it drops
unknown keys with an info log, so passing it would silently keep 64). A block size other than
bitsandbytes' default 64 is therefore applied here by re-quantizing each 4-bit weight from the
parent's full-precision tensor with ``bitsandbytes.nn.Params4bit(blocksize=...)``; the block size is
stored in every layer's serialized quant state, so the checkpoint reloads with it through plain
``from_pretrained``.

CPU kernels: on CPUs with AVX512-BF16, bitsandbytes 0.50.2 runs 4-bit layers through a kernel that
needs ``out_features % 32 == 0`` and ``in_features % blocksize == 0``; other shapes (tiny test
models, odd structurally pruned widths, a block size that does not divide a width) are routed to
its generic CPU path when loaded with :func:`llm_compression.models.load_checkpoint`.

int8 runs on CPU with bitsandbytes 0.50.2 (checked: quantize, save, reload with identical logits;
bitsandbytes casts the activations to float16 for the int8 matmul, and warns about it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .io import atomic_dir
from .checkpoint import (  # noqa: F401  (4-bit layer building is loading code; it lives in checkpoint)
    COMPRESSION_FILE,
    library_versions,
    load_4bit_state,
    load_pruned,
    needs_structured_loader,
    read_compression,
    provenance,
    replace_linears_4bit,
    write_compression,
)
from .options.quantization import (  # noqa: F401  (one definition each, torch-free)
    BLOCKSIZES,
    COMPUTE_DTYPES,
    DEFAULT_BLOCKSIZE,
    FOUR_BIT,
    SCHEMES,
    check_options,
    scheme_options,
)
from .results import QuantizeResult
from .variants import NO_QUANT


class NonUniformWidthsError(ValueError):
    """The checkpoint is structurally pruned with per-layer widths; transformers' bitsandbytes loading
    (``from_pretrained(quantization_config=...)``) builds every layer at one width and cannot load it."""


class AlreadyQuantizedError(ValueError):
    """The input checkpoint is already quantized; re-quantizing would silently keep the old scheme."""


def bnb_config(scheme: str, *, compute_dtype: str = "float32", int8_threshold: float = 6.0):
    """A ``transformers.BitsAndBytesConfig`` for ``scheme`` (block size is applied separately, see module doc).

    Raises:
        ValueError: unknown scheme or compute dtype.
    """
    import torch
    from transformers import BitsAndBytesConfig

    check_options(scheme, compute_dtype=compute_dtype, int8_threshold=int8_threshold)
    if scheme == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(int8_threshold))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
                              **SCHEMES[scheme])


def is_quantized_checkpoint(ckpt_dir: str | os.PathLike) -> bool:
    """True when the checkpoint's ``config.json`` carries a ``quantization_config``."""
    cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    return "quantization_config" in cfg


def _full_precision_state(src_dir: Path) -> dict:
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(src_dir.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def _requantize_blocksize(model, src_dir: Path, blocksize: int, device: str) -> int:
    """Re-quantize every ``Linear4bit`` weight of ``model`` from the parent's full-precision tensor at
    ``blocksize``. Returns the number of layers re-quantized.

    Raises:
        KeyError: a quantized layer has no weight tensor in the parent checkpoint.
    """
    import bitsandbytes as bnb

    sd = _full_precision_state(src_dir)
    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            key = f"{name}.weight"
            if key not in sd:
                raise KeyError(f"{key} not found in the parent checkpoint {src_dir}")
            old = mod.weight
            mod.weight = bnb.nn.Params4bit(
                sd[key].float(), requires_grad=False, blocksize=blocksize,
                compress_statistics=old.compress_statistics, quant_type=old.quant_type,
                quant_storage=old.quant_storage, module=mod,
            ).to(device)
            n += 1
    return n


def quantize_checkpoint(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheme: str = "nf4-dq",
    compute_dtype: str = "float32",
    blocksize: int = DEFAULT_BLOCKSIZE,
    int8_threshold: float = 6.0,
    device: str = "cpu",
) -> dict:
    """Quantize the Linear layers of a checkpoint and save it as a bitsandbytes checkpoint (atomically).

    Args:
        scheme: one of ``nf4``, ``nf4-dq``, ``fp4``, ``int8`` (see module doc).
        compute_dtype: dtype of the 4-bit matmul (weights are dequantized to it); ignored by int8.
        blocksize: 4-bit absmax block size (weights per fp32/8-bit scale); ignored by int8.
        int8_threshold: LLM.int8() outlier threshold; ignored by 4-bit schemes.
        device: ``cpu`` or ``cuda``.

    Returns:
        The ``compression.json`` written with the output.

    Raises:
        AlreadyQuantizedError: ``src_dir`` is already a quantized checkpoint.
        NonUniformWidthsError: ``src_dir`` has per-layer widths and ``scheme`` is ``int8`` (the 4-bit
            schemes are built for such checkpoints directly with bitsandbytes, see the section below).
        ValueError: an invalid option (see :func:`check_options`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir = Path(src_dir)
    check_options(scheme, compute_dtype=compute_dtype, blocksize=blocksize, int8_threshold=int8_threshold)
    _refuse_quantized(src_dir, scheme)
    per_layer = needs_structured_loader(src_dir)
    if per_layer and scheme not in FOUR_BIT:
        raise NonUniformWidthsError(
            f"checkpoint {src_dir} is structurally pruned with per-layer widths (config.json "
            f"'pruned_layer_shapes'); {scheme!r} cannot be built for it (transformers' 8-bit loading makes every "
            f"layer from the config). Valid for such checkpoints: {', '.join(FOUR_BIT)}"
        )
    cfg = bnb_config(scheme, compute_dtype=compute_dtype, int8_threshold=int8_threshold)
    requantized = 0
    if per_layer:
        with atomic_dir(out_dir) as tmp:
            n4 = _quantize_per_layer_widths(src_dir, Path(tmp), scheme, compute_dtype=compute_dtype,
                                            blocksize=int(blocksize), device=device, qcfg=cfg)
            info = _quantize_info(src_dir, scheme, compute_dtype, blocksize, int8_threshold, device, 0, cfg,
                                  per_layer_widths={"layers_4bit": n4, "writer": "llm_compression.quantize"})
            info = write_compression(tmp, info)
        return info
    model = AutoModelForCausalLM.from_pretrained(src_dir, quantization_config=cfg, device_map=device)
    if scheme in FOUR_BIT and int(blocksize) != DEFAULT_BLOCKSIZE:
        requantized = _requantize_blocksize(model, src_dir, int(blocksize), device)
    tok = AutoTokenizer.from_pretrained(src_dir)
    info = _quantize_info(src_dir, scheme, compute_dtype, blocksize, int8_threshold, device, requantized, cfg)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        info = write_compression(tmp, info)
    return info


def _refuse_quantized(src_dir: Path, scheme: str) -> None:
    if is_quantized_checkpoint(src_dir):
        old = json.loads((src_dir / "config.json").read_text())["quantization_config"]
        raise AlreadyQuantizedError(
            f"checkpoint {src_dir} is already quantized ({old.get('quant_method')}, "
            f"{old.get('bnb_4bit_quant_type') if old.get('load_in_4bit') else 'int8' if old.get('load_in_8bit') else '?'}); "
            f"refusing to quantize it again with {scheme!r}: quantize its unquantized parent instead"
        )


def quantize_streamed(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheme: str = "nf4-dq",
    compute_dtype: str = "float32",
    blocksize: int = DEFAULT_BLOCKSIZE,
    device: str = "cpu",
) -> dict:
    """Quantize a checkpoint to a 4-bit scheme one decoder block at a time and save it (atomically) as sharded
    safetensors: the weights stay in the source's files (:class:`~llm_compression.streaming.StreamedCheckpoint`),
    each block is read, its Linears quantized with bitsandbytes (``Params4bit``, as transformers quantizes
    them while loading), written as its own shard and dropped; the embeddings, final norm and head stay in full
    precision as transformers keeps them (copied last, one tensor at a time). Memory: one block, its working copy and
    its 4-bit copy.

    The output has the same tensors as :func:`quantize_checkpoint`'s, bit for bit (tested on fp32 checkpoints),
    the same ``quantization_config`` and loads with plain ``from_pretrained`` (or
    :func:`~llm_compression.checkpoint.load_checkpoint` for per-layer widths).

    Args:
        scheme: a 4-bit scheme (``nf4``, ``nf4-dq``, ``fp4``); compute_dtype, blocksize as
            :func:`quantize_checkpoint`; device: where each block is quantized.

    Returns:
        The ``compression.json`` written with the output (``quantization.streamed: true``).

    Raises:
        StreamingError: ``int8`` (LLM.int8() is built by transformers' loader; quantize it in memory).
        AlreadyQuantizedError: ``src_dir`` is already quantized.
        ValueError: an invalid option (see :func:`check_options`).
    """
    import copy
    import shutil

    from .streaming import StreamedCheckpoint, StreamingError, _BlockWriter, trim_heap

    src_dir = Path(src_dir)
    if scheme not in FOUR_BIT:
        raise StreamingError(f"scheme {scheme!r} cannot be quantized streamed; streamed: {', '.join(FOUR_BIT)} "
                             "(int8 is built by transformers' loader in memory)")
    check_options(scheme, compute_dtype=compute_dtype, blocksize=blocksize)
    _refuse_quantized(src_dir, scheme)
    qcfg = bnb_config(scheme, compute_dtype=compute_dtype)
    spec = SCHEMES[scheme]
    sc = StreamedCheckpoint(src_dir, device="cpu", load_outer=False)
    model = sc.model
    n4 = 0
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        shards = _BlockWriter(sc, tmp)  # one shard per block; the full-precision outer weights and the index last
        for i in range(len(sc.layers)):
            block = copy.deepcopy(sc.load_block(i))
            sc.free_block(i)
            n4 += len(replace_linears_4bit(block, quant_type=spec["bnb_4bit_quant_type"],
                                           double_quant=spec["bnb_4bit_use_double_quant"], compute_dtype=compute_dtype,
                                           blocksize=int(blocksize), device=device))
            shards.write({f"{sc.prefix}.{i}.{k}": v for k, v in block.state_dict().items()},
                         f"model-layer-{i:05d}.safetensors")
            del block
            trim_heap()  # the block's working and 4-bit copies back to the system
        shards.finish()
        config = copy.deepcopy(model.config)
        config.quantization_config = qcfg
        config.save_pretrained(tmp)
        for f in src_dir.iterdir():  # tokenizer and generation config, as the source has them
            if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "generation_config", "chat_template"))
                                or f.suffix in (".model", ".jinja")):
                shutil.copy2(f, tmp / f.name)
        info = _quantize_info(src_dir, scheme, compute_dtype, blocksize, 6.0, device, 0, qcfg, streamed=True,
                              per_layer_widths={"layers_4bit": n4, "writer": "llm_compression.quantize (streamed)"}
                              if needs_structured_loader(src_dir) else None)
        info = write_compression(tmp, info)
    return info


def _quantize_info(src_dir, scheme, compute_dtype, blocksize, int8_threshold, device, requantized, cfg,
                   per_layer_widths=None, streamed=None) -> dict:
    result = QuantizeResult(
        scheme=scheme,
        compute_dtype=compute_dtype if scheme in FOUR_BIT else None,
        blocksize=int(blocksize) if scheme in FOUR_BIT else None,
        int8_threshold=float(int8_threshold) if scheme == "int8" else None,
        device=device,
        layers_requantized_for_blocksize=requantized,
        config=cfg.to_dict(),
        per_layer_widths=per_layer_widths,
        streamed=streamed,
    )
    return provenance("quantize", str(src_dir), quantization=result.to_dict())


# --- structurally pruned checkpoints with per-layer widths ------------------------------------------
#
# transformers' bitsandbytes path builds every layer from the config, so it cannot load (hence cannot
# quantize) a checkpoint whose decoder layers have different widths. For those, the 4-bit layers are
# made here with bitsandbytes directly: every Linear except the output head becomes a ``Linear4bit``
# quantized from its full-precision weight (the same layers transformers would convert), the state
# dict -- packed 4-bit weights plus each layer's serialized quant state, the same keys transformers
# writes -- goes to ``model.safetensors``, and ``config.json`` keeps ``pruned_layer_shapes`` next to
# the ``quantization_config``. :func:`llm_compression.checkpoint.load_pruned` rebuilds the
# per-layer widths and the 4-bit layers from them (with :func:`~llm_compression.checkpoint.replace_linears_4bit`) (``load_checkpoint`` routes there by itself).


def _quantize_per_layer_widths(src_dir: Path, tmp: Path, scheme: str, *, compute_dtype: str, blocksize: int,
                               device: str, qcfg) -> int:
    """Quantize a per-layer-width checkpoint into ``tmp`` (see the section comment). Returns the
    number of 4-bit layers."""
    from safetensors.torch import save_file

    model, tok = load_pruned(src_dir, device="cpu")
    names = replace_linears_4bit(model, quant_type=SCHEMES[scheme]["bnb_4bit_quant_type"],
                                 double_quant=SCHEMES[scheme]["bnb_4bit_use_double_quant"],
                                 compute_dtype=compute_dtype, blocksize=blocksize, device=device)
    state = model.state_dict()
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        state.pop("lm_head.weight", None)  # tied: re-tied on load
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})
    model.config.quantization_config = qcfg
    model.config.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(tmp)
    if tok is not None:
        tok.save_pretrained(tmp)
    return len(names)
