"""Cost measurements taken on an artifact itself: parameters, non-zero parameters, bytes on disk.

Dense parameters, non-zero parameters and bytes on disk are different numbers and all are
reported: unstructured zeros shrink neither the tensors nor the file, and 4-bit packing shrinks the
file without removing parameters. A packed 4-bit tensor counts as its logical number of weights
(``quant_state.shape``), not the number of bytes-as-uint8 elements it is stored in.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..modules import dense_weight, measure_sparsity


def logical_numel(param: torch.Tensor) -> int:
    """Number of weights a parameter represents (unpacks bitsandbytes 4-bit storage)."""
    qs = getattr(param, "quant_state", None)
    if qs is not None and getattr(qs, "shape", None) is not None:
        return int(torch.Size(qs.shape).numel())
    return param.numel()


@torch.no_grad()
def count_parameters(model: nn.Module) -> dict:
    """Logical and non-zero parameter counts (tied weights counted once).

    Returns:
        dict with ``parameters`` (logical count), ``nonzero_parameters`` and ``parameters_by_kind``
        (``linear`` = prunable decoder Linear weights, ``embedding``, ``norm``, ``other``).
    """
    seen: set[int] = set()
    total = nonzero = 0
    by_kind = {"linear": 0, "embedding": 0, "norm": 0, "other": 0}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = logical_numel(p)
            if isinstance(module, nn.Linear) and p_name == "weight":
                nz = int((dense_weight(module) != 0).sum())
                kind = "linear" if ".layers." in f".{mod_name}." else "other"
            else:
                nz = int((p != 0).sum())
                cls = type(module).__name__.lower()
                kind = "embedding" if isinstance(module, nn.Embedding) else "norm" if "norm" in cls else "other"
            total += n
            nonzero += nz
            by_kind[kind] += n
    return {"parameters": total, "nonzero_parameters": nonzero, "parameters_by_kind": by_kind}


def disk_bytes(ckpt_dir: str | os.PathLike, pattern: str = "*.safetensors") -> int:
    """Bytes of the weight files of a checkpoint directory."""
    return sum(f.stat().st_size for f in Path(ckpt_dir).glob(pattern))


def cost_metrics(model: nn.Module, ckpt_dir: str | os.PathLike) -> dict:
    """Parameter counts, sparsity over prunable Linear weights and weight bytes on disk."""
    params = count_parameters(model)
    sp = measure_sparsity(model)
    return {
        **params,
        "sparsity": sp["sparsity"],
        "prunable_weights": sp["prunable_weights"],
        "zero_weights": sp["zero_weights"],
        "disk_bytes": disk_bytes(ckpt_dir),
    }
