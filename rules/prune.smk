rule prune:
    input:
        lambda w: PLAN.prune_input(w.pruning),
    output:
        directory(output_pattern("pruned")),
    params:
        prune=lambda w: PLAN.prune_params(w.pruning),
        device=RESOURCES.device("prune"),
    log:
        R("logs/prune/{pruning}.log"),
    benchmark:
        R("benchmarks/prune/{pruning}.tsv")
    threads: RESOURCES.threads("prune")
    resources:
        **job_resources("prune"),  # mem_mb planned per job; streaming: how, not what (switching it reruns nothing)
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/prune.py"
