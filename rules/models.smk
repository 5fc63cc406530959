rule import_model:
    output:
        directory(R(base_dir(MODEL))),
    params:
        source=CFG["model"]["source"],
        dtype=CFG["model"]["dtype"],
    log:
        R("logs/import_model/" + MODEL + ".log"),
    benchmark:
        R("benchmarks/import_model/" + MODEL + ".tsv")
    threads: RESOURCES.threads("import")
    resources:
        **stage_resources("import"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/import_model.py"
