"""Pruning methods and the entry point :func:`prune_model`.

Unstructured and N:M methods (``level`` is ``"unstructured"``, ``"2:4"`` or ``"4:8"``):

- ``magnitude``: |W| per layer, per row or global, no calibration (:mod:`.magnitude`);
- ``wanda``: |W| * ||X||, per output row, calibrated (:mod:`.wanda`);
- ``sparsegpt``: OBS saliency with weight reconstruction, calibrated (:mod:`.sparsegpt`).

Each method is registered in :mod:`llm_compression.options.pruning` with one typed options object
(fields, defaults, units, checks); :func:`prune_model` looks the method up there and runs its
``run_*`` function below.

All of them keep already-zero weights pruned and count them, so a repeat at ratio r on an r-sparse
model ends near ``1 - (1 - r)^2``.

Structured methods (``level`` is ``"block"``, ``"channel"`` or ``"layer"``), LLM-Pruner style (:mod:`.structured`):

- ``llmpruner-<importance>`` with importance ``element1``, ``element2``, ``vector`` (gradients from
  calibration data), ``activation`` (block/channel), ``contribution`` (block), ``block-influence``, ``angular`` (layer; forward
  passes over calibration data), ``l1``, ``l2`` or ``random`` (no calibration). These remove whole heads and
  channels (or whole decoder layers), so the tensors shrink; sparsity (exact zeros) stays ~0.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..modules import decoder_layers, measure_sparsity, prunable_linears
from ..results import PruneResult
from ..options.pruning import DEFAULT_IMPORTANCE, METHODS as REGISTRY
from ..options.pruning import STRUCTURED_LEVELS, PruningMethod, canonical_importance, path_methods, split_path_method
from ..options.pruning import needs_calibration  # noqa: F401  (re-exported: one definition, torch-free)
from ..options.pruning import layerwise_calibrated
from ..options.dtypes import COMPUTE_DTYPES  # noqa: F401  (re-exported)
from ..options.dtypes import dtype_name
from .calibration import check_compute_dtype, sequential_prune
from .magnitude import prune_global_magnitude, prune_linear_magnitude
from .masks import parse_nm
from .sparsegpt import SparseGPTPruner
from .structured import prune_structured
from .wanda import WandaPruner

#: path names of the built-in methods (the registry may hold more, see :func:`~llm_compression.options.pruning.register`)
METHODS = path_methods()
#: method -> options it accepts (anything else is an error); derived from the options dataclasses
METHOD_OPTIONS = {name: m.options.names() for name, m in REGISTRY.items() if not m.structured}
#: the layer-wise calibrated pruners (:func:`~llm_compression.options.pruning.layerwise_calibrated` names them)
CALIBRATED = {"wanda": WandaPruner, "sparsegpt": SparseGPTPruner}
UNCALIBRATED = tuple(name for name, m in REGISTRY.items() if not m.structured and not m.needs_calibration())


def compute_dtype_of(name: str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype of a calibration compute dtype name or ``torch.dtype`` (``None`` stays ``None``: the
    model's own).

    Raises:
        ValueError: ``name`` is not one of :data:`COMPUTE_DTYPES` (as a name or a ``torch.dtype``).
    """
    if name is None:
        return None
    name = dtype_name(name)
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"calibration compute dtype {name!r} is not one of {', '.join(COMPUTE_DTYPES)}")
    return getattr(torch, name)


