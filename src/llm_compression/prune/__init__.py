"""Pruning methods and the entry point :func:`prune_model`.

Unstructured and N:M methods (``level`` is ``"unstructured"``, ``"2:4"`` or ``"4:8"``):

- ``magnitude``: |W| per layer, no calibration (:mod:`.magnitude`);
- ``wanda``: |W| * ||X||, per output row, calibrated (:mod:`.wanda`).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..modules import measure_sparsity, prunable_linears
from .calibration import sequential_prune
from .magnitude import prune_linear_magnitude
from .masks import parse_nm
from .wanda import WandaPruner

CALIBRATED = {"wanda": WandaPruner}
UNCALIBRATED = ("magnitude",)
METHODS = tuple(UNCALIBRATED) + tuple(CALIBRATED)


def needs_calibration(method: str) -> bool:
    """Whether ``method`` reads calibration activations.

    Raises:
        ValueError: unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; valid: {', '.join(METHODS)}")
    return method in CALIBRATED


@torch.no_grad()
def prune_model(
    model,
    *,
    method: str,
    level: str = "unstructured",
    ratio: float = 0.5,
    calib_ids: torch.Tensor | None = None,
    batch_size: int = 8,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    **method_options,
) -> dict:
    """Prune the decoder-block Linear layers of ``model`` in place.

    Args:
        method: one of :data:`METHODS`.
        level: ``"unstructured"`` or an N:M pattern such as ``"2:4"`` / ``"4:8"`` (then ``ratio`` is
            ignored and the pattern fixes ``N/M`` of each group).
        ratio: fraction of the remaining (non-zero) weights to prune, in [0, 1).
        calib_ids: LongTensor ``[n_samples, seqlen]``, required by calibrated methods.
        method_options: passed to the method (e.g. ``scope`` for magnitude).

    Returns:
        dict with ``sparsity_before``, ``sparsity_after`` (measured over prunable Linear weights),
        ``seconds`` and ``blocks`` (per-block timings for calibrated methods).

    Raises:
        ValueError: unknown method/level, ratio outside [0, 1), missing calibration data.
    """
    calibrated = needs_calibration(method)
    nm = parse_nm(level)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"sparsity ratio {ratio!r} is outside [0, 1)")
    if calibrated and calib_ids is None:
        raise ValueError(f"method {method!r} needs calibration data (calib_ids)")
    before = measure_sparsity(model)
    t0 = time.perf_counter()
    blocks = []
    if calibrated:
        cls = CALIBRATED[method]
        blocks = sequential_prune(
            model,
            calib_ids,
            lambda name, lin: cls(lin, ratio, nm=nm, **method_options),
            batch_size=batch_size,
            progress=progress,
            log=log,
        )
    else:
        for lin in prunable_linears(model).values():
            prune_linear_magnitude(lin, ratio, nm=nm, **method_options)
    seconds = time.perf_counter() - t0
    after = measure_sparsity(model)
    if log:
        log(f"{method} {level} ratio={ratio}: sparsity {before['sparsity']:.4f} -> {after['sparsity']:.4f} in {seconds:.1f}s")
    return {
        "sparsity_before": before["sparsity"],
        "sparsity_after": after["sparsity"],
        "prunable_weights": after["prunable_weights"],
        "zero_weights": after["zero_weights"],
        "per_layer_sparsity": after["per_layer"],
        "seconds": seconds,
        "blocks": blocks,
    }
