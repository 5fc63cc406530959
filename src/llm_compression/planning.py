"""Planning of the workflow: from a validated config to jobs, their inputs, params and resources.

This is the workflow layer's one planning module: grid expansion (:func:`expand_grid`), the
per-rule params (:meth:`Plan.prune_params`, :meth:`Plan.heal_inputs`, :meth:`Plan.quantize_params`,
:meth:`Plan.evaluation_params`), the evaluation names of a config (:func:`evaluations`), the figures a
run draws and the evaluations each one reads (:func:`figure_names`, :func:`figure_evaluations`), and
the resource plan of every stage (:class:`~llm_compression.resources.ResourcePlan`). Paths and names
come from :mod:`llm_compression.variants`; method facts from :mod:`llm_compression.options`.

Nothing imported here imports torch, transformers, peft, bitsandbytes, lm-eval or datasets, so
``snakemake -n`` never pays for them (``tests/workflow/test_planning_imports.py`` checks it).
"""

from __future__ import annotations

from types import SimpleNamespace

from .options.pruning import (
    DEFAULT_IMPORTANCE,
    METHODS,
    STRUCTURED_METHOD,
    canonical_importance,
    layerwise_calibrated,
    needs_calibration,
)
from .options.quantization import scheme_options
from .resources import ResourcePlan
from .variants import (
    COST_EVALUATIONS,
    DENSE,
    NO_HEALING,
    NO_QUANT,
    ZEROSHOT_EVALUATION,
    Pruning,
    Variant,
    artifact_dir,
    base_dir,
    cumulative_ratio,
    demo_path,
    demo_report_path,
    evaluation_kind,
    healed_dir,
    is_perplexity_evaluation,
    is_zeroshot_evaluation,
    metrics_path,
    parse_perplexity_evaluation,
    perplexity_dataset,
    perplexity_evaluation,
    pruned_dir,
    variant_of,
)

# --------------------------------------------------------------------------- the grid


def entry_methods(entry: dict) -> list[str]:
    """Method names (as in paths) of one ``grid.pruning`` entry: ``["wanda"]``, or for ``llm-pruner``
    one ``llmpruner-<importance>`` per listed importance (``taylor`` canonicalized to ``element1``)."""
    spec = METHODS.get(entry["method"])
    if spec is None or not spec.structured:
        return [entry["method"]]
    imps = entry.get("importance", DEFAULT_IMPORTANCE)
    imps = [imps] if isinstance(imps, str) else list(imps)
    out = []
    for imp in imps:
        m = spec.path_name(canonical_importance(imp))
        if m not in out:
            out.append(m)
    return out


def _entry_of(cfg: dict, pruning: Pruning) -> dict | None:
    """The first ``grid.pruning`` entry that yields ``pruning``'s method and level."""
    for entry in cfg["grid"]["pruning"]:
        if pruning.method in entry_methods(entry) and entry["level"] == pruning.level:
            return entry
    return None


def healing_names(cfg: dict, pruning: Pruning | None = None) -> list[str]:
    """Healing names of one pruning step: its entry's ``healing`` list when it has one, else
    ``grid.healing``. Without ``pruning``: every name used anywhere in the grid."""
    if pruning is None:
        names = list(cfg["grid"]["healing"])
        for entry in cfg["grid"]["pruning"]:
            names += [n for n in entry.get("healing", []) if n not in names]
        return names
    if pruning.is_dense:
        return [NO_HEALING]
    for entry in cfg["grid"]["pruning"]:
        if pruning.method in entry_methods(entry) and entry["level"] == pruning.level and "healing" in entry:
            return list(entry["healing"])
    return list(cfg["grid"]["healing"])


def quantization_names(cfg: dict, pruning: Pruning | None = None) -> list[str]:
    """Quantization names of one pruning step: ``grid.dense_quantization`` for dense (when set), its entry's
    ``quantization`` list when it has one, else ``grid.quantization``. Without ``pruning``: every name used
    anywhere in the grid."""
    grid = cfg["grid"]
    if pruning is None:
        names = list(grid["quantization"]) + [n for n in grid.get("dense_quantization") or [] if n not in grid["quantization"]]
        for entry in grid["pruning"]:
            names += [n for n in entry.get("quantization", []) if n not in names]
        return names
    if pruning.is_dense:
        return list(grid.get("dense_quantization") or grid["quantization"])
    entry = _entry_of(cfg, pruning)
    return list(entry["quantization"]) if entry and "quantization" in entry else list(grid["quantization"])