def resolve_method(method: str, importance: str | None = None) -> tuple[PruningMethod, str | None]:
    """The registered method and importance of ``method``: a path name (``wanda``, ``llmpruner-l1``) or
    a config name (``llm-pruner`` with ``importance``, default ``element1``).

    Raises:
        ValueError: unknown method, or an importance given to a method that has none.
    """
    if method in REGISTRY and REGISTRY[method].structured:
        return REGISTRY[method], canonical_importance(importance or DEFAULT_IMPORTANCE)
    spec, imp = split_path_method(method)
    if importance is not None:
        if not spec.structured:
            raise ValueError(f"method {method!r} takes no importance (got {importance!r})")
        if canonical_importance(importance) != imp:
            raise ValueError(f"method {method!r} names importance {imp!r}, but importance={importance!r} was given")
    return spec, imp


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
    importance: str | None = None,
    compute_dtype: str | torch.dtype | None = None,
    **method_options,
) -> PruneResult:
    """Prune the decoder-block Linear layers of ``model`` in place.

    Args:
        method: a registered method's path name (:data:`METHODS`: ``magnitude``, ``wanda``, ``sparsegpt``,
            ``llmpruner-<importance>``) or config name (``llm-pruner`` with ``importance``).
        level: ``"unstructured"`` or an N:M pattern such as ``"2:4"`` / ``"4:8"`` (then ``ratio`` is
            ignored and the pattern fixes ``N/M`` of each group); ``block``/``channel``/``layer`` for
            structured methods.
        ratio: fraction of the remaining (non-zero) weights to prune, in [0, 1).
        calib_ids: LongTensor ``[n_samples, seqlen]``, required by calibrated methods.
        batch_size: calibration windows per block forward.
        share_inputs: Linears reading the same input share its statistics (see
            :func:`~.calibration.sequential_prune`); same result, less work.
        importance: structured criterion when ``method`` is the config name ``llm-pruner``.
        compute_dtype: dtype of the calibration forwards of ``sparsegpt``/``wanda`` (:data:`COMPUTE_DTYPES`;
            ``None``: the model's own): ``"bfloat16"`` runs each block's forwards on a bfloat16 copy of
            the block while the model's own (e.g. float32) weights are pruned; Hessians and input norms
            are accumulated in float32/float64 either way (see :func:`~.calibration.sequential_prune`).
            Other methods refuse any value but ``None``.
        method_options: the fields of the method's options dataclass
            (:mod:`llm_compression.options.pruning`): ``scope`` (magnitude: ``layer``/``row``/``global``),
            ``blocksize``, ``percdamp``, ``hessian_dtype`` (sparsegpt), ``zeros`` (sparsegpt, wanda: ``keep``
            or ``rank``, see :data:`~llm_compression.options.pruning.ZERO_RULES`), ``aggregation``,
            ``attention``, ``layer_range``, ``snap``, ``width_multiple``, ``gradient_checkpointing``, ``seed``
            (llm-pruner).

    Returns:
        :class:`~llm_compression.results.PruneResult` (readable as a dict) with ``sparsity_before``,
        ``sparsity_after`` (exact zeros over prunable Linear weights),
        ``prunable_weights``, ``zero_weights`` (after), ``per_layer_sparsity`` (Linear name -> sparsity),
        ``seconds`` (wall time of the pruning itself), ``blocks`` (per-block timings of calibrated
        methods, else empty), ``compute_dtype`` (SparseGPT/Wanda: the dtype of the calibration
        forwards) and, for structured methods, ``structured`` (the report of
        :func:`.structured.prune_structured`).

    Raises:
        ValueError: unknown method/level/option, ratio outside [0, 1), missing calibration data,
            ``scope="global"`` with an N:M level, an N:M ``m`` that does not divide some layer's
            ``in_features``, an unknown ``compute_dtype`` or ``float16`` on a CPU (all checked before any
            weight changes); non-finite (NaN/inf)
            calibration activations reaching a Linear (SparseGPT, Wanda; the message names it).
    """
    spec, importance, nm, options, dtype = check_prune_request(
        model, method=method, level=level, ratio=ratio, calib_ids=calib_ids, importance=importance,
        compute_dtype=compute_dtype, **method_options)
    run = spec.load_runner()
    before = measure_sparsity(model)
    t0 = time.perf_counter()
    kw = {"compute_dtype": dtype} if dtype is not None else {}
    out = run(model, level=level, nm=nm, ratio=ratio, importance=importance, calib_ids=calib_ids,
              batch_size=batch_size, options=options, share_inputs=share_inputs, progress=progress, log=log, **kw)
    seconds = out.pop("seconds", None)
    seconds = time.perf_counter() - t0 if seconds is None else seconds
    after = measure_sparsity(model)
    if log and not spec.structured:
        log(f"{method} {level} ratio={ratio}: sparsity {before['sparsity']:.4f} -> {after['sparsity']:.4f} in {seconds:.1f}s")
    return _result(before, after, seconds, out.pop("blocks", []), **out)


