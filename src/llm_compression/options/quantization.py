"""Quantization schemes as data: names, options and their checks (torch-free).

The science is :mod:`llm_compression.quantize` (bitsandbytes); the workflow plans with these
definitions, so building its DAG imports neither torch nor bitsandbytes.
"""

from __future__ import annotations

from .dtypes import COMPUTE_DTYPES  # noqa: F401  (4-bit compute dtypes: the same names)

from ..variants import NO_QUANT

#: the grid's GGUF quantization names -> llama.cpp file type (``LlamaFileType`` name): f32/f16 exports
#: written by :func:`llm_compression.gguf_export.export_gguf`, Q8_0/Q4_K_M made from them by llama.cpp's own
#: quantizer (:func:`llm_compression.gguf_export.quantize_gguf`)
GGUF_SCHEMES = {"gguf-f32": "ALL_F32", "gguf-f16": "MOSTLY_F16", "gguf-q8_0": "MOSTLY_Q8_0",
                "gguf-q4_k_m": "MOSTLY_Q4_K_M"}

SCHEMES = {
    "nf4": {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False},
    "nf4-dq": {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    "fp4": {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
    "int8": {},
}
FOUR_BIT = ("nf4", "nf4-dq", "fp4")
#: every quantization name of the grid besides ``none``: bitsandbytes schemes (PyTorch checkpoints) and GGUF files
#: for llama.cpp (:data:`GGUF_SCHEMES`)
ALL_SCHEMES = (*SCHEMES, *GGUF_SCHEMES)
#: block sizes bitsandbytes 0.50.2's 4-bit quantizer accepts (32 checked on CPU, not available on ROCm)
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_BLOCKSIZE = 64


def check_options(scheme: str, *, compute_dtype: str = "float32", blocksize: int = DEFAULT_BLOCKSIZE,
                  int8_threshold: float = 6.0) -> None:
    """Validate quantization options before any heavy work.

    Raises:
        ValueError: unknown scheme, compute dtype, block size, or a negative int8 threshold.
    """
    if scheme in GGUF_SCHEMES:
        return
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; valid: {NO_QUANT}, {', '.join(ALL_SCHEMES)}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype {compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    if int(blocksize) not in BLOCKSIZES:
        raise ValueError(f"blocksize {blocksize!r} is not one of {', '.join(map(str, BLOCKSIZES))}")
    if not float(int8_threshold) >= 0:
        raise ValueError(f"int8_threshold {int8_threshold!r} must be >= 0 (0 disables the fp16 outlier path)")


def scheme_options(scheme: str, quantize_cfg: dict) -> dict:
    """The config knobs that change the output of ``scheme`` (so the workflow reruns exactly those):
    ``compute_dtype`` and ``blocksize`` for 4-bit schemes, ``int8_threshold`` for int8, none for GGUF schemes
    (llama.cpp's file type is the scheme itself).

    Raises:
        ValueError: unknown scheme.
    """
    if scheme in GGUF_SCHEMES:
        return {}
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}; valid: {NO_QUANT}, {', '.join(ALL_SCHEMES)}")
    keys = ("int8_threshold",) if scheme == "int8" else ("compute_dtype", "blocksize")
    return {k: quantize_cfg[k] for k in keys if k in quantize_cfg}
