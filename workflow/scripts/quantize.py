"""Quantize a checkpoint with bitsandbytes (NF4, NF4-DQ, FP4 or LLM.int8()) and save it as a quantized checkpoint."""
from llm_compression.models import pick_device
from llm_compression.quantize import quantize_checkpoint
from llm_compression.runtime import finish_job, setup_job

sm = snakemake  # noqa: F821
log = setup_job(sm.log[0], sm.threads)
device = pick_device(sm.params.device)
info = quantize_checkpoint(sm.input[0], sm.output[0], scheme=sm.params.scheme, device=device,
                           **dict(sm.params.options))
log.info("quantized %s -> %s (%s)", sm.input[0], sm.output[0], info["quantization"]["scheme"])
finish_job()  # every output is written: exit without tearing down torch and transformers (~1 s)
