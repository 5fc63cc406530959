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
    {model}/export/{pruning}/{healing}/{quant}/    hub-ready folder: checkpoint + model card (README.md)
    demo/{model}.md                                  those generations side by side

The rules take their ``output:`` patterns (:func:`pattern`) and wildcard constraints
(:data:`WILDCARD_CONSTRAINTS`) from here; evaluation names (``ppl-<dataset>-<preset>``, ``zeroshot``,
``cost``, ``memory``, ``latency``) are built and parsed here too (:func:`perplexity_evaluation`,
:func:`parse_evaluation`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .options.pruning import STRUCTURED_METHOD, STRUCTURED_PREFIX

UNSTRUCTURED_METHODS = ("magnitude", "wanda", "sparsegpt")
#: level names as written in config -> as written in paths (":" is not path-safe everywhere)
LEVELS = {"unstructured": "unstructured", "2:4": "2of4", "4:8": "4of8", "block": "block", "channel": "channel",
          "layer": "layer"}
LEVELS_FROM_PATH = {v: k for k, v in LEVELS.items()}
NO_HEALING = "none"
NO_QUANT = "none"
#: quantization names that leave a GGUF file measured in llama.cpp (llm_compression.gguf_export.GGUF_SCHEMES)
GGUF_PREFIX = "gguf-"
DENSE = "dense"

_PRUNING_RE = re.compile(
    r"^(?P<method>[a-z0-9]+(?:-[a-z0-9]+)*)_(?P<level>[a-z0-9]+)_(?P<ratio>[0-9.]+)_x(?P<repeat>[0-9]+)$"
)

#: Snakemake wildcard constraints of every path wildcard (``wildcard_constraints:`` of the workflow)
WILDCARD_CONSTRAINTS = {
    "pruning": r"dense|[a-z0-9-]+_[a-z0-9]+_[0-9.]+_x[0-9]+",
    "healing": r"[a-z0-9-]+",
    "quant": r"[a-z0-9_-]+",
    "evaluation": r"[a-z0-9-]+",
}
#: the constraints of the figure wildcards (``plots/{figure}.{ext}``)
FIGURE_CONSTRAINTS = {"figure": r"[a-z0-9_]+", "ext": r"png|svg|pdf"}

#: cost-type evaluations, each a config section ``evaluation.<name>`` with ``enabled`` and its knobs
COST_EVALUATIONS = ("cost", "memory", "latency")
ZEROSHOT_EVALUATION = "zeroshot"
PERPLEXITY_PREFIX = "ppl-"


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
    def importance(self) -> str | None:
        """The structured importance criterion (``"element1"`` for ``llmpruner-element1``), else None.
        The path keeps it in the method name, so segments written before stay valid."""
        if self.method.startswith(STRUCTURED_PREFIX):
            return self.method[len(STRUCTURED_PREFIX):]
        return None

    @property
    def config_method(self) -> str:
        """The method as named in config: ``llm-pruner`` for every ``llmpruner-<importance>``."""
        return STRUCTURED_METHOD if self.importance is not None else self.method

    @classmethod
    def of(cls, method: str, level: str = "unstructured", ratio: float = 0.0, repeat: int = 1, *,
           importance: str | None = None) -> "Pruning":
        """A pruning from its config method and fields: ``Pruning.of("llm-pruner", "block", 0.5,
        importance="element1")`` has path method ``llmpruner-element1``.

        Raises:
            ValueError: an importance for an unstructured method.
        """
        if method == STRUCTURED_METHOD:
            return cls(STRUCTURED_PREFIX + (importance or "element1"), level, float(ratio), int(repeat))
        if importance is not None:
            raise ValueError(f"method {method!r} takes no importance (got {importance!r})")
        return cls(method, level, float(ratio), int(repeat))

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
            "runtime": self.runtime,
        }

    @property
    def runtime(self) -> str:
        """Where the variant is measured: ``llama.cpp`` for a GGUF quantization (``gguf-*``), else ``pytorch``."""
        return "llama.cpp" if self.quant.startswith(GGUF_PREFIX) else "pytorch"

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


def export_dir(model: str, variant: Variant) -> str:
    """Hub-ready folder of a variant: its checkpoint, metrics and model card (see :mod:`llm_compression.export`)."""
    return f"{model}/export/{variant.pruning.segment}/{variant.healing}/{variant.quant}"


