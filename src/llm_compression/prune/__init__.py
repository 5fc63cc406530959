"""Pruning methods and the entry point :func:`prune_model`.

Unstructured and N:M methods (``level`` is ``"unstructured"``, ``"2:4"`` or ``"4:8"``):

- ``magnitude``: |W| per layer, no calibration (:mod:`.magnitude`);
- ``wanda``: |W| * ||X||, per output row, calibrated (:mod:`.wanda`).

Structured methods (``level`` is ``"block"`` or ``"channel"``), LLM-Pruner style (:mod:`.structured`):

- ``llmpruner-<importance>`` with importance ``element1``, ``element2``, ``vector`` (gradients from
  calibration data), ``l1``, ``l2`` or ``random`` (no calibration). These remove whole heads and
  channels, so the tensors shrink; sparsity (exact zeros) stays ~0.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..modules import measure_sparsity, prunable_linears
from .calibration import sequential_prune
from .magnitude import prune_linear_magnitude
from .masks import parse_nm
from .structured import METHODS as STRUCTURED_METHODS
from .structured import LEVELS as STRUCTURED_LEVELS
from .structured import importance_of_method, is_structured_method, needs_gradients, prune_structured
from .wanda import WandaPruner

CALIBRATED = {"wanda": WandaPruner}
UNCALIBRATED = ("magnitude",)
METHODS = tuple(UNCALIBRATED) + tuple(CALIBRATED) + STRUCTURED_METHODS


def needs_calibration(method: str) -> bool:
    """Whether ``method`` reads calibration activations.

    Raises:
        ValueError: unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; valid: {', '.join(METHODS)}")
    if is_structured_method(method):
        return needs_gradients(importance_of_method(method))
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
    if is_structured_method(method):
        return _prune_structured(model, method=method, level=level, ratio=ratio, calib_ids=calib_ids,
                                 batch_size=batch_size, log=log, **method_options)
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


def _prune_structured(model, *, method, level, ratio, calib_ids, batch_size, log, **options) -> dict:
    """Structured branch of :func:`prune_model` (see :func:`.structured.prune_structured`)."""
    if level not in STRUCTURED_LEVELS:
        raise ValueError(f"structured method {method!r} needs level one of {', '.join(STRUCTURED_LEVELS)}, "
                         f"got {level!r}")
    with torch.enable_grad():
        before = measure_sparsity(model)
        res = prune_structured(model, level=level, ratio=ratio, importance=importance_of_method(method),
                               calib_ids=calib_ids, batch_size=batch_size, log=log, **options)
    after = measure_sparsity(model)
    return {
        "sparsity_before": before["sparsity"],
        "sparsity_after": after["sparsity"],
        "prunable_weights": after["prunable_weights"],
        "zero_weights": after["zero_weights"],
        "per_layer_sparsity": after["per_layer"],
        "seconds": res["seconds"],
        "blocks": [],
        "structured": res,
    }
