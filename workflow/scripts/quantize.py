"""Quantize a checkpoint: with bitsandbytes (NF4, NF4-DQ, FP4 or LLM.int8()) into a quantized checkpoint, or, for a
gguf-* scheme, export it to GGUF for llama.cpp (f32/f16, or Q8_0/Q4_K_M by llama.cpp's own quantizer)."""
from llm_compression.gguf_export import is_gguf_scheme
from llm_compression.runtime import finish_job, setup_job

sm = snakemake  # noqa: F821
log = setup_job(sm.log[0], sm.threads)
if is_gguf_scheme(sm.params.scheme):
    from llm_compression.gguf_export import export_artifact

    rec = export_artifact(sm.input[0], sm.output[0], sm.params.scheme, threads=sm.threads)
    tt = rec["tensor_types"]
    log.info("GGUF %s (%s, %s): %d bytes; tensor types %s; %d of %d weights fell back from %s",
             sm.output[0], rec["architecture"], rec["file_type"], rec["bytes"], tt["type_counts"],
             tt["fallback_count"], tt["weights"], tt["main_type"])
    for p in rec["paddings"]:
        log.info("padding: %s", p)
else:
    from llm_compression.models import pick_device
    from llm_compression.quantize import FOUR_BIT, quantize_checkpoint, quantize_streamed

    device = pick_device(sm.params.device)
    # resources.streaming (resolved per job by the memory plan): 4-bit schemes one decoder block at a time
    streamed = getattr(sm.resources, "streaming", "never") == "always" and sm.params.scheme in FOUR_BIT
    options = dict(sm.params.options)
    if streamed:
        options.pop("int8_threshold", None)
        info = quantize_streamed(sm.input[0], sm.output[0], scheme=sm.params.scheme, device=device, **options)
    else:
        info = quantize_checkpoint(sm.input[0], sm.output[0], scheme=sm.params.scheme, device=device, **options)
    log.info("quantized %s -> %s (%s)", sm.input[0], sm.output[0], info["quantization"]["scheme"])
    from llm_compression.memory_plan import estimate_job, record_job_memory

    record_job_memory(sm.log[0], estimate_job("quantize", sm.input[0], {"scheme": sm.params.scheme},
                                              streamed=streamed, device=str(device)), device, log.info)
finish_job()  # every output is written: exit without tearing down torch and transformers (~1 s)
