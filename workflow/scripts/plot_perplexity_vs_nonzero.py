"""Plot perplexity against non-zero parameters for all variants."""
import pandas as pd

from llm_compression.report.plots import perplexity_vs_nonzero
from llm_compression.runtime import setup_job

sm = snakemake  # noqa: F821
setup_job(sm.log[0])
perplexity_vs_nonzero(pd.read_csv(sm.input[0], keep_default_na=False), sm.output[0])
