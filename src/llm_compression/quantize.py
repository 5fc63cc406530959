"""Weight quantization through bitsandbytes, saved and reloaded as a quantized checkpoint.

Schemes (``quant`` names used in config and paths):

- ``nf4``: 4-bit NormalFloat, blockwise absmax scaling (Dettmers et al. 2023, "QLoRA", Sec. 3
  "4-bit NormalFloat Quantization");
- ``nf4-dq``: NF4 plus double quantization of the absmax constants (QLoRA Sec. 3 "Double
  Quantization"): 8-bit constants with a second-level fp32 constant per 256 blocks, ~4.127 bits
  per weight at block size 64;
- ``fp4``: 4-bit float, blockwise absmax.

NF4 has an exact zero code, so weights zeroed by pruning stay exactly zero after quantization.
The prunable Linear layers are quantized; embeddings and the LM head stay in full precision
(transformers' bitsandbytes integration skips the output head).
"""

from __future__ import annotations

import os
from pathlib import Path

from .io import atomic_dir, write_json_atomic
from .models import COMPRESSION_FILE, library_versions, read_compression

SCHEMES = {
    "nf4": {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False},
    "nf4-dq": {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    "fp4": {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
}


class NonUniformWidthsError(ValueError):
    """The checkpoint is structurally pruned with per-layer widths (``config.json`` lists
    ``pruned_layer_shapes``); transformers' bitsandbytes loading (``from_pretrained(quantization_config=...)``)
    builds every layer from the config and cannot load it."""


class AlreadyQuantizedError(ValueError):
    """The input checkpoint is already quantized; re-quantizing would silently keep the old scheme."""


def bnb_config(scheme: str, *, compute_dtype: str = "float32", blocksize: int | None = None):
    """A ``transformers.BitsAndBytesConfig`` for ``scheme``.

    Raises:
        ValueError: unknown scheme.
    """
    import torch
    from transformers import BitsAndBytesConfig

    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; valid: none, {', '.join(SCHEMES)}")
    kw = dict(SCHEMES[scheme])
    if blocksize is not None:
        kw["bnb_4bit_blocksize"] = blocksize
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=getattr(torch, compute_dtype), **kw)


def is_quantized_checkpoint(ckpt_dir: str | os.PathLike) -> bool:
    import json

    cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    return "quantization_config" in cfg


def quantize_checkpoint(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scheme: str = "nf4-dq",
    compute_dtype: str = "float32",
    device: str = "cpu",
) -> dict:
    """Quantize the Linear layers of a checkpoint and save it as a 4-bit checkpoint (atomically).

    Returns:
        The ``compression.json`` written with the output.

    Raises:
        AlreadyQuantizedError: ``src_dir`` is already a quantized checkpoint.
        NonUniformWidthsError: ``src_dir`` is structurally pruned with different widths per layer.
        ValueError: unknown scheme.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import needs_structured_loader

    if is_quantized_checkpoint(src_dir):
        raise AlreadyQuantizedError(
            f"checkpoint {src_dir} is already quantized; quantize its unquantized parent instead"
        )
    if needs_structured_loader(src_dir):
        raise NonUniformWidthsError(
            f"checkpoint {src_dir} is structurally pruned with widths its transformers config cannot express "
            "(config.json 'pruned_layer_shapes': layers of different widths, or a head count the config class "
            "rejects); 4-bit loading through transformers builds every layer from the config and cannot load "
            "it. To quantize, prune with a layer_range over all decoder layers and a ratio whose head count "
            "divides hidden_size (e.g. layer_range: [0, 30] for a 30-layer model), or at level 'channel'"
        )
    cfg = bnb_config(scheme, compute_dtype=compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(src_dir, quantization_config=cfg, device_map=device)
    tok = AutoTokenizer.from_pretrained(src_dir)
    parent = read_compression(src_dir)
    info = {
        "stage": "quantize",
        "parent": str(src_dir),
        "parent_compression": parent,
        "quantization": {"scheme": scheme, "compute_dtype": compute_dtype, "device": device,
                         "config": cfg.to_dict()},
        "library_versions": library_versions(),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json_atomic(Path(tmp) / COMPRESSION_FILE, info)
    return info
