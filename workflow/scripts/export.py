"""Write a variant's hub-ready folder: checkpoint, metrics and model card (README.md). Uploads nothing."""
from llm_compression.export import export_checkpoint
from llm_compression.runtime import finish_job, setup_job

sm = snakemake  # noqa: F821
log = setup_job(sm.log[0])  # file copies and text: no torch
info = export_checkpoint(sm.input.checkpoint, sm.output[0], metrics_files=list(sm.input.metrics),
                         model=sm.params.model, variant=dict(sm.params.variant), base=dict(sm.params.base))
log.info("exported %s -> %s (%d files; from_pretrained: %s; tags %s)", sm.input.checkpoint, sm.output[0],
         len(info["files"]), info["plain_loadable"], info["front_matter"].get("tags"))
finish_job()  # every output is written: exit without tearing down torch and transformers (~1 s)
