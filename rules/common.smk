# Targets, inputs and params of every rule come from the plan (llm_compression.planning); paths, patterns
# and wildcard constraints from llm_compression.variants. Nothing here imports torch.
from llm_compression import variants as _variants
from llm_compression.io import refresh_directory_timestamp
from llm_compression.planning import Plan
from llm_compression.variants import (
    NO_HEALING,
    NO_QUANT,
    WILDCARD_CONSTRAINTS,
    Pruning,
    Variant,
    artifact_dir,
    base_dir,
    demo_path,
    demo_report_path,
    healed_dir,
    metrics_path,
    pattern,
    pruned_dir,
)

PLAN = Plan(CFG)
RESULTS = PLAN.results
MODEL = PLAN.model
VARIANTS = PLAN.variants
EVALUATIONS = PLAN.evaluations


def checkpoint_dirs():
    """Every checkpoint folder of the plan (base, each pruning with its repeat chain, healed, quantized)."""
    return PLAN.checkpoint_dirs()


# runtime / mem_mb / cpus_per_task / gpu per stage, scaled with the model (config `resources:`);
# cluster executors turn them into scheduler requests, local runs use only threads.
RESOURCES = PLAN.resources


def _local_cores():
    """The cores of a local run (Snakemake's --cores): a timing job claims them all, so nothing runs beside it.
    None under a cluster executor (a job's allocation is its own) or when no core count is set (dry runs)."""
    try:
        return workflow.cores if workflow.local_exec else None
    except Exception:  # WorkflowError: no --cores given
        return None


LOCAL_CORES = _local_cores()


def stage_resources(stage):
    """Keyword arguments for a rule's `resources:` (see llm_compression.resources)."""
    return RESOURCES.snakemake_resources(stage)


def job_resources(stage):
    """A rule's `resources:` with mem_mb from each job's planned peak (llm_compression.memory_plan) and, for prune
    and evaluate, the job's resolved `streaming` (always/never)."""
    return PLAN.job_resources(stage)


def R(path):
    """Path under the results root."""
    return PLAN.path(path)


def output_pattern(stage):
    """The output pattern of a stage under the results root (llm_compression.variants.pattern)."""
    return R(pattern(stage, MODEL))


wildcard_constraints:
    **WILDCARD_CONSTRAINTS,


def variant_of(wildcards):
    return _variants.variant_of(wildcards.pruning, wildcards.healing, wildcards.quant)


def metrics_files():
    return PLAN.metrics_files()


def demo_files():
    return PLAN.demo_files()


def demo_targets():
    """The side-by-side generation demo, when prompts are configured."""
    return PLAN.demo_targets()


def final_targets():
    return PLAN.final_targets() + export_targets()


# A checkpoint folder is dated by Snakemake's marker file; a file rewritten inside it later (weights,
# config.json, compression.json) moves the marker forward, so its dependents become stale (README: rerun policy).
for _ckpt in checkpoint_dirs():
    refresh_directory_timestamp(_ckpt)
