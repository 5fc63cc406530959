"""llm-compression: prune, heal, quantize and measure causal language models.

The library holds every algorithm and measurement; the Snakemake workflow (``Snakefile``,
``rules/``, ``workflow/scripts/``) only wires artifacts together.
"""

__version__ = "0.1.0"
