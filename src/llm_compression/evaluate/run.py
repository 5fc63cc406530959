"""One evaluation of one artifact by its kind, as the workflow's evaluate job runs it. Torch-free: the
evaluation's own module is imported when it runs (:data:`EVALUATORS`).
"""

from __future__ import annotations

import importlib

from ..checkpoint import read_compression
from ..gguf_export import is_gguf_artifact
from ..results import calibration_dtype_of

#: schema tag of every metrics JSON
METRICS_SCHEMA = "llm-compression/metrics/v1"


#: evaluation kind (``params.evaluation.kind`` of the workflow) -> ``"module:function"`` of its
#: ``evaluate_*`` function, imported when an evaluation of that kind runs (the memory evaluation's own
#: process then never imports torch: it measures in a fresh child process)
EVALUATORS = {"perplexity": "records:evaluate_perplexity", "zeroshot": "records:evaluate_zeroshot",
              "cost": "records:evaluate_cost", "memory": "memory:evaluate_memory",
              "latency": "records:evaluate_latency"}


#: the evaluators of a GGUF artifact (a ``gguf-*`` quantization), run in llama.cpp (:mod:`.llamacpp`); zero-shot
#: is not among them (lm-eval drives PyTorch models here)
GGUF_EVALUATORS = {"perplexity": "llamacpp:evaluate_perplexity_gguf", "cost": "llamacpp:evaluate_cost_gguf",
                   "memory": "memory:evaluate_memory", "latency": "llamacpp:evaluate_latency_gguf"}


def evaluator(kind: str, gguf: bool = False):
    """The ``evaluate_*`` function of an evaluation kind.

    Raises:
        ValueError: ``kind`` unknown (the message lists the valid kinds).
    """
    table = GGUF_EVALUATORS if gguf else EVALUATORS
    if kind not in table:
        raise ValueError(f"evaluation kind {kind!r} is not one of {', '.join(table)}"
                         + (" (on a GGUF artifact, measured in llama.cpp)" if gguf else ""))
    module, _, name = table[kind].partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def evaluate_artifact(ckpt_dir, kind: str, *, device: str = "cpu", job_threads: int | None = None,
                      progress: bool = False, streamed: bool = False, gpus: int = 1, device_mb: int | None = None,
                      **options) -> dict:
    """One evaluation of one artifact, as a metrics record (``metrics``, ``protocol``, ``runtime``, ...).

    Dispatches to the ``evaluate_*`` function of ``kind`` (:data:`EVALUATORS`) with ``options``, then adds
    to the protocol what the artifact's own provenance says about how it was made and that changes the
    numbers: ``calibration_dtype``, the dtype the calibration forwards of its newest pruning ran in
    (``compression.json``, :func:`llm_compression.results.calibration_dtype_of`), when one was recorded.

    Args:
        ckpt_dir: checkpoint folder (pruned, healed or quantized).
        kind: one of :data:`EVALUATORS`; for a GGUF artifact (:func:`~llm_compression.gguf_export.is_gguf_artifact`)
            one of :data:`GGUF_EVALUATORS`, measured in llama.cpp with ``job_threads`` threads.
        device: ``cpu`` / ``cuda``.
        job_threads: the cores the job holds (Snakemake's ``threads``): the memory evaluation's child
            process and the GGUF evaluations other than latency run with them. Latency is timed with its own
            ``threads`` option (the workflow's ``evaluation.latency.threads``; the job's count when absent),
            while the job may hold more cores than it times with, so that nothing else runs beside the timed
            forwards (the record's ``runtime.job_cores``).
        progress: a progress bar for perplexity.
        gpus: perplexity and zero-shot of a model spread over this many GPUs (the plan's count for a model that
            does not fit one).
        device_mb: memory per GPU for that spreading (``resources.memory.device_mb``; None: each GPU's free memory).
        streamed: evaluate a perplexity with one decoder block on the device at a time
            (:class:`~llm_compression.streaming.StreamedCheckpoint`; the same value bit for bit); ignored for
            other kinds and for bitsandbytes and GGUF artifacts, which are evaluated as loaded.

    Raises:
        ValueError: ``kind`` unknown (the message lists the valid kinds); the evaluator's own errors.
    """
    gguf = is_gguf_artifact(ckpt_dir)
    run = evaluator(kind, gguf)
    options = dict(options)
    if kind == "perplexity":
        options["progress"] = progress
        if streamed and not gguf:
            from ..quantize import is_quantized_checkpoint

            options["streamed"] = not is_quantized_checkpoint(ckpt_dir)
    if int(gpus) > 1 and kind in ("perplexity", "zeroshot") and not gguf:  # the plan spread this job's model
        options.update(gpus=int(gpus), device_mb=device_mb)
    if kind == "memory":
        options["threads"] = job_threads
    elif kind == "latency":  # timed with its own thread count; the job may claim more cores, left idle
        options["threads"] = int(options.get("threads") or job_threads or 1)
    elif gguf:  # llama.cpp runs with the job's thread count, recorded
        options["threads"] = int(job_threads or 1)
    if gguf and kind != "memory":  # llama.cpp runs on the CPU (the memory probe takes the device)
        options.pop("device", None)
        rec = run(ckpt_dir, **options)
    else:
        rec = run(ckpt_dir, device=device, **options)
    if kind == "latency" and job_threads:
        rec.setdefault("runtime", {})["job_cores"] = int(job_threads)
    if gguf and kind != "memory":
        return rec
    if "protocol" in rec and (cal_dtype := calibration_dtype_of(read_compression(ckpt_dir))):
        rec["protocol"]["calibration_dtype"] = cal_dtype
    return rec


def summary_line(kind: str, rec: dict) -> str:
    """One log line of what an evaluation measured (the job log's record of its result)."""
    if kind == "perplexity":
        p, rt = rec["protocol"], rec["runtime"]
        return (f"{p['dataset']} perplexity ({p.get('preset')}, {p['dtype']}) {rec['metrics']['perplexity']:.3f} over "
                f"{p['scored_tokens']} scored tokens, {rt.get('tokens_per_second') or 0.0:.1f} tokens/s, peak memory "
                f"{rt.get('peak_memory_bytes', 0) / 1e6:.0f} MB")
    if kind == "zeroshot":
        return f"zero-shot {({t: v['acc'] for t, v in rec['tasks'].items()})}"
    return f"{kind} {rec['metrics']}"
