"""Heal a pruned checkpoint (LoRA or knowledge distillation) and save the healed checkpoint."""
import time

from llm_compression.heal import heal_model, save_healed
from llm_compression.checkpoint import load_checkpoint, provenance
from llm_compression.memory_plan import estimate_job, record_job_memory
from llm_compression.models import pick_device
from llm_compression.runtime import finish_job, job_gpu_spread, setup_job

sm = snakemake  # noqa: F821
recipe = dict(sm.params.recipe)
log = setup_job(sm.log[0], sm.threads, seed=recipe["seed"])
device = pick_device(sm.params.device)
t0 = time.perf_counter()
spread = job_gpu_spread(sm.resources, sm.config)  # gpus > 1: the model (and a teacher) spread over them
model, tok = load_checkpoint(sm.input.pruned, device=device, **spread)
teacher = None
if recipe["method"] == "kd":
    teacher, _ = load_checkpoint(sm.input.teacher, device=device, **spread)
    log.info("teacher: %s", sm.input.teacher)
result = heal_model(model, tok, recipe, teacher=teacher, device=device, log=log.info)
save_healed(result, tok, sm.output[0], provenance(
    "heal", sm.input.pruned,
    teacher=sm.input.teacher if teacher is not None else None,
    healing={"name": sm.wildcards.healing, **result.recipe},
    result=result.info,
    device=device,
    wall_seconds=time.perf_counter() - t0,
))
log.info("saved %s (%.1fs)", sm.output[0], time.perf_counter() - t0)
record_job_memory(sm.log[0], estimate_job("heal", sm.input.pruned, recipe, device=str(device)), device, log.info)
finish_job()  # every output is written: exit without tearing down torch and transformers (~1 s)
