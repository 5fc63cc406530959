def evaluation_input(wildcards):
    return R(artifact_dir(MODEL, variant_of(wildcards)))


def evaluation_params(wildcards):
    """Everything that changes a metric's value is a param, so a config change reruns exactly it."""
    ev = wildcards.evaluation
    if ev.startswith("ppl-"):
        ds = ev[len("ppl-"):]
        ppl = CFG["evaluation"]["perplexity"]
        if ds not in ppl["datasets"]:
            raise ValueError(f"evaluation {ev!r}: dataset {ds!r} is not configured; valid: {list(ppl['datasets'])}")
        opts = {k: v for k, v in ppl.items() if k != "datasets"}
        return {"kind": "perplexity", "dataset": ds, **ppl["datasets"][ds], **opts}
    if ev == "cost":
        return {"kind": "cost"}
    raise ValueError(f"unknown evaluation {ev!r}; valid: ppl-<dataset>, cost")


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
    threads: RESOURCES.threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    script:
        "../workflow/scripts/evaluate.py"
