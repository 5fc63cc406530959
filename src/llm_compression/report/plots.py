"""The report's public face: the figures and the summary, as one import (``from llm_compression.report.plots
import draw, summary_markdown``). The parts live in their own modules:

- :mod:`.style`: colours, markers and names (one colour per method family, one marker per quantization);
- :mod:`.wide`: the one-row-per-variant table the figures and the summary read;
- :mod:`.summary`: ``summary.md``;
- :mod:`.plotting`: drawing helpers shared by the figures (legends, scales, notes, error bars);
- :mod:`.labels`: the placement of point labels;
- :mod:`.figures`: one module per figure and the registry (:data:`~.figures.FIGURES`, :func:`~.figures.build`,
  :func:`~.figures.draw`), with the conventions every figure follows.
"""

from ..planning import PER_DATASET, figure_evaluations, figure_names  # noqa: F401
from .figures import FIGURES, build, draw  # noqa: F401
from .figures.pareto import pareto_front  # noqa: F401
from .figures.perplexity_vs_parameters import size_key_values  # noqa: F401
from .labels import LABEL_GAP_PT, _line_samples, _overlap, place_labels  # noqa: F401
from .plotting import _dataset_of, readable_protocol, save_figure, wants_log  # noqa: F401
from .style import (  # noqa: F401
    MAX_BUBBLE_AREA,
    QUANT_MARKERS,
    display_name,
    family_colors,
    family_of,
    label_color,
    ordered_families,
)
from .summary import summary_markdown  # noqa: F401
from .wide import macs_tokens, pick_metric, ppl_columns, timing_verdicts, wide  # noqa: F401
