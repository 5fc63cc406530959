from snakemake.exceptions import WorkflowError

from llm_compression.variants import FIGURE_CONSTRAINTS

FIGURE_NAMES = PLAN.figures
PLOT_FORMATS = CFG["report"]["plot_formats"]


def figure_targets():
    return PLAN.figure_targets()


def figure_inputs(wildcards):
    """Only the metrics files this figure reads, so asking for one figure builds only its ancestors."""
    try:
        return PLAN.figure_inputs(wildcards.figure)
    except ValueError as err:
        raise WorkflowError(str(err))


rule aggregate:
    input:
        metrics_files(),
    output:
        csv=report(R("summary.csv"), caption="../workflow/report/summary.rst", category="Tables"),
        md=report(R("summary.md"), caption="../workflow/report/summary.rst", category="Tables"),
    log:
        R("logs/aggregate/aggregate.log"),
    benchmark:
        R("benchmarks/aggregate/aggregate.tsv")
    threads: RESOURCES.threads("aggregate")
    resources:
        **stage_resources("aggregate"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/aggregate.py"


rule plot:
    input:
        figure_inputs,
    output:
        report(R("plots/{figure}.{ext}"), caption="../workflow/report/figure.rst", category="Figures",
               subcategory="{figure}"),
    wildcard_constraints:
        **FIGURE_CONSTRAINTS,
    log:
        R("logs/plot/{figure}.{ext}.log"),
    benchmark:
        R("benchmarks/plot/{figure}.{ext}.tsv")
    threads: RESOURCES.threads("plots")
    resources:
        **stage_resources("plots"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/plot.py"


rule demo:
    """Every variant's greedy generations of the same prompts, side by side."""
    input:
        demo_files(),
    output:
        report(R("demo/{model}.md"), category="Generation demo"),
    params:
        model=MODEL,
    log:
        R("logs/demo/{model}.log"),
    benchmark:
        R("benchmarks/demo/{model}.tsv")
    threads: RESOURCES.threads("plots")
    resources:
        **stage_resources("plots"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/demo.py"
