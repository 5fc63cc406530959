"""Aggregate every metrics JSON into the tidy results/summary.csv and the readable summary.md."""
from llm_compression.io import write_text_atomic
from llm_compression.report.plots import summary_markdown
from llm_compression.report.table import build_table, write_table
from llm_compression.runtime import setup_job

sm = snakemake  # noqa: F821
log = setup_job(sm.log[0])
df = build_table(list(sm.input))
write_table(df, sm.output.csv)
write_text_atomic(sm.output.md, summary_markdown(df))
log.info("wrote %d rows for %d variants", len(df), df.variant.nunique())
