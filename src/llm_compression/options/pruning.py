"""Pruning methods as typed objects, and the registry the library, the config and the docs read.

Every method is one :class:`PruningMethod` in :data:`METHODS` whose ``options`` is a frozen dataclass
(:class:`MethodOptions` subclass): its fields are the method's options, with their defaults, units
(field ``metadata["doc"]``) and the check of their values (:meth:`MethodOptions.validate`) in one
place -- in the manner of llm-compressor's modifiers. :func:`llm_compression.prune.prune_model`
builds the options object, the config validation builds it from a ``grid.pruning`` entry, and the
README's options list is checked against it by a test.

Adding a method: write its science (a function ``run(model, *, level, ratio, calib_ids, batch_size,
options, progress, log)`` that prunes in place and returns its per-block timings, see
:func:`llm_compression.prune.prune_model`), one options dataclass, and :func:`register` a
:class:`PruningMethod` naming both. Nothing here imports torch; ``runner`` is a ``"module:function"``
string imported only when a model is pruned.

Path names: a method's path name (the ``{method}`` of ``{method}_{level}_{ratio}_x{repeat}``) is its
config name, except for structured pruning, whose path name ``llmpruner-<importance>`` carries the
importance criterion (so paths written before stay valid); :func:`split_path_method` is the inverse.
"""

from __future__ import annotations

import importlib
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, ClassVar

#: ``config.json`` key where structured pruning lists every decoder layer's widths (heads, key/value heads, MLP
#: channels) when the layers differ; :func:`llm_compression.checkpoint.load_pruned` rebuilds the layers from it
LAYER_SHAPES_KEY = "pruned_layer_shapes"

#: levels as written in config
UNSTRUCTURED_LEVELS = ("unstructured", "2:4", "4:8")
#: group levels of structured pruning (heads and channels) and ``layer`` (whole decoder blocks)
GROUP_LEVELS = ("block", "channel")
STRUCTURED_LEVELS = (*GROUP_LEVELS, "layer")

#: magnitude comparison groups
SCOPES = ("layer", "row", "global")
#: SparseGPT Hessian accumulation dtypes
HESSIAN_DTYPES = ("float32", "float64")
#: what the calibrated methods do with weights that are already exactly zero (see ``ZEROS_DOC``)
ZERO_RULES = ("keep", "rank")
ZEROS_DOC = ("weights already exactly zero: keep = they stay zero outside the ratio (ratio = fraction of the "
             "non-zero weights, so pruning a pruned model again removes more); rank = ranked like any weight and "
             "counted inside the ratio, the SparseGPT/Wanda reference code's rule (for parity with it; with repeats "
             "a second pass at the same ratio would remove nothing new, so it is refused there)")

#: structured importance criteria (LLM-Pruner Sec. 3.2) and their aliases
IMPORTANCES = ("element1", "element2", "vector", "l1", "l2", "random", "activation", "contribution", "block-influence",
               "angular")
ALIASES = {"taylor": "element1", "block_influence": "block-influence", "bi": "block-influence"}
GRADIENT_IMPORTANCES = ("element1", "element2", "vector")
#: criteria read from calibration activations, forward passes only (prune.structured.activations)
ACTIVATION_IMPORTANCES = ("activation", "contribution", "block-influence", "angular")
#: levels each criterion applies to (depth criteria score whole blocks; ``activation`` scores heads/channels;
#: ``contribution`` scores heads and MLP channels by what they add to the residual stream, block level only)
IMPORTANCE_LEVELS = {**{i: ("block", "channel", "layer") for i in ("element1", "element2", "vector", "l1", "l2",
                                                                    "random")},
                     "activation": ("block", "channel"),
                     "contribution": ("block",),
                     "block-influence": ("layer",),
                     "angular": ("layer",)}
AGGREGATIONS = ("sum", "mean", "max")
ATTENTION_UNITS = ("query_head", "kv_group", "none")
#: LLM-Pruner's default criterion: first-order element-wise Taylor
DEFAULT_IMPORTANCE = "element1"
#: config name of structured pruning, and the prefix of its path names ``llmpruner-<importance>``
STRUCTURED_METHOD = "llm-pruner"
STRUCTURED_PREFIX = "llmpruner-"


class StructuredPruningError(ValueError):
    """A structured-pruning request that cannot be carried out as asked (bad option, unsupported model,
    a ratio that is no whole number of heads when snapping is off)."""


