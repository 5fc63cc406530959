# Hub-ready exports: a variant's checkpoint + its metrics + a model card (README.md with Hugging Face
# front matter) in results/{model}/export/{pruning}/{healing}/{quant}/. Which variants: config
# `report.export` ('all' or labels; default none). Nothing is uploaded.
from llm_compression.export import base_model_info, select_export_variants
from llm_compression.planning import variant_evaluations
from llm_compression.variants import export_dir

EXPORT_VARIANTS = select_export_variants(CFG["report"]["export"], VARIANTS)
# base model id and license for the card's front matter (no paths: a local source contributes only what its card says)
EXPORT_BASE = base_model_info(CFG["model"]["source"])


def export_targets():
    return [R(export_dir(MODEL, v)) for v in EXPORT_VARIANTS]


def export_input(wildcards):
    v = variant_of(wildcards)
    return {"checkpoint": R(artifact_dir(MODEL, v)),
            "metrics": [R(metrics_path(MODEL, v, e)) for e in variant_evaluations(v, EVALUATIONS)]}


rule export:
    input:
        unpack(export_input),
    output:
        directory(output_pattern("export")),
    params:
        model=MODEL,
        variant=lambda w: variant_of(w).row(),
        base=EXPORT_BASE,
    log:
        R("logs/export/{pruning}/{healing}/{quant}.log"),
    benchmark:
        R("benchmarks/export/{pruning}/{healing}/{quant}.tsv")
    threads: 1
    resources:
        **stage_resources("import"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/export.py"
