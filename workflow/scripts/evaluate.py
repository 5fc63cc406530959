"""Measure one evaluation (perplexity under a preset, zero-shot accuracy, cost, memory or latency) on one
artifact; write its metrics JSON."""
import time

from llm_compression.evaluate import (METRICS_SCHEMA, evaluate_cost, evaluate_latency, evaluate_memory,
                                     evaluate_perplexity, evaluate_zeroshot)
from llm_compression.checkpoint import read_compression
from llm_compression.io import write_json_atomic
from llm_compression.models import pick_device
from llm_compression.plan_checks import check_evaluation_job
from llm_compression.results import calibration_dtype_of
from llm_compression.runtime import setup_job

sm = snakemake  # noqa: F821
log = setup_job(sm.log[0], sm.threads)
check_evaluation_job(dict(sm.params.evaluation), sm.input[0])  # before loading the model
device = pick_device(sm.params.device)
ev = dict(sm.params.evaluation)
kind = ev.pop("kind")
t0 = time.perf_counter()
if kind == "perplexity":
    rec = evaluate_perplexity(sm.input[0], device=device, progress=True, **ev)
    log.info("%s perplexity (%s, %s) %.3f over %d scored tokens, %.1f tokens/s, peak memory %.0f MB",
             ev["dataset"], ev["preset"], rec["protocol"]["dtype"], rec["metrics"]["perplexity"],
             rec["protocol"]["scored_tokens"], rec["runtime"]["tokens_per_second"] or 0.0,
             rec["runtime"]["peak_memory_bytes"] / 1e6)
elif kind == "zeroshot":
    rec = evaluate_zeroshot(sm.input[0], device=device, **ev)
    log.info("zero-shot %s", {t: v["acc"] for t, v in rec["tasks"].items()})
elif kind == "cost":
    rec = evaluate_cost(sm.input[0], device=device, **ev)
    log.info("cost %s", rec["metrics"])
elif kind == "memory":
    rec = evaluate_memory(sm.input[0], device=device, threads=sm.threads, **ev)
    log.info("memory %s", rec["metrics"])
elif kind == "latency":
    ev.pop("threads")  # the job's thread count (sm.threads, set by setup_job) is what runs and is recorded
    rec = evaluate_latency(sm.input[0], device=device, **ev)
    log.info("latency %s", rec["metrics"])
else:
    raise ValueError(f"unknown evaluation kind {kind!r}")
if "protocol" in rec and (cal_dtype := calibration_dtype_of(read_compression(sm.input[0]))):
    rec["protocol"]["calibration_dtype"] = cal_dtype  # the pruning's calibration forwards ran in it
write_json_atomic(sm.output[0], {
    "schema": METRICS_SCHEMA,
    "model": sm.params.model,
    "variant": dict(sm.params.variant),
    "evaluation": sm.wildcards.evaluation,
    "artifact": sm.input[0],
    **rec,
    "wall_seconds": time.perf_counter() - t0,
})
