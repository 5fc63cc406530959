rule quantize:
    input:
        lambda w: PLAN.quantize_input(w.pruning, w.healing),
    output:
        directory(output_pattern("quantized")),
    params:
        scheme=lambda w: w.quant,
        options=lambda w: PLAN.quantize_params(w.quant),
        device=RESOURCES.device("quantize"),
    log:
        R("logs/quantize/{pruning}/{healing}/{quant}.log"),
    benchmark:
        R("benchmarks/quantize/{pruning}/{healing}/{quant}.tsv")
    threads: RESOURCES.threads("quantize")
    resources:
        **job_resources("quantize"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/quantize.py"
