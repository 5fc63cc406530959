"""Aggregate table, summary pivot and every figure from fixture metrics files; and the DAG asks for
only a figure's own ancestors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llm_compression.report.plots import FIGURES, draw, figure_evaluations, figure_names, pareto_front, summary_markdown
from llm_compression.report.table import build_table
from llm_compression.variants import Pruning, Variant, metrics_path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = [Variant(Pruning("dense")), Variant(Pruning("dense"), quant="nf4-dq")] + [
    Variant(Pruning(m, "unstructured", r, rep), quant=q)
    for m in ("magnitude", "wanda") for r in (0.3, 0.5) for rep in (1, 2) for q in ("none", "nf4-dq")
]


def fake_record(v: Variant, evaluation: str) -> dict:
    p = v.pruning
    keep = (1 - p.ratio) ** (p.repeat if not p.is_dense else 0)
    q = 0.3 if v.quant != "none" else 1.0
    proto = {"dataset": evaluation[4:], "split": "test", "seqlen": 512, "windows": 8, "scored_tokens": 4088,
             "join": "j", "limit_tokens": 4096, "preset": "custom"}
    if evaluation.startswith("ppl-"):
        base = 60.0 if evaluation == "ppl-ptb" else 30.0
        metrics = {"perplexity": base / keep ** (3 if p.method == "magnitude" else 1.5) * (1.2 if q < 1 else 1),
                   "nll_sum": 1.0}
    else:
        proto = {"what": "cost"}
        metrics = {"parameters": 134_515_008, "nonzero_parameters": 28e6 + 106e6 * keep, "sparsity": 1 - keep,
                   "disk_bytes": 538e6 * q, "gmacs": 70.0, "peak_memory_bytes": 1.1e9 * q,
                   "decode_tokens_per_second_median": 40.0, "prefill_seconds_median": 1.0 / q}
    return {"model": "m", "variant": v.row(), "evaluation": evaluation, "metrics": metrics, "protocol": proto}


@pytest.fixture
def metric_files(tmp_path):
    files = []
    for v in VARIANTS:
        for e in ("ppl-ptb", "ppl-wikitext2", "cost"):
            f = tmp_path / metrics_path("m", v, e)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(fake_record(v, e)))
            files.append(f)
    return files


def test_aggregate_table(metric_files):
    df = build_table(metric_files)
    assert len(df) == len(VARIANTS) * (2 + 8)  # 2 perplexities + 8 cost metrics ("nll_sum" is left out)
    row = df[(df.variant == "wanda_unstructured_0.5_x2") & (df.metric == "sparsity")]
    assert row.value.iloc[0] == pytest.approx(0.75)
    assert set(df[df.metric == "perplexity"].dataset) == {"ptb", "wikitext2"}
    assert df[df.metric == "perplexity"].protocol.str.contains("cap=4096").all()
    with pytest.raises(ValueError, match="duplicate metrics record"):
        build_table(metric_files + metric_files[:1])
    with pytest.raises(ValueError, match="no metrics files"):
        build_table([])


def test_summary_markdown_groups_by_method_and_sorts_by_ratio(metric_files):
    md = summary_markdown(build_table(metric_files))
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "variant" not in line]
    assert rows[0] == "dense" and rows[1] == "dense+nf4-dq"
    mag = [r for r in rows if r.startswith("magnitude")]
    assert mag == ["magnitude_unstructured_0.3_x1", "magnitude_unstructured_0.3_x1+nf4-dq",
                   "magnitude_unstructured_0.3_x2", "magnitude_unstructured_0.3_x2+nf4-dq",
                   "magnitude_unstructured_0.5_x1", "magnitude_unstructured_0.5_x1+nf4-dq",
                   "magnitude_unstructured_0.5_x2", "magnitude_unstructured_0.5_x2+nf4-dq"]
    assert "ppl_ptb" in md and "decode_tokens_per_second_median" in md
    # headers carry the unit their cells are printed in (bytes are printed in MB, parameters in M)
    header = next(line for line in md.splitlines() if line.startswith("| variant"))
    assert "peak_memory (MB)" in header and "disk (MB)" in header and "_bytes" not in header
    assert "nonzero_parameters (M)" in header
    dense = next(line for line in md.splitlines() if line.startswith("| dense |"))
    assert " MB" not in dense and " M |" not in dense


@pytest.mark.parametrize("figure", figure_names(["ppl-ptb", "ppl-wikitext2", "cost"]))
@pytest.mark.parametrize("ext", ["png", "svg"])
def test_each_figure_renders(metric_files, tmp_path, figure, ext):
    out = tmp_path / f"{figure}.{ext}"
    draw(figure, build_table(metric_files), out)
    assert out.stat().st_size > 5_000
    if ext == "png":
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_figure():
    with pytest.raises(ValueError, match="unknown figure 'pie'; valid for this config: perplexity_vs_nonzero"):
        figure_evaluations("pie", ["ppl-ptb", "cost"])


def test_pareto_front_with_tolerance():
    pts = [(100.0, 10.0, "a"), (100.0004, 50.0, "b"), (50.0, 20.0, "c"), (50.2, 30.0, "d"), (200.0, 9.0, "e")]
    assert [p[2] for p in pareto_front(pts)] == ["c", "a", "e"]


def job_counts(out: str) -> dict:
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\s*total", out, re.S)
    return {line.split()[0]: int(line.split()[1]) for line in m.group(1).splitlines() if line.strip()}


def test_one_figure_schedules_only_its_ancestors(tmp_path, tiny_checkpoint):
    cfg = {
        "results": str(tmp_path / "results"),
        "model": {"name": "tiny", "source": str(tiny_checkpoint)},
        "grid": {"pruning": [{"method": "magnitude", "ratios": [0.5]}], "quantization": ["none", "nf4-dq"]},
        "evaluation": {"perplexity": {"seqlen": 128,  # the tiny model's context is 256 tokens
                                      "datasets": {"ptb": {}, "c4": {"split": "validation", "path": str(tiny_checkpoint)}}},
                       # enabled, but the bubble plot does not draw them: they must not be planned for it
                       "memory": {"enabled": True, "seqlen": 64}, "latency": {"enabled": True, "prompt_tokens": 16}},
    }
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(cfg))
    target = str(tmp_path / "results" / "plots" / "perplexity_vs_parameters_ptb.png")
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(f), "--cores", "1", target],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    counts = job_counts(p.stdout + p.stderr)
    # 4 variants x (ppl-ptb + cost): no c4 perplexity, no memory or latency, no aggregate, no other figure
    assert counts == {"import_model": 1, "prune": 1, "quantize": 2, "evaluate": 8, "plot": 1}, counts
    assert "ppl-c4" not in p.stdout and "latency.json" not in p.stdout and "memory.json" not in p.stdout
