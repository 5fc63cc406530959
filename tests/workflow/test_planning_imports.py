"""Planning the workflow imports no deep-learning stack (issue 15: planning without torch)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "lm_eval", "datasets")

# what the Snakefile and rules/*.smk import, then what they run while building the DAG
PROBE = r"""
import json, sys
sys.path.insert(0, {src!r})
from llm_compression.config import ConfigError, read_config_yaml, validate_config, healing_recipe
from llm_compression.planning import Plan
from llm_compression.variants import WILDCARD_CONSTRAINTS, FIGURE_CONSTRAINTS, pattern
from llm_compression.io import refresh_directory_timestamp
from llm_compression.export import base_model_info, select_export_variants
raw = read_config_yaml({config!r})
cfg = validate_config(raw, base_dir={root!r})
plan = Plan(cfg)
targets = plan.final_targets()
for v in plan.variants:
    if not v.pruning.is_dense:
        plan.prune_params(v.pruning.segment)
        plan.prune_input(v.pruning.segment)
    for e in plan.evaluations:
        plan.evaluation_params(e)
for f in plan.figures:
    plan.figure_inputs(f)
select_export_variants(cfg["report"]["export"], plan.variants)
base_model_info(cfg["model"]["source"])
plan.checkpoint_dirs()
print(json.dumps({{"heavy": [m for m in {heavy!r} if m in sys.modules], "targets": len(targets)}}))
"""


def _probe(config: Path) -> dict:
    code = PROBE.format(src=str(ROOT / "src"), config=str(config), root=str(ROOT), heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_planning_the_default_config_imports_no_heavy_library():
    res = _probe(ROOT / "config.yaml")
    assert res["targets"] > 0
    assert res["heavy"] == [], f"planning imported {res['heavy']}"


def test_planning_a_structured_and_healing_config_imports_no_heavy_library():
    for name in ("structured.yaml", "healing.yaml", "evaluation.yaml"):
        res = _probe(ROOT / "config" / name)
        assert res["heavy"] == [], f"{name}: planning imported {res['heavy']}"


@pytest.mark.slow  # > 20 s on 2 loaded cores (--durations)
def test_the_probe_detects_a_heavy_import():
    """The check can fail: importing the science layer puts torch in sys.modules."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r}); import llm_compression.prune; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True"


def test_the_memory_job_imports_no_torch(tiny_checkpoint):
    """The memory evaluation measures in a fresh child process; the job's own process (what the evaluate
    script imports and runs for it) never imports torch, so the job does not pay the import twice."""
    probe = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'src')!r})\n"
        "from llm_compression.evaluate import METRICS_SCHEMA, evaluate_artifact, summary_line\n"
        "from llm_compression.io import write_json_atomic\n"
        "from llm_compression.models import pick_device\n"
        "from llm_compression.plan_checks import check_evaluation_job\n"
        "from llm_compression.runtime import finish_job, setup_job\n"
        "setup_job(None, None)\n"
        f"rec = evaluate_artifact({str(tiny_checkpoint)!r}, 'memory', device='auto', job_threads=1, seqlen=16)\n"
        "assert rec['metrics']['peak_memory_bytes'] > 0 and rec['runtime']['device'] == 'cpu'\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
