"""Measure one evaluation (perplexity under a preset, zero-shot accuracy, cost, memory or latency) on one
artifact; write its metrics JSON."""
import time

from llm_compression.evaluate import METRICS_SCHEMA, evaluate_artifact, summary_line
from llm_compression.io import write_json_atomic
from llm_compression.models import pick_device
from llm_compression.plan_checks import check_evaluation_job
from llm_compression.runtime import finish_job, job_gpu_spread, setup_job

sm = snakemake  # noqa: F821
ev = dict(sm.params.evaluation)
kind = ev.pop("kind")
fresh = kind == "memory"  # measured in a fresh child process: this one never imports torch
log = setup_job(sm.log[0], None if fresh else sm.threads)
check_evaluation_job(dict(sm.params.evaluation), sm.input[0])  # before loading the model
t0 = time.perf_counter()
device = sm.params.device if fresh else pick_device(sm.params.device)
streamed = getattr(sm.resources, "streaming", "never") == "always"
rec = evaluate_artifact(sm.input[0], kind, device=device, job_threads=sm.threads, progress=True, streamed=streamed,
                        **job_gpu_spread(sm.resources, sm.config), **ev)
log.info(summary_line(kind, rec))
write_json_atomic(sm.output[0], {
    "schema": METRICS_SCHEMA,
    "model": sm.params.model,
    "variant": dict(sm.params.variant),
    "evaluation": sm.wildcards.evaluation,
    "artifact": sm.input[0],
    **rec,
    "wall_seconds": time.perf_counter() - t0,
})
if kind != "memory" and not sm.wildcards.quant.startswith("gguf"):  # those measure in another process
    from llm_compression.memory_plan import estimate_job, record_job_memory

    quant = None if sm.wildcards.quant == "none" else sm.wildcards.quant
    streamed_here = streamed and kind == "perplexity" and quant is None  # what evaluate_artifact streams
    estimate = estimate_job("evaluate", sm.input[0], dict(sm.params.evaluation), streamed=streamed_here,
                            device=str(device), quantization=quant)
    record_job_memory(sm.log[0], estimate, device, log.info)
finish_job()  # every output is written: exit without tearing down torch and transformers (~1 s)
