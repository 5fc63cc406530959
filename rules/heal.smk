# Healing: a pruned checkpoint -> results/{model}/healed/{pruning}/{healing}/ (LoRA or knowledge distillation).
# The recipe of each healing name (config `healing:` section, defaults filled in) is a param, so changing
# any of its settings reruns exactly the healed checkpoints (and their quantized/evaluated descendants).
from llm_compression.config import healing_recipe


rule heal:
    input:
        unpack(lambda w: PLAN.heal_inputs(w.pruning, w.healing)),
    output:
        directory(output_pattern("healed")),
    params:
        recipe=lambda w: healing_recipe(CFG, w.healing),
        device=RESOURCES.device("heal"),
    log:
        R("logs/heal/{pruning}/{healing}.log"),
    benchmark:
        R("benchmarks/heal/{pruning}/{healing}.tsv")
    threads: RESOURCES.threads("heal")
    resources:
        **job_resources("heal"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/heal.py"
