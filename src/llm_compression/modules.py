"""Finding the parts of a causal LM that compression acts on, and measuring their sparsity.

*Prunable Linear weights* are the ``nn.Linear`` (or bitsandbytes ``Linear4bit``/``Linear8bitLt``)
layers inside the decoder blocks: attention q/k/v/o and MLP gate/up/down projections. The
embeddings and the LM head are not prunable (SparseGPT/Wanda convention); sparsity is always
reported over this set.
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder blocks of a Hugging Face causal LM.

    Raises:
        TypeError: the model has no ``model.layers`` list (an architecture this tool does not know).
    """
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__} has no decoder layer list at .model.layers; "
            "supported: Llama-family and Gemma-3 causal LMs from transformers"
        )
    return layers


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` and the bitsandbytes quantized Linear layers (which subclass it)."""
    return isinstance(module, nn.Linear)


def prunable_linears(model_or_block: nn.Module) -> dict[str, nn.Linear]:
    """Name -> Linear for every prunable Linear layer (inside decoder blocks), in module order.

    Given a whole model, names are relative to it (``model.layers.3.mlp.up_proj``); given one
    decoder block, relative to the block (``mlp.up_proj``).
    """
    try:
        layers = decoder_layers(model_or_block)
        prefix = _name_of(model_or_block, layers)
        return {
            f"{prefix}.{i}.{n}": m
            for i, block in enumerate(layers)
            for n, m in block.named_modules()
            if is_linear(m)
        }
    except TypeError:
        return {n: m for n, m in model_or_block.named_modules() if is_linear(m)}


def _name_of(root: nn.Module, target: nn.Module) -> str:
    for n, m in root.named_modules():
        if m is target:
            return n
    raise TypeError("decoder layers not found among the model's modules")


def _dequantize_cpu_packed_4bit(data: torch.Tensor, qs) -> torch.Tensor:
    """Dequantize a 4-bit weight that bitsandbytes (0.50) re-laid out for its AVX512-BF16 CPU kernel.

    At the first inference forward on such a CPU, ``Linear4bit`` replaces its weight by a ``[N, K/2]``
    uint8 tensor whose nibbles are interleaved in blocks of 32 output rows, and its absmax by a
    ``[K/blocksize, N]`` bf16 tensor (double quantization undone); ``quant_state.packing_format_for_cpu``
    is then True. This undoes the interleaving without touching the module (bitsandbytes' own inverse
    mutates the quant state and re-quantizes absmax). Returns ``[N, K]`` float32.
    """
    n, k_half = data.shape
    k = 2 * k_half
    block_n = 32
    packed = data.reshape(-1, 32)
    idx = torch.cat([packed & 0xF, (packed >> 4) & 0xF], dim=-1)  # [-1, 64]: 32 low then 32 high nibbles
    idx = idx.reshape(n // block_n, k_half, block_n, 2).transpose(-3, -2).reshape(n, k).long()
    absmax = qs.absmax.float().T  # [N, K/blocksize]
    return qs.code.float()[idx] * absmax.repeat_interleave(qs.blocksize, dim=1)


def bnb_cpu_fallback(model: nn.Module) -> list[str]:
    """Route 4-bit layers that bitsandbytes' AVX512-BF16 CPU kernel cannot run to its generic CPU path.

    bitsandbytes 0.50.2, on a CPU with AVX512-BF16, re-lays out every ``Linear4bit`` weight at its
    first inference forward (eval mode, no grad) in tiles of 32 output rows and per-row runs of
    ``blocksize``; a layer with ``out_features % 32 != 0`` or ``in_features % blocksize != 0`` then
    fails with an assertion or a reshape error. For those layers this turns the re-layout off
    (``support_avx512bf16_for_cpu = False``), so they run through the generic dequantize-then-matmul
    path, which gives the same kind of result and works for any shape. Called by
    :func:`llm_compression.models.load_checkpoint`.

    Returns:
        names of the layers switched to the generic path (empty when none needed it).
    """
    switched = []
    for name, mod in model.named_modules():
        if type(mod).__name__ != "Linear4bit" or not getattr(mod, "support_avx512bf16_for_cpu", False):
            continue
        qs = getattr(mod.weight, "quant_state", None)
        bs = int(getattr(qs, "blocksize", 64) or 64)
        if mod.out_features % 32 or mod.in_features % bs:
            mod.support_avx512bf16_for_cpu = False
            switched.append(name)
    return switched


def dense_weight(linear: nn.Linear) -> torch.Tensor:
    """The weight of a Linear as a float tensor ``[out, in]``, dequantizing bitsandbytes 4-bit/8-bit
    layers (including the CPU re-layout bitsandbytes applies at the first forward, see
    :func:`_dequantize_cpu_packed_4bit`). For 4-bit layers NF4/FP4 decode 0 exactly, so exact zeros
    stay countable."""
    w = linear.weight
    cls = type(w).__name__
    if cls == "Params4bit" and getattr(w, "quant_state", None) is not None:
        import bitsandbytes.functional as bnbF

        if getattr(w.quant_state, "packing_format_for_cpu", False):
            return _dequantize_cpu_packed_4bit(w.data, w.quant_state)
        return bnbF.dequantize_4bit(w.data, w.quant_state).float()
    if cls == "Int8Params" and getattr(w, "SCB", None) is not None:
        return (w.data.float() * w.SCB.float().unsqueeze(1) / 127.0)
    return w.detach().float()


@torch.no_grad()
def zero_counts(model_or_block: nn.Module, prefix: str = "") -> dict[str, tuple[int, int]]:
    """Name (``prefix`` + the name of :func:`prunable_linears`) -> ``(exact zeros, weights)`` of every prunable
    Linear; 4-bit/8-bit weights are counted dequantized (:func:`dense_weight`)."""
    out = {}
    for name, lin in prunable_linears(model_or_block).items():
        w = dense_weight(lin)
        out[prefix + name] = (int((w == 0).sum()), w.numel())
    return out


def sparsity_reading(counts: dict[str, tuple[int, int]]) -> dict:
    """The reading of :func:`measure_sparsity` from :func:`zero_counts` (of a model, or gathered block by block)."""
    total = sum(t for _, t in counts.values())
    zeros = sum(z for z, _ in counts.values())
    return {
        "sparsity": zeros / total if total else 0.0,
        "prunable_weights": total,
        "zero_weights": zeros,
        "per_layer": {n: z / t for n, (z, t) in counts.items()},
    }


def measure_sparsity(model: nn.Module) -> dict:
    """Fraction of exactly-zero weights over the prunable Linear layers.

    Returns:
        dict with ``sparsity`` (zeros / weights), ``prunable_weights``, ``zero_weights`` and
        ``per_layer`` (name -> sparsity).
    """
    return sparsity_reading(zero_counts(model))
