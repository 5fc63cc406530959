"""Figures from the tidy table (matplotlib, headless). One builder per figure, registered in
:data:`FIGURES`; each returns a :class:`matplotlib.figure.Figure` (:func:`build`) that :func:`draw`
saves. Which evaluations each figure reads is planned in :mod:`llm_compression.planning`
(:data:`~llm_compression.planning.FIGURE_READS`), so the workflow schedules only those metrics.

Conventions shared by every figure:

- one colour per *method family* (:func:`family_of`: dense, magnitude, Wanda, SparseGPT, LLM-Pruner
  block / channel / layer, an N:M level or a non-default structured criterion as a family of its own);
  one marker per quantization scheme (:data:`QUANT_MARKERS`); healed variants carry a thick outline and
  a hatch (:data:`HEALING_HATCHES`);
- *measured sparsity* (:func:`measured_sparsity`) is the fraction of the dense model's prunable decoder
  Linear weights that are removed (structured) or exactly zero (unstructured), read from the cost
  metrics of the artifact, so repeated pruning sits at the sparsity it reached, not at the one asked for;
- perplexity axes are logarithmic when the drawn values span more than a factor 10 (:data:`LOG_SPAN`);
  non-finite perplexities are not drawn but named in a note; cost axes start at 0;
- point labels are placed by a small deterministic repel (:func:`place_labels`): never over or against
  another label (3 pt apart), never outside the axes, off drawn lines when there is room, with a leader
  line when moved away from their point;
- timings are drawn as the median with a min-max bar over the timed repeats; a variant is called
  faster or slower than the dense model only when the two ranges do not overlap (:func:`timing_verdicts`).

Metrics are looked up by name with fallbacks (e.g. memory: peak forward memory if measured, else
weight memory, else bytes on disk); the axis label always names the metric actually used.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

from ...planning import FIGURES as FIGURE_NAMES  # noqa: E402
from ...planning import PER_DATASET  # noqa: E402
from .cost_vs_ratio import cost_vs_ratio  # noqa: E402
from .pareto import pareto  # noqa: E402
from .perplexity_vs_nonzero import perplexity_vs_nonzero  # noqa: E402
from .perplexity_vs_parameters import perplexity_vs_parameters  # noqa: E402
from .perplexity_vs_ratio import perplexity_vs_ratio  # noqa: E402
from .quantization_effect import quantization_effect  # noqa: E402
from ..plotting import save_figure  # noqa: E402


#: figure name -> builder (table -> Figure); which figures a run draws, and what each reads, is planned in
#: :mod:`llm_compression.planning` (torch- and matplotlib-free, so the DAG builds without this module)
FIGURES = {
    "perplexity_vs_nonzero": perplexity_vs_nonzero,
    "quantization_effect": quantization_effect,
    "perplexity_vs_ratio": perplexity_vs_ratio,
    "cost_vs_ratio": cost_vs_ratio,
    "pareto": pareto,
}
assert set(FIGURES) == set(FIGURE_NAMES), "planning.FIGURES and plots.FIGURES must name the same figures"


def build(figure: str, df: pd.DataFrame):
    """The :class:`~matplotlib.figure.Figure` of a registered figure from the tidy table (the caller
    closes it; :func:`draw` saves and closes).

    Raises:
        ValueError: unknown figure, or the table lacks the metrics it needs.
    """
    if figure.startswith(PER_DATASET):
        return perplexity_vs_parameters(df, figure[len(PER_DATASET):])
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; valid: {', '.join(FIGURES)}, {PER_DATASET}<dataset>")
    return FIGURES[figure](df)


def draw(figure: str, df: pd.DataFrame, out_path) -> None:
    """Draw a registered figure from the tidy table to ``out_path`` (format from the suffix), written
    atomically.

    Raises:
        ValueError: unknown figure, or the table lacks the metrics it needs.
    """
    save_figure(build(figure, df), out_path)
