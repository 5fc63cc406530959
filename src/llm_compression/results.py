"""Typed results of the stages (torch-free): what :func:`~llm_compression.prune.prune_model`,
:func:`~llm_compression.quantize.quantize_checkpoint` and the evaluations return, and what goes into a
checkpoint's ``compression.json`` (written by :func:`llm_compression.checkpoint.write_compression`).

:class:`PruneResult` and :class:`QuantizeResult` are dataclasses that also read like the dicts they
replace (``result["seconds"]``, ``"structured" in result``), so callers written against dicts keep
working. Healing returns :class:`llm_compression.heal.HealResult`. An evaluation returns an
:class:`EvaluationRecord` (``metrics``, ``protocol``, ``runtime``), the body of a metrics JSON file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict


class _Record(Mapping):
    """Read access by key to a dataclass's fields; a field whose metadata says ``optional`` is absent
    when it is None."""

    def _items(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.metadata.get("optional") and getattr(self, f.name) is None)}

    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __iter__(self):
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def to_dict(self) -> dict[str, Any]:
        return dict(self._items())


@dataclass(eq=False)
class PruneResult(_Record):
    """What :func:`llm_compression.prune.prune_model` returns.

    Attributes:
        sparsity_before, sparsity_after: fraction of exact zeros over the prunable Linear weights.
        prunable_weights, zero_weights: counts after pruning.
        per_layer_sparsity: Linear name -> fraction of zeros after pruning.
        seconds: wall time of the pruning itself (s), without loading or saving.
        blocks: per-decoder-block timings of calibrated methods (empty otherwise).
        structured: the report of :func:`llm_compression.prune.structured.prune_structured` (structured only).
        compute_dtype: dtype of the calibration forwards of SparseGPT/Wanda (``float32``, ``bfloat16``,
            ``float16``; absent for other methods).
        streamed: True when pruned one decoder block at a time (:func:`llm_compression.streaming.prune_streamed`).
    """

    sparsity_before: float
    sparsity_after: float
    prunable_weights: int
    zero_weights: int
    per_layer_sparsity: dict
    seconds: float
    blocks: list = field(default_factory=list)
    structured: dict | None = field(default=None, metadata={"optional": True})
    compute_dtype: str | None = field(default=None, metadata={"optional": True})
    streamed: bool | None = field(default=None, metadata={"optional": True})

    def provenance(self) -> dict:
        """The ``result`` section of the pruned checkpoint's ``compression.json``."""
        keys = ("sparsity_before", "sparsity_after", "prunable_weights", "zero_weights", "per_layer_sparsity",
                "seconds")
        out = {k: getattr(self, k) for k in keys}
        if self.structured is not None:
            out["structured"] = self.structured
        if self.compute_dtype is not None:
            out["compute_dtype"] = self.compute_dtype
        if self.streamed:
            out["streamed"] = True
        return out


def calibration_dtype_of(compression: dict) -> str | None:
    """The calibration compute dtype of the newest pruning stage in a ``compression.json`` chain
    (``calibration.dtype``, written by the prune job for SparseGPT/Wanda), or ``None`` when no stage
    recorded one (dense, magnitude, structured, or pruned before it was recorded)."""
    rec = compression
    while rec:
        dtype = (rec.get("calibration") or {}).get("dtype")
        if rec.get("stage") == "prune" and dtype:
            return dtype
        rec = rec.get("parent_compression") or {}
    return None


@dataclass(eq=False)
class QuantizeResult(_Record):
    """The ``quantization`` section of a quantized checkpoint's ``compression.json``.

    Attributes:
        scheme: ``nf4``, ``nf4-dq``, ``fp4`` or ``int8``.
        compute_dtype, blocksize: of 4-bit schemes (None for int8); blocksize in weights per absmax scale.
        int8_threshold: LLM.int8() outlier threshold (None for 4-bit schemes).
        device: where the quantization ran.
        layers_requantized_for_blocksize: 4-bit layers re-quantized at a non-default block size.
        config: the ``BitsAndBytesConfig`` as a dict.
        per_layer_widths: set for structurally pruned checkpoints with per-layer widths.
        streamed: set (True) when the checkpoint was quantized one decoder block at a time.
    """

    scheme: str
    compute_dtype: str | None
    blocksize: int | None
    int8_threshold: float | None
    device: str
    layers_requantized_for_blocksize: int
    config: dict
    per_layer_widths: dict | None = field(default=None, metadata={"optional": True})
    streamed: bool | None = field(default=None, metadata={"optional": True})


class EvaluationRecord(TypedDict, total=False):
    """What an ``evaluate_*`` function of :mod:`llm_compression.evaluate` returns: ``metrics`` (name ->
    number), ``protocol`` (everything that fixes the measurement), ``runtime`` (timings, device), and
    for zero-shot ``tasks`` (task -> metrics). The workflow adds model, variant, evaluation, artifact
    and wall seconds when it writes the metrics JSON."""

    metrics: dict
    protocol: dict
    runtime: dict
    tasks: dict
