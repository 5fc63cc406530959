# Healing: a pruned checkpoint -> results/{model}/healed/{pruning}/{healing}/ (LoRA or knowledge distillation).
# The recipe of each healing name (config `healing:` section, defaults filled in) is a param, so changing
# any of its settings reruns exactly the healed checkpoints (and their quantized/evaluated descendants).
from llm_compression.config import healing_recipe


def heal_input(wildcards):
    recipe = healing_recipe(CFG, wildcards.healing)
    inputs = {"pruned": R(pruned_dir(MODEL, Pruning.from_segment(wildcards.pruning)))}
    if recipe["method"] == "kd":
        teacher = recipe["kd"]["teacher"]
        inputs["teacher"] = R(base_dir(MODEL)) if teacher == "base" else teacher
    if recipe["data"]["path"]:
        inputs["data"] = recipe["data"]["path"]
    return inputs


rule heal:
    input:
        unpack(heal_input),
    output:
        directory(R(MODEL + "/healed/{pruning}/{healing}")),
    params:
        recipe=lambda w: healing_recipe(CFG, w.healing),
        device=RESOURCES.device("heal"),
    log:
        R("logs/heal/{pruning}/{healing}.log"),
    benchmark:
        R("benchmarks/heal/{pruning}/{healing}.tsv")
    threads: RESOURCES.threads("heal")
    resources:
        **stage_resources("heal"),
    conda:
        "../envs/llm-compression.yaml"
    script:
        "../workflow/scripts/heal.py"