def expand_grid(cfg: dict) -> list[Variant]:
    """All variants of a validated config, dense first, in config order, without duplicates.

    An entry with ``oneshot_equivalent: true`` also yields, for every repeat ``n > 1`` at ratio
    ``r``, a one-shot variant (``x1``) at the cumulative ratio ``1 - (1 - r)^n`` (rounded as in
    :func:`~llm_compression.variants.format_ratio`), right after the repeated one.
    """
    prunings: list[Pruning] = []
    if cfg["grid"]["dense"]:
        prunings.append(Pruning(DENSE))
    for entry in cfg["grid"]["pruning"]:
        for ratio in entry["ratios"]:
            for repeat in entry["repeats"]:
                for method in entry_methods(entry):
                    prunings.append(Pruning(method, entry["level"], float(ratio), int(repeat)))
                    if entry.get("oneshot_equivalent") and repeat > 1:
                        cum = cumulative_ratio(float(ratio), int(repeat))  # canonicalized by Pruning
                        prunings.append(Pruning(method, entry["level"], cum, 1))
    prunings = list(dict.fromkeys(prunings))
    out: list[Variant] = []
    for p in prunings:
        for healing in healing_names(cfg, p):
            if p.is_dense and healing != NO_HEALING:
                continue
            for quant in quantization_names(cfg, p):
                v = Variant(p, healing, quant)
                if v not in out:
                    out.append(v)
    return out


# --------------------------------------------------------------------------- per-step options


def pruning_options(cfg: dict, pruning: Pruning) -> dict:
    """The config entry options that shape one pruning step, for ``params:``.

    The options the entry sets and the defaults its method's options dataclass marks ``in_params``
    (see :mod:`llm_compression.options.pruning`): ``scope`` (magnitude), ``blocksize`` and ``percdamp``
    (sparsegpt, defaults filled in); for structured methods ``aggregation``, ``attention``,
    ``layer_range``, ``snap`` (defaults filled in) and ``seed`` (of random importance, the calibration
    seed). The first entry with the same method and level supplies them.
    """
    spec, _ = _method(pruning)
    entry = _entry_of(cfg, pruning)
    opts = spec.options.params(entry or {})
    if spec.structured:
        opts["seed"] = pruning_calibration(cfg, pruning)["seed"]
    return opts


def _method(pruning: Pruning):
    from .options.pruning import split_path_method

    return split_path_method(pruning.method)


def pruning_calibration(cfg: dict, pruning: Pruning) -> dict:
    """The calibration block of one pruning step: the top-level ``calibration`` with the entry's
    ``calibration`` overrides (structured methods) applied."""
    out = dict(cfg["calibration"])
    for entry in cfg["grid"]["pruning"]:
        if pruning.method in entry_methods(entry) and entry["level"] == pruning.level:
            out.update(entry.get("calibration") or {})
    # defaults are left unnamed, so runs made before these options existed stay current
    if out.get("sampler") == "torch":
        del out["sampler"]
    if "join" in out and out["join"] is None:
        del out["join"]
    return out


def prune_params(cfg: dict, pruning: Pruning) -> dict:
    """``params.prune`` of one pruning step: method (path name), level, ratio, repeat, its options, and
    the calibration block only for calibrated methods (so only they rerun when calibration changes);
    its ``dtype`` only for the methods whose calibration forwards take one
    (:func:`~llm_compression.options.pruning.layerwise_calibrated`) and only when set (so setting it reruns exactly those jobs)."""
    params = {"method": pruning.method, "level": pruning.level, "ratio": pruning.ratio, "repeat": pruning.repeat,
              **pruning_options(cfg, pruning)}
    if needs_calibration(pruning.method):
        params["calibration"] = pruning_calibration(cfg, pruning)
        if params["calibration"].get("dtype") is None or pruning.method not in layerwise_calibrated():
            params["calibration"].pop("dtype", None)
    return params


# --------------------------------------------------------------------------- evaluations