def canonical_importance(name: str) -> str:
    """``taylor`` -> ``element1``; other valid names unchanged.

    Raises:
        StructuredPruningError: unknown criterion.
    """
    name = ALIASES.get(name, name)
    if name not in IMPORTANCES:
        raise StructuredPruningError(
            f"importance {name!r} is not one of {', '.join(IMPORTANCES + tuple(ALIASES))}"
        )
    return name


def needs_gradients(importance: str) -> bool:
    """Whether a structured importance criterion reads calibration gradients."""
    return canonical_importance(importance) in GRADIENT_IMPORTANCES


def importance_needs_calibration(importance: str) -> bool:
    """Whether a structured importance criterion reads calibration data (gradients or activations)."""
    imp = canonical_importance(importance)
    return imp in GRADIENT_IMPORTANCES or imp in ACTIVATION_IMPORTANCES


def check_importance_level(importance: str, level: str) -> None:
    """Refuse a criterion at a level it does not score (e.g. ``block-influence`` at ``block``).

    Raises:
        StructuredPruningError: unknown criterion, or ``level`` not in its :data:`IMPORTANCE_LEVELS`.
    """
    imp = canonical_importance(importance)
    if level not in IMPORTANCE_LEVELS[imp]:
        valid = [i for i, lv in IMPORTANCE_LEVELS.items() if level in lv]
        raise StructuredPruningError(
            f"importance {importance!r} does not apply to level {level!r} (it scores level(s) "
            f"{', '.join(IMPORTANCE_LEVELS[imp])}); valid at {level!r}: {', '.join(valid)}")


def parse_nm(level: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None, ``"2:4"`` -> ``(2, 4)``.

    Raises:
        ValueError: malformed pattern, or not ``0 < n < m``.
    """
    if level == "unstructured":
        return None
    try:
        n, m = (int(x) for x in level.split(":"))
    except ValueError:
        raise ValueError(f"sparsity level {level!r} is not 'unstructured' nor 'N:M' like '2:4'") from None
    if not 0 < n < m:
        raise ValueError(f"N:M level {level!r} needs 0 < N < M")
    return n, m


def option(default, doc: str, *, choices: tuple | None = None, in_params: bool = True, config: bool = True):
    """A method option: ``doc`` says what it is and its unit; ``choices`` the valid values (checked by
    :meth:`MethodOptions.validate`); ``in_params`` whether its default is written into the prune rule's
    ``params:`` when the config does not set it (so a changed default reruns the step); ``config``
    whether a ``grid.pruning`` entry may set it (library-only options are not config keys)."""
    return field(default=default, metadata={"doc": doc, "choices": choices, "in_params": in_params,
                                            "config": config})


@dataclass(frozen=True)
class MethodOptions:
    """Options of one pruning method (subclass per method; fields made with :func:`option`)."""

    method: ClassVar[str] = ""

    @classmethod
    def names(cls, *, config_only: bool = False) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if not config_only or f.metadata.get("config", True))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def docs(cls) -> dict[str, str]:
        """Option name -> its documentation line (unit, default, choices), for the docs' options table."""
        out = {}
        for f in fields(cls):
            choices = f.metadata.get("choices")
            extra = f"; one of {', '.join(map(str, choices))}" if choices else ""
            out[f.name] = f"{f.metadata.get('doc', '')} (default {f.default!r}{extra})"
        return out

    @classmethod
    def from_mapping(cls, options: dict, *, level: str = "unstructured") -> "MethodOptions":
        """The options object of ``options`` (absent keys take their defaults), validated for ``level``.

        Raises:
            ValueError: an option the method does not take (naming the valid ones), or a bad value.
        """
        bad = sorted(set(options) - set(cls.names()))
        if bad:
            raise ValueError(f"method {cls.method!r} does not take option(s) {bad}; valid: {list(cls.names())}")
        obj = cls(**options)
        obj.validate(level)
        return obj

    def validate(self, level: str) -> None:
        """Check every value (choices, ranges, consistency with ``level``) before any heavy work.

        Raises:
            ValueError: naming the option, its value and what would be valid.
        """
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"{self.method} {f.name} {value!r} is not one of {list(choices)}")

    def as_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def params(cls, entry: dict) -> dict[str, Any]:
        """The options of a ``grid.pruning`` entry as the prune rule's ``params:``: the ones the entry
        sets, and the defaults of those marked ``in_params``, in field order."""
        return {f.name: entry.get(f.name, f.default) for f in fields(cls)
                if f.metadata.get("config", True) and (f.name in entry or f.metadata.get("in_params", True))}


