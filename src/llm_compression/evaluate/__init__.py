"""Evaluation of a checkpoint: perplexity (:mod:`.perplexity`, presets in :mod:`.protocols`),
zero-shot accuracy (:mod:`.zeroshot`), generation demo (:mod:`.generate`), cost (:mod:`.cost`), peak
memory (:mod:`.memory`) and latency (:mod:`.latency`).

:func:`evaluate_perplexity`, :func:`evaluate_zeroshot`, :func:`evaluate_cost`, :func:`evaluate_memory` and
:func:`evaluate_latency` load a checkpoint, measure it, and return a metrics record: the values *and* the
protocol that produced them, so that two numbers are only compared when their protocols match.
:func:`evaluate_artifact` runs one of them by its kind, as the workflow's evaluate job does.

The names are loaded on first use (PEP 562): importing this package imports no torch, so a job that
only starts a fresh measuring process (the memory evaluation) or a test of the dispatch does not pay
for it. ``from llm_compression.evaluate import perplexity_of_model`` works as before.
"""

from __future__ import annotations

import importlib

#: public name -> submodule that defines it (the rest of the names of :mod:`.records` are found there too)
_HOMES = {
    **dict.fromkeys(("METRICS_SCHEMA", "EVALUATORS", "evaluator", "evaluate_artifact", "summary_line"), "run"),
    **dict.fromkeys(("evaluate_memory", "measure_peak_memory", "track_peak_memory"), "memory"),
}

__all__ = ["METRICS_SCHEMA", "EVALUATORS", "evaluator", "evaluate_artifact", "summary_line", "evaluate_memory",
           "measure_peak_memory", "track_peak_memory", "evaluate_perplexity", "evaluate_zeroshot", "evaluate_cost",
           "evaluate_latency", "perplexity_of_model", "needs_bos", "resolve_bos", "bos_rows", "check_bos_fed",
           "with_bos", "perplexity", "PRESETS", "ProtocolError", "check_eval_dtype", "expected_windows",
           "model_context_length", "resolve_protocol"]


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module(f"{__name__}.{_HOMES.get(name, 'records')}")
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
