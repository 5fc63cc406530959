"""Draw one registered figure from the metrics files it reads."""
from llm_compression.report.plots import draw
from llm_compression.report.table import build_table
from llm_compression.runtime import setup_job

sm = snakemake  # noqa: F821
log = setup_job(sm.log[0])
draw(sm.wildcards.figure, build_table(list(sm.input)), sm.output[0])
log.info("drew %s from %d metrics files", sm.output[0], len(sm.input))