@dataclass(frozen=True)
class MagnitudeOptions(MethodOptions):
    """Magnitude pruning (|W|, no calibration)."""

    method: ClassVar[str] = "magnitude"
    scope: str = option("layer", "comparison group: per layer, per output row, or one threshold over all "
                        "prunable Linear layers (global: unstructured only)", choices=SCOPES, in_params=False)

    def validate(self, level: str) -> None:
        super().validate(level)
        if self.scope == "global" and parse_nm(level) is not None:
            raise ValueError(f"magnitude scope 'global' is for unstructured pruning, not level {level!r}")


@dataclass(frozen=True)
class WandaOptions(MethodOptions):
    """Wanda (|W| * ||X||, per output row; Sun et al. 2024)."""

    method: ClassVar[str] = "wanda"
    zeros: str = option("keep", ZEROS_DOC, choices=ZERO_RULES, in_params=False)


@dataclass(frozen=True)
class SparseGPTOptions(MethodOptions):
    """SparseGPT (Frantar & Alistarh 2023, Alg. 1)."""

    method: ClassVar[str] = "sparsegpt"
    blocksize: int = option(128, "columns per lazy-update block (a multiple of M for N:M)")
    percdamp: float = option(0.01, "Hessian damping, a fraction of its mean diagonal, in (0, 1]")
    hessian_dtype: str = option("float32", "dtype the Hessian is accumulated in", choices=HESSIAN_DTYPES,
                                in_params=False, config=False)
    zeros: str = option("keep", ZEROS_DOC, choices=ZERO_RULES, in_params=False)

    def validate(self, level: str) -> None:
        super().validate(level)
        nm = parse_nm(level)
        if not isinstance(self.blocksize, int) or isinstance(self.blocksize, bool) or self.blocksize < 1:
            raise ValueError(f"SparseGPT blocksize {self.blocksize!r} must be a positive integer (default "
                             f"{SparseGPTOptions.blocksize})")
        if not (isinstance(self.percdamp, (int, float)) and 0.0 < float(self.percdamp) <= 1.0):
            raise ValueError(f"SparseGPT percdamp {self.percdamp!r} must be in (0, 1] (default "
                             f"{SparseGPTOptions.percdamp})")
        if nm is not None and self.blocksize % nm[1]:
            raise ValueError(
                f"SparseGPT blocksize {self.blocksize} must be a multiple of M={nm[1]} for the {nm[0]}:{nm[1]} pattern"
            )


