"""Quantize a checkpoint with bitsandbytes and save it as a 4-bit checkpoint."""
from llm_compression.models import pick_device
from llm_compression.quantize import quantize_checkpoint
from llm_compression.runtime import setup_job

sm = snakemake  # noqa: F821
log = setup_job(sm.log[0], sm.threads)
device = pick_device(sm.params.device)
info = quantize_checkpoint(sm.input[0], sm.output[0], scheme=sm.params.scheme,
                           compute_dtype=sm.params.compute_dtype, blocksize=sm.params.blocksize,
                           int8_threshold=sm.params.int8_threshold, device=device)
log.info("quantized %s -> %s (%s)", sm.input[0], sm.output[0], info["quantization"]["scheme"])
