# llm-compression workflow: prune -> (heal) -> quantize -> evaluate -> aggregate -> plots.
# The DAG lives in rules/*.smk; algorithms and measurements live in src/llm_compression/.
import os
import sys
from pathlib import Path

_SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, _SRC)
# jobs (script: directives, cluster jobs) import this checkout's library, not another installed copy
os.environ["PYTHONPATH"] = os.pathsep.join([_SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

from llm_compression.config import ConfigError, default_results_dir, read_config_yaml, validate_config  # noqa: E402

# `--configfile other.yaml` replaces config.yaml as a whole (no silent merge of the two grids).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


if "results" not in config:  # another config file gets its own folder (see default_results_dir)
    config["results"] = default_results_dir(workflow.configfiles, os.getcwd())

try:
    # Snakemake's own YAML reading keeps the last of two equal keys silently; refuse them instead
    for _cf in workflow.configfiles:
        if str(_cf).endswith((".yaml", ".yml")):
            read_config_yaml(_cf)
    CFG = validate_config(config, base_dir=os.getcwd())
except ConfigError as err:
    sys.stderr.write(f"\nllm-compression: {err}\n\n")
    raise SystemExit(1)
for _w in CFG.get("_warnings", []):
    sys.stderr.write(f"llm-compression: warning: {_w}\n")


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/prune.smk"
include: "rules/heal.smk"
include: "rules/quantize.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/export.smk"


rule all:
    input:
        final_targets(),
    default_target: True