@dataclass(frozen=True)
class LLMPrunerOptions(MethodOptions):
    """Structured pruning, LLM-Pruner style (Ma et al. 2023); the criterion is the pruning's ``importance``."""

    method: ClassVar[str] = STRUCTURED_METHOD
    aggregation: str = option("sum", "combine a group's per-tensor scores", choices=AGGREGATIONS)
    attention: str = option("query_head", "block level: prune query heads, whole key/value groups, or no "
                            "attention (MLP only)", choices=ATTENTION_UNITS)
    layer_range: Any = option(None, "decoder layers [start, end) of the block and layer levels; None = all but "
                              "the first and last")
    snap: bool = option(True, "round a head ratio that is no whole number of heads (false refuses)")
    width_multiple: int = option(1, "round kept MLP channels and the kept hidden size to a multiple of this (e.g. 32 "
                                 "for llama.cpp's Q8_0/Q4_0 blocks, 256 for its k-quants); 1 = no rounding",
                                 in_params=False)
    gradient_checkpointing: bool = option(False, "Taylor criteria: recompute each decoder block in the backward "
                                          "pass (torch.utils.checkpoint) so the kept activations are one block's "
                                          "plus each block's input; same scores, one more forward pass",
                                          in_params=False)
    seed: int = option(0, "seed of the random criterion (the workflow passes the calibration seed)",
                       config=False)

    def validate(self, level: str) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise StructuredPruningError(f"aggregation {self.aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        if self.attention not in ATTENTION_UNITS:
            raise StructuredPruningError(
                f"attention unit {self.attention!r} is not one of {', '.join(ATTENTION_UNITS)}")
        if not isinstance(self.width_multiple, int) or isinstance(self.width_multiple, bool) or self.width_multiple < 1:
            raise StructuredPruningError(f"width_multiple {self.width_multiple!r} must be an integer >= 1 "
                                         "(e.g. 32 or 256 for llama.cpp's quantizers)")
        if not isinstance(self.gradient_checkpointing, bool):
            raise StructuredPruningError(f"gradient_checkpointing {self.gradient_checkpointing!r} must be true or false")


@dataclass(frozen=True)
class PruningMethod:
    """One registered pruning method.

    Attributes:
        name: config name (``grid.pruning[].method``).
        options: its options dataclass.
        levels: config levels it takes.
        calibrated: whether it reads calibration data; a callable of the importance for structured methods.
        runner: ``"module:function"`` of its science, imported only when a model is pruned (or the function).
        structured: path names are ``llmpruner-<importance>`` and the importance is a field of the pruning.
    """

    name: str
    options: type[MethodOptions]
    levels: tuple[str, ...]
    calibrated: bool | Callable[[str | None], bool]
    runner: str | Callable
    structured: bool = False

    def needs_calibration(self, importance: str | None = None) -> bool:
        return self.calibrated(importance) if callable(self.calibrated) else bool(self.calibrated)

    def path_name(self, importance: str | None = None) -> str:
        """The ``{method}`` of its path segments."""
        if self.structured:
            return STRUCTURED_PREFIX + canonical_importance(importance or DEFAULT_IMPORTANCE)
        return self.name

    def load_runner(self) -> Callable:
        if callable(self.runner):
            return self.runner
        module, _, attr = self.runner.partition(":")
        return getattr(importlib.import_module(module), attr)


#: config name -> method, in registration order
METHODS: dict[str, PruningMethod] = {}


def register(method: PruningMethod) -> PruningMethod:
    """Add a method to :data:`METHODS` (the config, the planner and :func:`~llm_compression.prune.prune_model`
    then know it).

    Raises:
        ValueError: the name is taken, or is not a valid path name (lower-case letters, digits, '-').
    """
    import re

    if method.name in METHODS:
        raise ValueError(f"pruning method {method.name!r} is already registered")
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", method.name) or method.name.startswith(STRUCTURED_PREFIX):
        raise ValueError(f"pruning method name {method.name!r} must be lower-case letters/digits joined by '-' "
                         f"and not start with {STRUCTURED_PREFIX!r}")
    METHODS[method.name] = method
    return method


def layerwise_calibrated() -> tuple[str, ...]:
    """Config names of the unstructured methods that calibrate decoder block by decoder block (their
    forwards run in ``calibration.dtype``, their windows are bounded by the prune job's memory):
    every registered method that is not structured and reads calibration data."""
    return tuple(name for name, m in METHODS.items() if not m.structured and m.needs_calibration())


#: structured criteria that score one decoder block from its own weights (Ma et al. 2023's L1/L2/random
#: baselines) or from its own activations on its inputs (Minitron's ``activation``, ``contribution``): the
#: ``block`` level prunes them block by block, streamed
STREAMED_STRUCTURED_IMPORTANCES = ("l1", "l2", "random", "activation", "contribution")
#: depth criteria (``layer`` level) scored one block at a time: weight norms, random, and the block-boundary
#: statistics of ShortGPT's block influence and Gromov et al.'s angular distance on the replayed calibration set
STREAMED_DEPTH_IMPORTANCES = ("l1", "l2", "random", "block-influence", "angular")
#: hidden-channel criteria (``channel`` level) scored in a pass over the blocks, then cut in a second
STREAMED_CHANNEL_IMPORTANCES = ("l1", "l2", "random", "activation")


def streamable(pruning: dict) -> bool:
    """Whether a prune job's settings (``method``, ``level``, ``scope``, ``importance``) can run block by block
    (:func:`llm_compression.streaming.prune_streamed`): SparseGPT, Wanda, magnitude per layer or row, and
    structured pruning at the ``block`` level with a criterion of :data:`STREAMED_STRUCTURED_IMPORTANCES`, at the
    ``channel`` level with one of :data:`STREAMED_CHANNEL_IMPORTANCES` and at the ``layer`` level with one of
    :data:`STREAMED_DEPTH_IMPORTANCES`; not global magnitude, not the criteria that read whole-model gradients
    (Taylor)."""
    method = pruning.get("method")
    if _is_structured(method):
        importance = structured_importance(pruning)  # None for an unknown criterion: not streamable
        level = pruning.get("level")
        return ((level == "block" and importance in STREAMED_STRUCTURED_IMPORTANCES)
                or (level == "channel" and importance in STREAMED_CHANNEL_IMPORTANCES)
                or (level == "layer" and importance in STREAMED_DEPTH_IMPORTANCES))
    return method in layerwise_calibrated() or (method == "magnitude" and pruning.get("scope", "layer") != "global")


def _is_structured(method) -> bool:
    return isinstance(method, str) and (method == STRUCTURED_METHOD or method.startswith(STRUCTURED_PREFIX))


def structured_importance(pruning: dict) -> str | None:
    """The canonical structured criterion of a prune job's settings: its ``importance`` (default
    :data:`DEFAULT_IMPORTANCE`) under the config name ``llm-pruner``, or the ``<importance>`` of a path name
    ``llmpruner-<importance>``; None for an unstructured method or an unknown criterion."""
    method = pruning.get("method")
    if not _is_structured(method):
        return None
    importance = (pruning.get("importance") or DEFAULT_IMPORTANCE if method == STRUCTURED_METHOD
                  else method[len(STRUCTURED_PREFIX):])
    try:
        return canonical_importance(importance)
    except StructuredPruningError:
        return None


def unregister(name: str) -> None:
    """Remove a registered method (tests register toy methods and remove them again)."""
    METHODS.pop(name, None)


register(PruningMethod("magnitude", MagnitudeOptions, UNSTRUCTURED_LEVELS, False,
                       "llm_compression.prune:run_magnitude"))
register(PruningMethod("wanda", WandaOptions, UNSTRUCTURED_LEVELS, True, "llm_compression.prune:run_wanda"))
register(PruningMethod("sparsegpt", SparseGPTOptions, UNSTRUCTURED_LEVELS, True,
                       "llm_compression.prune:run_sparsegpt"))
register(PruningMethod(STRUCTURED_METHOD, LLMPrunerOptions, STRUCTURED_LEVELS,
                       lambda importance: importance_needs_calibration(importance or DEFAULT_IMPORTANCE),
                       "llm_compression.prune:run_structured", structured=True))


def split_path_method(path_method: str) -> tuple[PruningMethod, str | None]:
    """A path name -> ``(method, importance)``: ``"wanda"`` -> ``(wanda, None)``,
    ``"llmpruner-element1"`` -> ``(llm-pruner, "element1")``.

    Raises:
        ValueError: no registered method has this path name (naming the valid ones).
    """
    if isinstance(path_method, str) and path_method.startswith(STRUCTURED_PREFIX):
        imp = path_method[len(STRUCTURED_PREFIX):]
        if imp in IMPORTANCES:
            return METHODS[STRUCTURED_METHOD], imp
    elif path_method in METHODS and not METHODS[path_method].structured:
        return METHODS[path_method], None
    raise ValueError(f"unknown pruning method {path_method!r}; valid: {', '.join(path_methods())}")


def path_methods() -> tuple[str, ...]:
    """Every valid path name of the registered methods."""
    out: list[str] = []
    for m in METHODS.values():
        out += [STRUCTURED_PREFIX + i for i in IMPORTANCES] if m.structured else [m.name]
    return tuple(out)


def needs_calibration(path_method: str) -> bool:
    """Whether the method of a path name (``wanda``, ``llmpruner-l1``, ...) reads calibration data.

    Raises:
        ValueError: unknown method.
    """
    method, importance = split_path_method(path_method)
    return method.needs_calibration(importance)


def options_markdown() -> str:
    """The README's table of pruning methods and their config options, generated from :data:`METHODS`
    (``tests/prune/test_method_options.py`` checks that the README holds exactly this text)."""
    lines = ["| method | levels | calibration | option | default | meaning |", "|---|---|---|---|---|---|"]
    for m in METHODS.values():
        cal = "gradients (element1/element2/vector)" if m.structured else ("yes" if m.needs_calibration() else "no")
        opts = [f for f in fields(m.options) if f.metadata.get("config", True)]
        if not opts:
            lines.append(f"| `{m.name}` | {', '.join(m.levels)} | {cal} | - | - | - |")
        for i, f in enumerate(opts):
            choices = f.metadata.get("choices")
            meaning = f.metadata.get("doc", "") + (f" ({' / '.join(map(str, choices))})" if choices else "")
            head = f"`{m.name}` | {', '.join(m.levels)} | {cal}" if i == 0 else " | |"
            default = "null" if f.default is None else str(f.default).lower() if isinstance(f.default, bool) \
                else str(f.default)
            lines.append(f"| {head} | `{f.name}` | {default} | {meaning} |")
    lines += ["", f"`{STRUCTURED_METHOD}` also takes `importance` (a field of the pruning, carried in its path name "
              f"`{STRUCTURED_PREFIX}<importance>`): {', '.join(IMPORTANCES)} "
              f"({', '.join(f'{a} = {b}' for a, b in ALIASES.items())}); default {DEFAULT_IMPORTANCE}; a list makes "
              "one variant per criterion."]
    return "\n".join(lines) + "\n"
