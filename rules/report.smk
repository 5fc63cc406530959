rule aggregate:
    input:
        metrics_files(),
    output:
        report(R("summary.csv"), caption="../workflow/report/summary.rst", category="Tables"),
    log:
        R("logs/aggregate/aggregate.log"),
    benchmark:
        R("benchmarks/aggregate/aggregate.tsv")
    threads: RESOURCES.threads("aggregate")
    resources:
        **stage_resources("aggregate"),
    script:
        "../workflow/scripts/aggregate.py"


rule plot_perplexity_vs_nonzero:
    input:
        R("summary.csv"),
    output:
        report(R("plots/perplexity_vs_nonzero.{ext}"), caption="../workflow/report/perplexity_vs_nonzero.rst",
               category="Figures"),
    wildcard_constraints:
        ext="png|svg|pdf",
    log:
        R("logs/plots/perplexity_vs_nonzero.{ext}.log"),
    benchmark:
        R("benchmarks/plots/perplexity_vs_nonzero.{ext}.tsv")
    threads: RESOURCES.threads("plots")
    resources:
        **stage_resources("plots"),
    script:
        "../workflow/scripts/plot_perplexity_vs_nonzero.py"