def check_prune_request(model, *, method: str, level: str = "unstructured", ratio: float = 0.5,
                        calib_ids: torch.Tensor | None = None, importance: str | None = None,
                        compute_dtype: str | torch.dtype | None = None, **method_options):
    """Every check :func:`prune_model` makes before a weight changes (the model's weights may be on the
    ``meta`` device: only shapes are read).

    Returns:
        ``(spec, importance, nm, options, dtype)``: the registered method, its structured criterion, the
        N:M pattern (or None), the options object and the calibration compute dtype (or None).

    Raises:
        ValueError: see :func:`prune_model`.
    """
    spec, importance = resolve_method(method, importance)
    if spec.structured:
        if level not in STRUCTURED_LEVELS:
            raise ValueError(f"structured method {method!r} needs level one of {', '.join(STRUCTURED_LEVELS)}, "
                             f"got {level!r}")
        nm = None
    else:
        nm = parse_nm(level)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"sparsity ratio {ratio!r} is outside [0, 1)")
    options = spec.options.from_mapping(method_options, level=level)
    if not spec.structured:
        if spec.needs_calibration(importance) and calib_ids is None:
            raise ValueError(f"method {method!r} needs calibration data (calib_ids)")
        if nm is not None:
            bad_layers = [f"{n} (in_features={m.in_features})" for n, m in prunable_linears(model).items()
                          if m.in_features % nm[1]]
            if bad_layers:
                raise ValueError(f"level {level!r} needs in_features divisible by {nm[1]}; not: "
                                 f"{', '.join(bad_layers[:5])}")
    dtype = compute_dtype_of(compute_dtype)
    if dtype is not None:
        if method not in layerwise_calibrated():
            raise ValueError(f"compute_dtype={compute_dtype!r}: only {', '.join(layerwise_calibrated())} take a calibration "
                             f"compute dtype, not {method!r}")
        check_compute_dtype(dtype, next(model.parameters()).device)
    return spec, importance, nm, options, dtype


def run_magnitude(model, *, ratio, nm, options, block_io=None, **_) -> dict:
    """Magnitude pruning (:mod:`.magnitude`) of every prunable Linear, per layer/row or globally.
    ``block_io`` (streamed pruning): decoder blocks are loaded and written out one at a time."""
    if block_io is not None:
        if options.scope == "global":
            raise ValueError("magnitude scope 'global' ranks every weight of the model at once: it cannot be "
                             "streamed block by block; use scope layer or row, or prune in memory")
        for i, block in enumerate(decoder_layers(model)):
            block_io.load(i)
            for lin in prunable_linears(block).values():
                prune_linear_magnitude(lin, ratio, nm=nm, **options.as_kwargs())
            block_io.done(i)
        return {}
    if options.scope == "global":
        prune_global_magnitude(prunable_linears(model).values(), ratio)
    else:
        for lin in prunable_linears(model).values():
            prune_linear_magnitude(lin, ratio, nm=nm, **options.as_kwargs())
    return {}


def _run_calibrated(cls, model, *, ratio, nm, options, calib_ids, batch_size, share_inputs, progress, log,
                    compute_dtype=None, block_io=None, **_) -> dict:
    """Layer-by-layer calibrated pruning (:func:`~.calibration.sequential_prune`) with pruner ``cls``."""
    kwargs = options.as_kwargs()
    blocks = sequential_prune(
        model,
        calib_ids,
        lambda name, lin: cls(lin, ratio, nm=nm, **kwargs),
        batch_size=batch_size,
        share_inputs=share_inputs,
        progress=progress,
        log=log,
        compute_dtype=compute_dtype,
        block_io=block_io,
    )
    dtype = compute_dtype if compute_dtype is not None else next(model.parameters()).dtype
    return {"blocks": blocks, "compute_dtype": dtype_name(dtype)}


def run_wanda(model, **kw) -> dict:
    """Wanda (Sun et al. 2024, Eq. 1), see :mod:`.wanda`."""
    return _run_calibrated(WandaPruner, model, **kw)


def run_sparsegpt(model, **kw) -> dict:
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1), see :mod:`.sparsegpt`."""
    return _run_calibrated(SparseGPTPruner, model, **kw)


def run_structured(model, *, level, ratio, importance, calib_ids, batch_size, options, log, block_io=None,
                   **_) -> dict:
    """Structured pruning, LLM-Pruner style (see :func:`.structured.prune_structured`; ``block_io``: streamed)."""
    with torch.enable_grad():
        res = prune_structured(model, level=level, ratio=ratio, importance=importance, calib_ids=calib_ids,
                               batch_size=batch_size, log=log, block_io=block_io, **options.as_kwargs())
    return {"seconds": res["seconds"], "structured": res}


def _result(before: dict, after: dict, seconds: float, blocks: list, **extra) -> PruneResult:
    """The report of :func:`prune_model` from two :func:`measure_sparsity` readings."""
    return PruneResult(
        sparsity_before=before["sparsity"],
        sparsity_after=after["sparsity"],
        prunable_weights=after["prunable_weights"],
        zero_weights=after["zero_weights"],
        per_layer_sparsity=after["per_layer"],
        seconds=seconds,
        blocks=blocks,
        **extra,
    )
