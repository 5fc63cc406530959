def quantize_input(wildcards):
    return R(healed_dir(MODEL, Pruning.from_segment(wildcards.pruning), wildcards.healing))


rule quantize:
    input:
        quantize_input,
    output:
        directory(R(MODEL + "/quantized/{pruning}/{healing}/{quant}")),
    params:
        scheme=lambda w: w.quant,
        options=lambda w: scheme_options(w.quant, CFG["quantize"]),
        device=RESOURCES.device("quantize"),
    log:
        R("logs/quantize/{pruning}/{healing}/{quant}.log"),
    benchmark:
        R("benchmarks/quantize/{pruning}/{healing}/{quant}.tsv")
    threads: RESOURCES.threads("quantize")
    resources:
        **stage_resources("quantize"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/quantize.py"
