def evaluation_input(wildcards):
    return PLAN.evaluation_input(wildcards.pruning, wildcards.healing, wildcards.quant)


rule evaluate:
    input:
        evaluation_input,
    output:
        output_pattern("metrics"),
    params:
        evaluation=lambda w: PLAN.evaluation_params(w.evaluation, variant_of(w)),
        variant=lambda w: variant_of(w).row(),
        model=MODEL,
        device=RESOURCES.device("evaluate"),
    log:
        R("logs/evaluate/{pruning}/{healing}/{quant}/{evaluation}.log"),
    benchmark:
        R("benchmarks/evaluate/{pruning}/{healing}/{quant}/{evaluation}.tsv")
    threads: lambda w: PLAN.evaluation_threads(w.evaluation, local_cores=LOCAL_CORES)
    resources:
        **job_resources("evaluate"),  # mem_mb planned per job; streaming: how, not what (switching it reruns nothing)
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/evaluate.py"


rule generate:
    """Greedy continuations of the configured demo prompts by one variant."""
    input:
        evaluation_input,
    output:
        output_pattern("demo"),
    params:
        prompts=lambda w: list(CFG["report"]["demo"]["prompts"]),
        max_new_tokens=CFG["report"]["demo"]["max_new_tokens"],
        variant=lambda w: variant_of(w).row(),
        model=MODEL,
        device=RESOURCES.device("evaluate"),
    log:
        R("logs/generate/{pruning}/{healing}/{quant}.log"),
    benchmark:
        R("benchmarks/generate/{pruning}/{healing}/{quant}.tsv")
    threads: RESOURCES.threads("evaluate")
    resources:
        **job_resources("generate"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/generate.py"
