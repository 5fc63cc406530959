"""Put the generation-demo JSON of every variant side by side in one Markdown file."""
from llm_compression.evaluate.generate import demo_markdown
from llm_compression.io import read_json, write_text_atomic
from llm_compression.runtime import setup_job

sm = snakemake  # noqa: F821
log = setup_job(sm.log[0])
records = [read_json(f) for f in sm.input]
write_text_atomic(sm.output[0], demo_markdown(records, title=f"Generation demo: {sm.params.model}"))
log.info("wrote %d variants side by side", len(records))