def evaluations(cfg: dict) -> list[str]:
    """Evaluation names of a validated config: ``ppl-<dataset>-<preset>`` for each dataset and preset,
    ``zeroshot`` when zero-shot tasks are configured, then the enabled ones of ``cost``, ``memory``,
    ``latency``."""
    ppl = cfg["evaluation"]["perplexity"]
    names = [perplexity_evaluation(d, p) for p in ppl["presets"] for d in ppl["datasets"]]
    if cfg["evaluation"].get("zeroshot", {}).get("tasks"):
        names.append(ZEROSHOT_EVALUATION)
    names += [k for k in COST_EVALUATIONS if cfg["evaluation"][k]["enabled"]]
    return names


def evaluation_options(cfg: dict, name: str) -> dict:
    """The knobs of a cost-type evaluation (``cost``, ``memory``, ``latency``) for ``params:``.

    Raises:
        ValueError: ``name`` is not a cost-type evaluation.
    """
    if name not in COST_EVALUATIONS:
        raise ValueError(f"{name!r} is not one of {', '.join(COST_EVALUATIONS)}")
    return {k: v for k, v in cfg["evaluation"][name].items() if k != "enabled"}


def evaluation_params(cfg: dict, name: str, variant_label: str | None = None) -> dict:
    """``params.evaluation`` of one evaluation: everything that changes a metric's value, so a config
    change reruns exactly it. ``kind`` is ``perplexity``, ``zeroshot`` or the cost-type name. A zero-shot
    evaluation of a variant named in ``evaluation.zeroshot.larger_sample.variants`` (``variant_label``) gets
    that section's ``limit``; every other variant keeps the section's own.

    Raises:
        ValueError: unknown evaluation name, or a perplexity dataset/preset that is not configured.
    """
    kind = evaluation_kind(name)
    if kind == "perplexity":
        ppl = cfg["evaluation"]["perplexity"]
        ds, preset = parse_perplexity_evaluation(name, default_preset=ppl["presets"][0])
        if ds not in ppl["datasets"] or preset not in ppl["presets"]:
            raise ValueError(f"evaluation {name!r}: dataset {ds!r} / preset {preset!r} is not configured; "
                             f"datasets: {list(ppl['datasets'])}, presets: {ppl['presets']}")
        opts = {k: v for k, v in ppl.items() if k not in ("datasets", "presets")}
        d = {k: v for k, v in ppl["datasets"][ds].items() if k != "skip_if_missing"}
        return {"kind": "perplexity", "dataset": ds, "preset": preset, **d, **opts}
    if kind == "zeroshot":
        zs = {k: v for k, v in cfg["evaluation"]["zeroshot"].items() if k != "larger_sample"}
        larger = cfg["evaluation"]["zeroshot"].get("larger_sample")
        if larger and variant_label in larger["variants"]:
            zs["limit"] = larger["limit"]
        return {"kind": "zeroshot", **zs}
    return {"kind": kind, **evaluation_options(cfg, kind)}


def variant_evaluations(variant: Variant, evaluations: list[str]) -> list[str]:
    """The evaluations a variant runs: all of ``evaluations``, except zero-shot for a llama.cpp (GGUF) variant
    (lm-eval drives the PyTorch model here; the GGUF's perplexity, cost, memory and latency are measured in
    llama.cpp)."""
    if variant.runtime == "llama.cpp":
        return [e for e in evaluations if not is_zeroshot_evaluation(e)]
    return list(evaluations)


# --------------------------------------------------------------------------- figures

#: figures drawn when the run has perplexity and cost evaluations (see :mod:`llm_compression.report.plots`)
FIGURES = ("perplexity_vs_nonzero", "quantization_effect", "perplexity_vs_ratio", "cost_vs_ratio", "pareto")
#: prefix of the per-dataset figure ``perplexity_vs_parameters_<dataset>``
PER_DATASET = "perplexity_vs_parameters_"


def _ppl_datasets(evaluations: list[str]) -> list[str]:
    """Datasets of the perplexity evaluations (``ppl-<dataset>-<preset>`` or ``ppl-<dataset>``), in order."""
    return list(dict.fromkeys(perplexity_dataset(e) for e in evaluations if is_perplexity_evaluation(e)))


