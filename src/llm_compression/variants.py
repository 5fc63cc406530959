"""The one place that maps a compression variant to its path segments and back.

A *variant* is one point of the experiment grid: a pruning step (method, level, ratio, repeat),
a healing step and a quantization step. Every artifact path of the workflow is built here, so
the Snakemake rules, the aggregate table and the tests agree on names.

Path layout (relative to the results root)::

    {model}/base/
    {model}/pruned/{pruning}/                      pruning = "{method}_{level}_{ratio}_x{repeat}" or "dense"
    {model}/healed/{pruning}/{healing}/
    {model}/quantized/{pruning}/{healing}/{quant}/
    {model}/metrics/{pruning}/{healing}/{quant}/{evaluation}.json
    {model}/demo/{pruning}/{healing}/{quant}.json  greedy generations of the demo prompts
    demo/{model}.md                                  those generations side by side
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

UNSTRUCTURED_METHODS = ("magnitude", "wanda", "sparsegpt")
#: level names as written in config -> as written in paths (":" is not path-safe everywhere)
LEVELS = {"unstructured": "unstructured", "2:4": "2of4", "4:8": "4of8", "block": "block", "channel": "channel",
          "layer": "layer"}
LEVELS_FROM_PATH = {v: k for k, v in LEVELS.items()}
NO_HEALING = "none"
NO_QUANT = "none"
DENSE = "dense"

_PRUNING_RE = re.compile(
    r"^(?P<method>[a-z0-9]+(?:-[a-z0-9]+)*)_(?P<level>[a-z0-9]+)_(?P<ratio>[0-9.]+)_x(?P<repeat>[0-9]+)$"
)


def format_ratio(ratio: float) -> str:
    """Canonical text of a ratio for paths: ``0.5 -> "0.5"``, ``0.75 -> "0.75"``, ``0.25000001 -> "0.25"``.

    Raises:
        ValueError: ratio outside [0, 1).
    """
    ratio = float(ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio {ratio!r} is outside [0, 1)")
    text = f"{ratio:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def canonical_ratio(ratio: float) -> float:
    """The ratio a variant carries: ``ratio`` rounded to its name (:func:`format_ratio`), so a ratio
    maps to one value and one name everywhere (path, params, table): ``1/3 -> 0.333333``.

    Raises:
        ValueError: ratio outside [0, 1).
    """
    return float(format_ratio(ratio))


def cumulative_ratio(ratio: float, repeat: int) -> float:
    """Sparsity reached by ``repeat`` prunings at ``ratio`` of the remaining weights each:
    ``1 - (1 - ratio)^repeat`` (e.g. ``0.5, 2 -> 0.75``), the one-shot ratio a repeat is paired with.

    Raises:
        ValueError: ratio outside [0, 1) or repeat < 1.
    """
    if not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio {ratio!r} is outside [0, 1)")
    if int(repeat) < 1:
        raise ValueError(f"repeat {repeat!r} must be >= 1")
    return 1.0 - (1.0 - float(ratio)) ** int(repeat)


@dataclass(frozen=True)
class Pruning:
    """One pruning step. ``method == "dense"`` means no pruning (the imported base model).

    ``ratio`` is stored canonical (:func:`canonical_ratio`), so two ratios with the same name are the
    same step: ``Pruning("wanda", ratio=1/3) == Pruning.from_segment("wanda_unstructured_0.333333_x1")``.
    """

    method: str
    level: str = "unstructured"
    ratio: float = 0.0
    repeat: int = 1

    def __post_init__(self):
        if not self.is_dense:
            object.__setattr__(self, "ratio", canonical_ratio(self.ratio))

    @property
    def is_dense(self) -> bool:
        return self.method == DENSE

    @property
    def segment(self) -> str:
        """Path segment, e.g. ``wanda_unstructured_0.5_x1``, ``sparsegpt_2of4_0.5_x1``,
        ``llmpruner-element1_block_0.5_x1`` (structured: the importance is part of the method) or ``dense``."""
        if self.is_dense:
            return DENSE
        return f"{self.method}_{LEVELS.get(self.level, self.level)}_{format_ratio(self.ratio)}_x{self.repeat}"

    def parent(self) -> "Pruning | None":
        """The pruning this one starts from: ``x{n-1}`` for a repeat, None when it starts from the base."""
        if self.is_dense or self.repeat <= 1:
            return None
        return Pruning(self.method, self.level, self.ratio, self.repeat - 1)

    @classmethod
    def from_segment(cls, segment: str) -> "Pruning":
        """Inverse of :attr:`segment`.

        Raises:
            ValueError: the segment does not have the form ``{method}_{level}_{ratio}_x{repeat}``.
        """
        if segment == DENSE:
            return cls(DENSE)
        m = _PRUNING_RE.match(segment)
        if not m:
            raise ValueError(
                f"pruning segment {segment!r} is not 'dense' nor of the form "
                "'{method}_{level}_{ratio}_x{repeat}', e.g. 'wanda_unstructured_0.5_x1'"
            )
        level = LEVELS_FROM_PATH.get(m["level"], m["level"])
        return cls(m["method"], level, float(m["ratio"]), int(m["repeat"]))


@dataclass(frozen=True)
class Variant:
    """One grid point: pruning -> healing -> quantization."""

    pruning: Pruning
    healing: str = NO_HEALING
    quant: str = NO_QUANT

    def row(self) -> dict:
        """Columns that identify the variant in the aggregate table."""
        p = self.pruning
        return {
            "variant": self.label,
            "method": p.method,
            "level": p.level if not p.is_dense else "",
            "ratio": p.ratio if not p.is_dense else 0.0,
            "repeat": p.repeat if not p.is_dense else 0,
            "healing": self.healing,
            "quant": self.quant,
        }

    @property
    def label(self) -> str:
        """Human-readable name: ``pruning/healing/quant`` with ``none`` parts left out."""
        parts = [self.pruning.segment]
        if self.healing != NO_HEALING:
            parts.append(self.healing)
        if self.quant != NO_QUANT:
            parts.append(self.quant)
        return "+".join(parts)

    def to_dict(self) -> dict:
        return {"pruning": asdict(self.pruning), "healing": self.healing, "quant": self.quant}


def base_dir(model: str) -> str:
    return f"{model}/base"


def pruned_dir(model: str, pruning: Pruning) -> str:
    """Checkpoint directory of a pruning step; the dense model is the base checkpoint itself."""
    if pruning.is_dense:
        return base_dir(model)
    return f"{model}/pruned/{pruning.segment}"


def healed_dir(model: str, pruning: Pruning, healing: str) -> str:
    if healing == NO_HEALING:
        return pruned_dir(model, pruning)
    return f"{model}/healed/{pruning.segment}/{healing}"


def artifact_dir(model: str, variant: Variant) -> str:
    """The checkpoint a variant's metrics are measured on (the last stage that changed the weights)."""
    if variant.quant == NO_QUANT:
        return healed_dir(model, variant.pruning, variant.healing)
    return f"{model}/quantized/{variant.pruning.segment}/{variant.healing}/{variant.quant}"


def metrics_path(model: str, variant: Variant, evaluation: str) -> str:
    return f"{model}/metrics/{variant.pruning.segment}/{variant.healing}/{variant.quant}/{evaluation}.json"


def demo_path(model: str, variant: Variant) -> str:
    """Greedy generations of the demo prompts by one variant (JSON)."""
    return f"{model}/demo/{variant.pruning.segment}/{variant.healing}/{variant.quant}.json"


def demo_report_path(model: str) -> str:
    """All variants' demo generations side by side (Markdown)."""
    return f"demo/{model}.md"
