# Variant naming, input functions and the final target list. Paths come from llm_compression.variants.
from llm_compression.io import refresh_directory_timestamp
from llm_compression.config import COST_EVALUATIONS, evaluation_options, evaluations, expand_grid, pruning_calibration, pruning_options
from llm_compression.prune import needs_calibration
from llm_compression.quantize import scheme_options
from llm_compression.resources import ResourcePlan
from llm_compression.variants import (
    NO_HEALING,
    NO_QUANT,
    Pruning,
    Variant,
    artifact_dir,
    base_dir,
    demo_path,
    demo_report_path,
    healed_dir,
    metrics_path,
    pruned_dir,
)

RESULTS = CFG["results"]
MODEL = CFG["model"]["name"]
VARIANTS = expand_grid(CFG)
EVALUATIONS = evaluations(CFG)


def checkpoint_dirs():
    """Every checkpoint folder of the plan (base, each pruning with its repeat chain, healed, quantized)."""
    dirs = {R(base_dir(MODEL))}
    for v in VARIANTS:
        p = v.pruning
        while p is not None and not p.is_dense:
            dirs.add(R(pruned_dir(MODEL, p)))
            p = p.parent()
        dirs.add(R(healed_dir(MODEL, v.pruning, v.healing)))
        dirs.add(R(artifact_dir(MODEL, v)))
    return sorted(dirs)


# runtime / mem_mb / cpus_per_task / gpu per stage, scaled with the model (config `resources:`);
# cluster executors turn them into scheduler requests, local runs use only threads.
RESOURCES = ResourcePlan(CFG)


def stage_resources(stage):
    """Keyword arguments for a rule's `resources:` (see llm_compression.resources)."""
    return RESOURCES.snakemake_resources(stage)


def R(path):
    """Path under the results root."""
    return f"{RESULTS}/{path}"


wildcard_constraints:
    pruning=r"dense|[a-z0-9-]+_[a-z0-9]+_[0-9.]+_x[0-9]+",
    healing=r"[a-z0-9-]+",
    quant=r"[a-z0-9-]+",
    evaluation=r"[a-z0-9-]+",


def variant_of(wildcards):
    return Variant(Pruning.from_segment(wildcards.pruning), wildcards.healing, wildcards.quant)


def metrics_files():
    return [R(metrics_path(MODEL, v, e)) for v in VARIANTS for e in EVALUATIONS]


def demo_files():
    return [R(demo_path(MODEL, v)) for v in VARIANTS]


def demo_targets():
    """The side-by-side generation demo, when prompts are configured."""
    return [R(demo_report_path(MODEL))] if CFG["report"]["demo"]["prompts"] else []


def final_targets():
    return metrics_files() + [R("summary.csv"), R("summary.md")] + figure_targets() + demo_targets()


# A checkpoint folder is dated by Snakemake's marker file; a file rewritten inside it later (weights,
# config.json, compression.json) moves the marker forward, so its dependents become stale (README: rerun policy).
for _ckpt in checkpoint_dirs():
    refresh_directory_timestamp(_ckpt)
