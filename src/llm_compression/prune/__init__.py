"""Pruning methods and the entry point :func:`prune_model`.

Unstructured and N:M methods (``level`` is ``"unstructured"``, ``"2:4"`` or ``"4:8"``):

- ``magnitude``: |W| per layer, per row or global, no calibration (:mod:`.magnitude`);
- ``wanda``: |W| * ||X||, per output row, calibrated (:mod:`.wanda`);
- ``sparsegpt``: OBS saliency with weight reconstruction, calibrated (:mod:`.sparsegpt`).

All of them keep already-zero weights pruned and count them, so a repeat at ratio r on an r-sparse
model ends near ``1 - (1 - r)^2``.

Structured methods (``level`` is ``"block"``, ``"channel"`` or ``"layer"``), LLM-Pruner style (:mod:`.structured`):

- ``llmpruner-<importance>`` with importance ``element1``, ``element2``, ``vector`` (gradients from
  calibration data), ``activation`` (block/channel), ``block-influence``, ``angular`` (layer; forward
  passes over calibration data), ``l1``, ``l2`` or ``random`` (no calibration). These remove whole heads and
  channels (or whole decoder layers), so the tensors shrink; sparsity (exact zeros) stays ~0.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..modules import measure_sparsity, prunable_linears
from .calibration import sequential_prune
from .magnitude import SCOPES, prune_global_magnitude, prune_linear_magnitude
from .masks import parse_nm
from .sparsegpt import SparseGPTPruner, check_sparsegpt_options
from .structured import METHODS as STRUCTURED_METHODS
from .structured import LEVELS as STRUCTURED_LEVELS
from .structured import importance_of_method, is_structured_method, prune_structured
from .structured import needs_calibration as structured_needs_calibration
from .wanda import WandaPruner

CALIBRATED = {"wanda": WandaPruner, "sparsegpt": SparseGPTPruner}
#: method -> options it accepts (anything else is an error)
METHOD_OPTIONS = {"magnitude": ("scope",), "wanda": (), "sparsegpt": ("blocksize", "percdamp", "hessian_dtype")}
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
        return structured_needs_calibration(importance_of_method(method))
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
    share_inputs: bool = True,
    **method_options,
) -> dict:
    """Prune the decoder-block Linear layers of ``model`` in place.

    Args:
        method: one of :data:`METHODS`.
        level: ``"unstructured"`` or an N:M pattern such as ``"2:4"`` / ``"4:8"`` (then ``ratio`` is
            ignored and the pattern fixes ``N/M`` of each group).
        ratio: fraction of the remaining (non-zero) weights to prune, in [0, 1).
        calib_ids: LongTensor ``[n_samples, seqlen]``, required by calibrated methods.
        batch_size: calibration windows per block forward.
        share_inputs: Linears reading the same input share its statistics (see
            :func:`~.calibration.sequential_prune`); same result, less work.
        method_options: passed to the method: ``scope`` (magnitude: ``layer``/``row``/``global``),
            ``blocksize``, ``percdamp``, ``hessian_dtype`` (sparsegpt); see :data:`METHOD_OPTIONS`.

    Returns:
        dict with ``sparsity_before``, ``sparsity_after`` (measured over prunable Linear weights),
        ``seconds`` and ``blocks`` (per-block timings for calibrated methods).

    Raises:
        ValueError: unknown method/level/option, ratio outside [0, 1), missing calibration data,
            ``scope="global"`` with an N:M level, or an N:M ``m`` that does not divide some layer's
            ``in_features`` (all checked before any weight changes).
    """
    calibrated = needs_calibration(method)
    if is_structured_method(method):
        return _prune_structured(model, method=method, level=level, ratio=ratio, calib_ids=calib_ids,
                                 batch_size=batch_size, log=log, **method_options)
    nm = parse_nm(level)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"sparsity ratio {ratio!r} is outside [0, 1)")
    bad = sorted(set(method_options) - set(METHOD_OPTIONS[method]))
    if bad:
        raise ValueError(f"method {method!r} does not take option(s) {bad}; valid: {list(METHOD_OPTIONS[method])}")
    scope = method_options.get("scope", "layer")
    if method == "magnitude":
        if scope not in SCOPES:
            raise ValueError(f"magnitude scope {scope!r} is not one of {list(SCOPES)}")
        if scope == "global" and nm is not None:
            raise ValueError(f"magnitude scope 'global' is for unstructured pruning, not level {level!r}")
    if method == "sparsegpt":
        check_sparsegpt_options(method_options.get("blocksize", 128), method_options.get("percdamp", 0.01), nm)
    if calibrated and calib_ids is None:
        raise ValueError(f"method {method!r} needs calibration data (calib_ids)")
    if nm is not None:
        bad_layers = [f"{n} (in_features={m.in_features})" for n, m in prunable_linears(model).items()
                      if m.in_features % nm[1]]
        if bad_layers:
            raise ValueError(f"level {level!r} needs in_features divisible by {nm[1]}; not: {', '.join(bad_layers[:5])}")
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
            share_inputs=share_inputs,
            progress=progress,
            log=log,
        )
    elif scope == "global":
        prune_global_magnitude(prunable_linears(model).values(), ratio)
    else:
        for lin in prunable_linears(model).values():
            prune_linear_magnitude(lin, ratio, nm=nm, **method_options)
    seconds = time.perf_counter() - t0
    after = measure_sparsity(model)
    if log:
        log(f"{method} {level} ratio={ratio}: sparsity {before['sparsity']:.4f} -> {after['sparsity']:.4f} in {seconds:.1f}s")
    return _result(before, after, seconds, blocks)


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
    return _result(before, after, res["seconds"], [], structured=res)


def _result(before: dict, after: dict, seconds: float, blocks: list, **extra) -> dict:
    """The report of :func:`prune_model` from two :func:`measure_sparsity` readings."""
    return {
        "sparsity_before": before["sparsity"],
        "sparsity_after": after["sparsity"],
        "prunable_weights": after["prunable_weights"],
        "zero_weights": after["zero_weights"],
        "per_layer_sparsity": after["per_layer"],
        "seconds": seconds,
        "blocks": blocks,
        **extra,
    }