def demo_path(model: str, variant: Variant) -> str:
    """Greedy generations of the demo prompts by one variant (JSON)."""
    return f"{model}/demo/{variant.pruning.segment}/{variant.healing}/{variant.quant}.json"


def demo_report_path(model: str) -> str:
    """All variants' demo generations side by side (Markdown)."""
    return f"demo/{model}.md"


# --------------------------------------------------------------------------- rule patterns

#: wildcard patterns of the artifact paths (relative to the results root), keyed by stage
_PATTERNS = {
    "pruned": "{model}/pruned/{{pruning}}",
    "healed": "{model}/healed/{{pruning}}/{{healing}}",
    "quantized": "{model}/quantized/{{pruning}}/{{healing}}/{{quant}}",
    "metrics": "{model}/metrics/{{pruning}}/{{healing}}/{{quant}}/{{evaluation}}.json",
    "demo": "{model}/demo/{{pruning}}/{{healing}}/{{quant}}.json",
    "export": "{model}/export/{{pruning}}/{{healing}}/{{quant}}",
}


def pattern(stage: str, model: str) -> str:
    """The Snakemake ``output:`` pattern of a stage's artifact for ``model``, e.g.
    ``pattern("pruned", "m") == "m/pruned/{pruning}"`` (the same paths as :func:`pruned_dir` & co.).

    Raises:
        ValueError: unknown stage.
    """
    if stage not in _PATTERNS:
        raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(_PATTERNS)}")
    return _PATTERNS[stage].format(model=model)


def variant_of(pruning: str, healing: str = NO_HEALING, quant: str = NO_QUANT) -> Variant:
    """The variant of a rule's wildcard values (inverse of the path functions above).

    Raises:
        ValueError: a pruning segment of the wrong form.
    """
    return Variant(Pruning.from_segment(pruning), healing, quant)


# --------------------------------------------------------------------------- evaluation names

def perplexity_evaluation(dataset: str, preset: str) -> str:
    """Evaluation name of a perplexity measurement: ``ppl-<dataset>-<preset>`` (dataset names have no '-')."""
    return f"{PERPLEXITY_PREFIX}{dataset}-{preset}"


def parse_perplexity_evaluation(name: str, default_preset: str | None = None) -> tuple[str, str]:
    """Inverse of :func:`perplexity_evaluation` -> ``(dataset, preset)``.

    The older name ``ppl-<dataset>`` is accepted when ``default_preset`` is given (the workflow passes
    the first configured preset), so targets written before presets existed still build; the
    metrics JSON and the table name the preset either way.

    Raises:
        ValueError: ``name`` is not of the form ``ppl-<dataset>-<preset>`` (or ``ppl-<dataset>``
            without a default preset).
    """
    from .protocols import PRESETS

    parts = name.split("-", 2)
    if len(parts) == 2 and parts[0] == "ppl" and parts[1] and default_preset is not None:
        return parts[1], default_preset
    if len(parts) != 3 or parts[0] != "ppl" or parts[2] not in PRESETS:
        raise ValueError(f"evaluation {name!r} is not of the form ppl-<dataset>-<preset> "
                         f"with preset one of {', '.join(PRESETS)}")
    return parts[1], parts[2]


def is_perplexity_evaluation(name: str) -> bool:
    return name.startswith(PERPLEXITY_PREFIX)


def is_zeroshot_evaluation(name: str) -> bool:
    return name.startswith(ZEROSHOT_EVALUATION)


def perplexity_dataset(name: str) -> str:
    """The dataset of a perplexity evaluation name (``ppl-<dataset>-<preset>`` or ``ppl-<dataset>``).

    Raises:
        ValueError: not a perplexity evaluation name.
    """
    if not is_perplexity_evaluation(name) or len(name.split("-")) < 2 or not name.split("-")[1]:
        raise ValueError(f"evaluation {name!r} is not a perplexity evaluation (ppl-<dataset>-<preset>)")
    return name.split("-")[1]


def evaluation_kind(name: str) -> str:
    """``perplexity``, ``zeroshot`` or the cost-type name of an evaluation name.

    Raises:
        ValueError: an unknown evaluation name, naming the valid forms.
    """
    if is_perplexity_evaluation(name):
        return "perplexity"
    if name == ZEROSHOT_EVALUATION:
        return "zeroshot"
    if name in COST_EVALUATIONS:
        return name
    raise ValueError(f"unknown evaluation {name!r}; valid: ppl-<dataset>-<preset>, zeroshot, "
                     f"{', '.join(COST_EVALUATIONS)}")
