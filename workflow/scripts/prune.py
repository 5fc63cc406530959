"""Prune a checkpoint (the base model, or the previous repeat) and save the pruned checkpoint."""
import time

from llm_compression.data import calibration_set, load_text
from llm_compression.checkpoint import load_checkpoint, provenance, save_checkpoint, write_compression
from llm_compression.io import atomic_dir
from llm_compression.memory_plan import estimate_job, job_memory_record, record_job_memory
from llm_compression.models import pick_device
from llm_compression.plan_checks import check_calibration_corpus, check_pruning_job
from llm_compression.options.pruning import layerwise_calibrated
from llm_compression.prune import compute_dtype_of, needs_calibration, prune_model
from llm_compression.prune.calibration import check_compute_dtype
from llm_compression.runtime import finish_job, setup_job
from llm_compression.streaming import prune_streamed, streamable

sm = snakemake  # noqa: F821
p = dict(sm.params.prune)
cal = p.pop("calibration", None)
log = setup_job(sm.log[0], sm.threads, seed=cal["seed"] if cal else 0)
check_pruning_job(dict(sm.params.prune), sm.input[0], getattr(sm.resources, "mem_mb", None))  # before heavy work
device = pick_device(sm.params.device)
compute_dtype = cal.get("dtype") if cal and p["method"] in layerwise_calibrated() else None
check_compute_dtype(compute_dtype_of(compute_dtype), device)  # float16 on CPU: refused before loading
t0 = time.perf_counter()
# resources.streaming: always -> layer-wise methods prune one decoder block at a time from the files
streamed = getattr(sm.resources, "streaming", "never") == "always" and streamable(p)
if streamed:
    from transformers import AutoTokenizer

    model, tok = None, AutoTokenizer.from_pretrained(sm.input[0])
else:
    model, tok = load_checkpoint(sm.input[0], device=device)
# the plan's estimate on this input (its own widths), recorded beside the measured peak
estimate = estimate_job("prune", sm.input[0], dict(sm.params.prune), streamed=streamed, device=str(device))
calib_ids = None
calib_protocol = None
if needs_calibration(p["method"]):
    corpus = load_text(cal["corpus"], cal["split"], path=cal["path"], join=cal.get("join"))
    check_calibration_corpus(cal["samples"], cal["seqlen"], len(corpus.text.encode()), "calibration.samples",
                             f"{cal['corpus']}/{cal['split']}")
    calib_ids, calib_protocol = calibration_set(tok, corpus, cal)
    log.info("calibration: %d x %d tokens from %s/%s, sampler %s, windows sha256 %s", *calib_ids.shape,
             cal["corpus"], cal["split"], calib_protocol["sampler"], calib_protocol["windows_sha256"])
options = {k: v for k, v in p.items() if k not in ("method", "level", "ratio", "repeat")}
kwargs = dict(method=p["method"], level=p["level"], ratio=p["ratio"], calib_ids=calib_ids,
              batch_size=cal["batch_size"] if cal else 8, progress=True, log=log.info, compute_dtype=compute_dtype,
              **options)


def record(result):
    if calib_protocol is not None and result.compute_dtype is not None:
        calib_protocol["dtype"] = result.compute_dtype  # the dtype the calibration forwards ran in
    log.info("achieved sparsity %.4f over %d prunable weights (before: %.4f)",
             result["sparsity_after"], result["prunable_weights"], result["sparsity_before"])
    return provenance("prune", sm.input[0], pruning={**p, **options}, calibration=calib_protocol,
                      result=result.provenance(), device=device, wall_seconds=time.perf_counter() - t0,
                      memory=job_memory_record(estimate, device))  # the peak so far: pruning, before saving


if streamed:
    with atomic_dir(sm.output[0]) as tmp:
        write_compression(tmp, record(prune_streamed(sm.input[0], tmp, device=device, **kwargs)))
else:
    result = prune_model(model, **kwargs)
    save_checkpoint(model, tok, sm.output[0], record(result))
record_job_memory(sm.log[0], estimate, device, log.info)  # the whole job's peak, saving included
finish_job()  # every output is written: exit without tearing down torch and transformers (~1 s)
