rule aggregate:
    input:
        metrics_files(),
    output:
        report(R("summary.csv"), caption="../workflow/report/summary.rst", category="Tables"),
    log:
        R("logs/aggregate/aggregate.log"),
    benchmark:
        R("benchmarks/aggregate/aggregate.tsv")
    threads: 1
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
    threads: 1
    script:
        "../workflow/scripts/plot_perplexity_vs_nonzero.py"


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
    threads: 1
    script:
        "../workflow/scripts/demo.py"
