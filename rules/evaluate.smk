from llm_compression.config import parse_perplexity_evaluation


def evaluation_input(wildcards):
    return R(artifact_dir(MODEL, variant_of(wildcards)))


def evaluation_params(wildcards):
    """Everything that changes a metric's value is a param, so a config change reruns exactly it."""
    ev = wildcards.evaluation
    if ev.startswith("ppl-"):
        ppl = CFG["evaluation"]["perplexity"]
        ds, preset = parse_perplexity_evaluation(ev, default_preset=ppl["presets"][0])
        if ds not in ppl["datasets"] or preset not in ppl["presets"]:
            raise ValueError(f"evaluation {ev!r}: dataset {ds!r} / preset {preset!r} is not configured; "
                             f"datasets: {list(ppl['datasets'])}, presets: {ppl['presets']}")
        opts = {k: v for k, v in ppl.items() if k not in ("datasets", "presets")}
        d = {k: v for k, v in ppl["datasets"][ds].items() if k != "skip_if_missing"}
        return {"kind": "perplexity", "dataset": ds, "preset": preset, **d, **opts}
    if ev == "zeroshot":
        zs = CFG["evaluation"]["zeroshot"]
        return {"kind": "zeroshot", **zs}
    if ev in COST_EVALUATIONS:
        return {"kind": ev, **evaluation_options(CFG, ev)}
    raise ValueError(f"unknown evaluation {ev!r}; valid: ppl-<dataset>-<preset>, zeroshot, {', '.join(COST_EVALUATIONS)}")


def evaluation_threads(wildcards):
    """Latency is measured with the configured thread count (recorded in its JSON); others use the stage's."""
    if wildcards.evaluation == "latency":
        return CFG["evaluation"]["latency"]["threads"]
    return RESOURCES.threads("evaluate")


rule evaluate:
    input:
        evaluation_input,
    output:
        R(MODEL + "/metrics/{pruning}/{healing}/{quant}/{evaluation}.json"),
    params:
        evaluation=evaluation_params,
        variant=lambda w: variant_of(w).row(),
        model=MODEL,
        device=RESOURCES.device("evaluate"),
    log:
        R("logs/evaluate/{pruning}/{healing}/{quant}/{evaluation}.log"),
    benchmark:
        R("benchmarks/evaluate/{pruning}/{healing}/{quant}/{evaluation}.tsv")
    threads: evaluation_threads
    resources:
        **stage_resources("evaluate"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/evaluate.py"


rule generate:
    """Greedy continuations of the configured demo prompts by one variant."""
    input:
        evaluation_input,
    output:
        R(MODEL + "/demo/{pruning}/{healing}/{quant}.json"),
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
        **stage_resources("evaluate"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/generate.py"
