def prune_parent(wildcards):
    parent = Pruning.from_segment(wildcards.pruning).parent()
    return R(pruned_dir(MODEL, parent) if parent else base_dir(MODEL))


def prune_params(wildcards):
    p = Pruning.from_segment(wildcards.pruning)
    params = {"method": p.method, "level": p.level, "ratio": p.ratio, "repeat": p.repeat,
              **pruning_options(CFG, p)}
    if needs_calibration(p.method):  # only calibrated methods rerun when calibration changes
        params["calibration"] = pruning_calibration(CFG, p)
    return params


rule prune:
    input:
        prune_parent,
    output:
        directory(R(MODEL + "/pruned/{pruning}")),
    params:
        prune=prune_params,
        device=RESOURCES.device("prune"),
    log:
        R("logs/prune/{pruning}.log"),
    benchmark:
        R("benchmarks/prune/{pruning}.tsv")
    threads: RESOURCES.threads("prune")
    resources:
        **stage_resources("prune"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/prune.py"