def figure_names(evaluations: list[str]) -> list[str]:
    """Figures a run with these evaluations can draw (one per-dataset figure per perplexity dataset)."""
    datasets = _ppl_datasets(evaluations)
    has_cost = "cost" in evaluations
    names = []
    if datasets and has_cost:
        names += ["perplexity_vs_nonzero"] + [PER_DATASET + d for d in datasets]
        names += ["quantization_effect", "pareto"]
    if datasets:
        names.append("perplexity_vs_ratio")
    if has_cost:
        names.append("cost_vs_ratio")
    return names


#: evaluation kinds each figure draws from (``perplexity``: every perplexity evaluation; ``perplexity:first``:
#: only the first PTB one, else the first one; ``perplexity:dataset``: those of the figure's dataset). A figure's
#: inputs are the metrics files of these kinds that the config enables, and nothing else, so asking for one
#: figure never runs a measurement it does not draw (``tests/report/test_figures.py`` checks both sides).
FIGURE_READS = {
    "perplexity_vs_nonzero": ("perplexity", "cost"),  # y, x = non-zero parameters
    PER_DATASET: ("perplexity:dataset", "cost"),  # y, x = non-zero parameters, bubble area = GMACs
    "quantization_effect": ("perplexity", "cost", "memory"),  # bars; weight memory (cost), peak memory
    "perplexity_vs_ratio": ("perplexity", "zeroshot", "cost"),  # y; x = measured sparsity (cost)
    "cost_vs_ratio": ("cost", "memory", "latency"),  # panels; x = measured sparsity (cost)
    "pareto": ("perplexity:first", "cost", "memory", "latency"),  # y; x = memory, latency
}


def figure_evaluations(figure: str, evaluations: list[str]) -> list[str]:
    """The evaluations a figure reads (their metrics files are its only inputs), in config order;
    see :data:`FIGURE_READS`.

    Raises:
        ValueError: unknown figure name, naming the valid ones.
    """
    valid = figure_names(evaluations)
    if figure not in valid:
        raise ValueError(f"unknown figure {figure!r}; valid for this config: {', '.join(valid)}")
    reads = FIGURE_READS[PER_DATASET if figure.startswith(PER_DATASET) else figure]
    ppl = [e for e in evaluations if is_perplexity_evaluation(e)]
    wanted: list[str] = []
    for kind in reads:
        if kind == "perplexity":
            wanted += ppl
        elif kind == "perplexity:dataset":
            wanted += [e for e in ppl if perplexity_dataset(e) == figure[len(PER_DATASET):]]
        elif kind == "perplexity:first":
            wanted += [next((e for e in ppl if perplexity_dataset(e) == "ptb"), ppl[0])] if ppl else []
        elif kind == "zeroshot":
            wanted += [e for e in evaluations if is_zeroshot_evaluation(e)]
        else:
            wanted += [e for e in evaluations if e == kind]
    return [e for e in evaluations if e in wanted]


# --------------------------------------------------------------------------- the plan of one run


class Plan:
    """Every job of one validated config: targets, inputs, params and resources, as paths under
    ``cfg["results"]``. The rules in ``rules/*.smk`` call these methods with their wildcards.

    Args:
        cfg: a config validated by :func:`llm_compression.config.validate_config`.
    """

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.results = cfg["results"]
        self.model = cfg["model"]["name"]
        self.variants = expand_grid(cfg)
        self.evaluations = evaluations(cfg)
        self.figures = figure_names(self.evaluations)
        #: runtime / mem_mb / cpus_per_task / gpu per stage, scaled with the model (config ``resources:``)
        self.resources = ResourcePlan(cfg)

    def path(self, rel: str) -> str:
        """A path under the results root."""
        return f"{self.results}/{rel}"

    # targets
    def metrics_files(self) -> list[str]:
        return [self.path(metrics_path(self.model, v, e)) for v in self.variants
                for e in variant_evaluations(v, self.evaluations)]

    def demo_files(self) -> list[str]:
        return [self.path(demo_path(self.model, v)) for v in self.variants]

    def demo_targets(self) -> list[str]:
        """The side-by-side generation demo, when prompts are configured."""
        return [self.path(demo_report_path(self.model))] if self.cfg["report"]["demo"]["prompts"] else []

    def figure_targets(self) -> list[str]:
        return [self.path(f"plots/{name}.{ext}") for name in self.figures for ext in self.cfg["report"]["plot_formats"]]

    def final_targets(self) -> list[str]:
        return (self.metrics_files() + [self.path("summary.csv"), self.path("summary.md")] + self.figure_targets()
                + self.demo_targets())

    def checkpoint_dirs(self) -> list[str]:
        """Every checkpoint folder of the plan (base, each pruning with its repeat chain, healed, quantized)."""
        dirs = {self.path(base_dir(self.model))}
        for v in self.variants:
            p = v.pruning
            while p is not None and not p.is_dense:
                dirs.add(self.path(pruned_dir(self.model, p)))
                p = p.parent()
            dirs.add(self.path(healed_dir(self.model, v.pruning, v.healing)))
            dirs.add(self.path(artifact_dir(self.model, v)))
        return sorted(dirs)

    # prune
    def prune_input(self, pruning: str) -> str:
        """The checkpoint a pruning step starts from: the previous repeat, or the base model."""
        parent = Pruning.from_segment(pruning).parent()
        return self.path(pruned_dir(self.model, parent) if parent else base_dir(self.model))

    def prune_params(self, pruning: str) -> dict:
        return prune_params(self.cfg, Pruning.from_segment(pruning))

    # heal
    def healing_recipe(self, healing: str) -> dict:
        """The complete recipe of a healing name (filled in by the config validation).

        Raises:
            KeyError: ``healing`` has no recipe.
        """
        return self.cfg["healing"][healing]

    def heal_inputs(self, pruning: str, healing: str) -> dict:
        recipe = self.healing_recipe(healing)
        inputs = {"pruned": self.path(pruned_dir(self.model, Pruning.from_segment(pruning)))}
        if recipe["method"] == "kd":
            teacher = recipe["kd"]["teacher"]
            inputs["teacher"] = self.path(base_dir(self.model)) if teacher == "base" else teacher
        if recipe["data"]["path"]:
            inputs["data"] = recipe["data"]["path"]
        return inputs

    # quantize
    def quantize_input(self, pruning: str, healing: str) -> str:
        return self.path(healed_dir(self.model, Pruning.from_segment(pruning), healing))

    def quantize_params(self, quant: str) -> dict:
        return scheme_options(quant, self.cfg["quantize"])

    # evaluate
    def evaluation_input(self, pruning: str, healing: str, quant: str) -> str:
        return self.path(artifact_dir(self.model, variant_of(pruning, healing, quant)))

    def evaluation_params(self, evaluation: str, variant: Variant | None = None) -> dict:
        return evaluation_params(self.cfg, evaluation, variant.label if variant is not None else None)

    def evaluation_threads(self, evaluation: str, local_cores: int | None = None) -> int:
        """The cores an evaluation job claims (Snakemake ``threads``).

        Latency is timed with the configured ``evaluation.latency.threads`` (recorded in its JSON); run by the
        local executor, its job claims every core of the run (``local_cores``, Snakemake's ``--cores``), so no
        other job shares the machine while it times; under a cluster executor the job's own allocation of
        ``threads`` cores is already its alone. Other evaluations use the stage's threads.
        """
        if evaluation == "latency":
            timed = int(self.cfg["evaluation"]["latency"]["threads"])
            return max(timed, int(local_cores)) if local_cores else timed
        return self.resources.threads("evaluate")

    # memory (llm_compression.memory_plan): each job's planned peak, its streaming and its mem_mb
    def model_shape(self):
        """The configured model's :class:`~llm_compression.memory_plan.ModelShape`, from the config.json (or GGUF
        header) that config validation read (``cfg["_model_config"]``); None for a hub model before its import
        (the jobs then use the stage constants of :mod:`llm_compression.resources`)."""
        if not hasattr(self, "_shape"):
            from .memory_plan import ModelShape

            self._shape = None
            model_cfg = self.cfg.get("_model_config")
            if model_cfg:
                try:
                    self._shape = ModelShape.from_config(model_cfg, self.cfg["model"].get("dtype"))
                except (ValueError, KeyError, TypeError):
                    self._shape = None
        return self._shape

    def _job_estimates(self, stage: str, w) -> tuple:
        """``(job name, in-memory estimate, streamed estimate or None, hint)`` of one job (wildcards ``w``)."""
        from .memory_plan import (estimate_evaluation, estimate_heal, estimate_prune, estimate_quantize,
                                  whole_model_gradients)
        from .options.pruning import streamable

        shape = self.model_shape()
        cuda = self.resources.device(stage if stage != "generate" else "evaluate") == "cuda"
        if stage == "prune":
            p = self.prune_params(w.pruning)
            hints = []
            if p.get("calibration"):
                cal = p["calibration"]
                hints.append(f"fewer calibration windows than {cal['samples']} x {cal['seqlen']} "
                             f"(calibration.samples / seqlen)")
            if whole_model_gradients(p) and not p.get("gradient_checkpointing"):
                checkpointed = estimate_prune(shape, {**p, "gradient_checkpointing": True}, cuda=cuda)
                hints.append(f"gradient_checkpointing: true on this grid.pruning entry (same scores) plans "
                             f"{checkpointed.where()}")
            hint = "; ".join(hints)
            return (f"prune {w.pruning}", estimate_prune(shape, p, cuda=cuda),
                    estimate_prune(shape, p, streamed=True, cuda=cuda) if streamable(p) else None, hint)
        if stage == "heal":
            r = self.healing_recipe(w.healing)
            return (f"heal {w.pruning}/{w.healing}", estimate_heal(shape, r, cuda=cuda), None,
                    f"a smaller healing batch_size ({r.get('batch_size')}) or seqlen ({r.get('seqlen')})")
        if stage == "quantize":
            q = {"scheme": w.quant}
            four_bit = w.quant in ("nf4", "nf4-dq", "fp4")  # quantize_streamed's schemes
            return (f"quantize {w.pruning}/{w.healing}/{w.quant}", estimate_quantize(shape, q, cuda=cuda),
                    estimate_quantize(shape, q, streamed=True, cuda=cuda) if four_bit else None, "")
        if stage == "import":
            return (f"import {self.model}", estimate_quantize(shape, {"scheme": ""}, cuda=False), None, "")
        quant = None if w.quant == NO_QUANT else w.quant
        if stage == "generate":
            ev = {"kind": "generate"}
        else:
            ev = self.evaluation_params(w.evaluation, variant_of(w.pruning, w.healing, w.quant))
        name = f"evaluate {w.pruning}/{w.healing}/{w.quant}" + (f"/{w.evaluation}" if stage == "evaluate" else "")
        can_stream = ev.get("kind") == "perplexity" and quant is None
        return (name, estimate_evaluation(shape, ev, cuda=cuda, quantization=quant),
                estimate_evaluation(shape, ev, streamed=True, cuda=cuda) if can_stream else None,
                f"a smaller evaluation batch_size ({ev.get('batch_size')})" if ev.get("batch_size") else "")

    def job_memory(self, stage: str, w):
        """The :class:`~llm_compression.memory_plan.Estimate` a job runs under (streamed or not by
        ``resources.streaming``), or None when the model's shape is unknown while planning.

        Raises:
            MemoryPlanError: the job does not fit the budget (``resources.memory``).
        """
        from .memory_plan import Budget, choose

        if self.model_shape() is None:
            return None
        name, in_memory, streamed, hint = self._job_estimates(stage, w)
        if not hasattr(self, "_budget"):
            self._budget = Budget.from_config(self.resources.memory)
        # a full-precision model can be spread over several GPUs (4-bit ones are placed by bitsandbytes' loader)
        spreads = ((stage == "heal" or (stage == "evaluate" and str(getattr(w, "evaluation", "")).startswith(
            ("ppl-", ZEROSHOT_EVALUATION)))) and in_memory.device_bytes and getattr(w, "quant", NO_QUANT) == NO_QUANT)
        return choose(name, in_memory, streamed, self.resources.streaming, self._budget, hint,
                      max_gpus=max(1, self.resources.gpus(stage)) if spreads else 1)

    def job_gpus(self, stage: str, w) -> int:
        """GPUs a job asks for (Snakemake ``gpu``, ``sbatch --gpus``): its plan's count for heal and evaluate
        jobs spread over several GPUs, else 1 (the stage requests GPUs only on CUDA)."""
        est = self.job_memory(stage, w)
        return est.gpus if est is not None else 1

    def job_streaming(self, stage: str, w) -> str:
        """``always`` or ``never``: the job's ``streaming`` resource, resolved from ``resources.streaming``."""
        policy = self.resources.streaming
        if policy != "auto":
            return policy
        est = self.job_memory(stage, w)
        return "always" if est is not None and est.streamed else "never"

    def job_mem_mb(self, stage: str, w, attempt: int = 1) -> int:
        """A job's Snakemake ``mem_mb``: the stage's configured ``mem_mb`` when set, else its planned peak plus
        the margin (:func:`llm_compression.memory_plan.request_mb`), else the stage constant; doubled per retry."""
        from .memory_plan import request_mb

        base = "evaluate" if stage == "generate" else stage
        if base not in self.resources.mem_mb_overridden:
            est = self.job_memory(stage, w)
            if est is not None:
                return request_mb(est, attempt)
        return self.resources.scaled(base, "mem_mb", attempt)

    def job_resources(self, stage: str) -> dict:
        """Keyword arguments for a rule's ``resources:``: the stage's (:meth:`ResourcePlan.snakemake_resources`)
        with ``mem_mb`` planned per job, for prune, quantize and evaluate the job's resolved ``streaming`` and, for
        heal and evaluate on CUDA, the job's planned GPU count (``gpu``: 1 unless the model must be spread over
        several, at most the stage's ``gpus``)."""
        base = "evaluate" if stage == "generate" else stage
        out = self.resources.snakemake_resources(base)
        out["mem_mb"] = lambda wildcards, attempt: self.job_mem_mb(stage, wildcards, attempt)
        if stage in ("prune", "quantize", "evaluate"):
            out["streaming"] = lambda wildcards: self.job_streaming(stage, wildcards)
        if base in ("heal", "evaluate") and out.get("gpu"):  # up to resources.stages.<stage>.gpus, as planned
            out["gpu"] = lambda wildcards: self.job_gpus(stage, wildcards)
        return out

    def memory_jobs(self) -> list[tuple[str, SimpleNamespace]]:
        """``(stage, wildcards)`` of every prune, heal, quantize and evaluate job of the plan."""
        jobs: dict[tuple, tuple] = {}
        for v in self.variants:
            p = v.pruning
            while p is not None and not p.is_dense:
                jobs[("prune", p.segment)] = ("prune", SimpleNamespace(pruning=p.segment))
                p = p.parent()
            seg = v.pruning.segment
            if v.healing != NO_HEALING:
                jobs[("heal", seg, v.healing)] = ("heal", SimpleNamespace(pruning=seg, healing=v.healing))
            if v.quant != NO_QUANT:
                jobs[("quantize", seg, v.healing, v.quant)] = (
                    "quantize", SimpleNamespace(pruning=seg, healing=v.healing, quant=v.quant))
            for e in variant_evaluations(v, self.evaluations):
                jobs[("evaluate", seg, v.healing, v.quant, e)] = (
                    "evaluate", SimpleNamespace(pruning=seg, healing=v.healing, quant=v.quant, evaluation=e))
        return list(jobs.values())

    def check_memory(self) -> list[tuple[str, object]]:
        """Plan every job's memory against the budget, before any job runs; returns ``(job name, estimate)``
        (empty when the model's shape is unknown). Config validation calls it.

        Raises:
            MemoryPlanError: the first job that does not fit (the estimate, the budget, what would fit).
        """
        if self.model_shape() is None:
            return []
        return [(self._job_estimates(stage, w)[0], self.job_memory(stage, w)) for stage, w in self.memory_jobs()]

    # report
    def figure_inputs(self, figure: str) -> list[str]:
        """Only the metrics files this figure reads, so asking for one figure builds only its ancestors.

        Raises:
            ValueError: unknown figure.
        """
        evals = figure_evaluations(figure, self.evaluations)
        return [self.path(metrics_path(self.model, v, e)) for v in self.variants
                for e in variant_evaluations(v, evals)]


__all__ = [
    "FIGURES", "FIGURE_READS", "PER_DATASET", "Plan", "STRUCTURED_METHOD", "entry_methods", "evaluation_options",
    "evaluation_params", "evaluations", "expand_grid", "figure_evaluations", "figure_names", "healing_names",
    "prune_params", "pruning_calibration", "pruning_options", "quantization_names", "variant_evaluations",
]
