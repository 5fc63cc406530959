"""The workflow on SLURM through `snakemake --profile slurm` (profiles/slurm installed as the named profile).

- ``test_grid_runs_on_real_slurm`` (markers ``slurm``, ``slow``): starts a real one-node SLURM
  cluster with ``scripts/slurm-local.sh`` (root only; skipped otherwise), runs a tiny random Llama
  through dense / magnitude 0.5 / Wanda 0.5 -> PTB perplexity + cost -> summary.csv -> plot, and
  checks that every job went through SLURM (``sacct -c`` reads the jobcomp file, ``squeue``) and
  that the table is complete.
- GPU requests cannot run on that cluster (it has no GPU), so they are checked by what the SLURM
  plugin really passes to ``sbatch``: the profile runs with a stand-in ``sbatch`` first on PATH
  that records its arguments and refuses the job, and by a dry run's per-job resources.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles" / "slurm"
SNAKEFILE = ROOT / "Snakefile"
CLUSTER_SCRIPT = ROOT / "scripts" / "slurm-local.sh"


# ----------------------------------------------------------------------------------------- helpers
def _make_tiny_llama(out: Path) -> Path:
    """A random 2-layer Llama (hidden 64, GQA 8/2 heads) with SmolLM2's real tokenizer, saved to ``out``."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llm_compression.models import ModelSourceError, resolve_source

    try:
        res = resolve_source("embedded:smollm2-135m")
    except ModelSourceError as e:
        pytest.skip(f"needs the embedded tokenizer: {e}")
    tok = AutoTokenizer.from_pretrained(res.path, gguf_file=res.gguf_file)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def _write_config(path: Path, model_dir: Path, results: Path, *, device="cpu", quant=("none",), stages=None) -> Path:
    small = {"runtime": {"base": 10, "per_b": 0}, "mem_mb": {"base": 1500, "per_b": 0}, "cpus": 1}
    cfg = {
        "results": str(results),
        "device": device,
        "model": {"name": "tiny", "source": str(model_dir), "dtype": "float32"},
        "grid": {
            "dense": True,
            "pruning": [
                {"method": "magnitude", "level": "unstructured", "ratios": [0.5], "repeats": [1]},
                {"method": "wanda", "level": "unstructured", "ratios": [0.5], "repeats": [1]},
            ],
            "healing": ["none"],
            "quantization": list(quant),
        },
        "calibration": {"corpus": "lambada", "split": "test", "samples": 4, "seqlen": 64, "seed": 0},
        "evaluation": {
            "perplexity": {"seqlen": 128, "max_tokens": 1024, "batch_size": 4, "datasets": {"ptb": {"split": "test"}}},
            "cost": True,
        },
        "resources": {"stages": stages if stages is not None else
                      {s: dict(small) for s in ("import", "prune", "quantize", "evaluate", "aggregate", "plots")}},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _snakemake(args, cwd, env=None, timeout=900):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return r.returncode == 0 and any(state in r.stdout for state in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


# ------------------------------------------------------------------------------ real SLURM cluster
@pytest.fixture(scope="module")
def local_slurm():
    """A running one-node SLURM cluster (started by scripts/slurm-local.sh, stopped again if we started it)."""
    if os.geteuid() != 0:
        pytest.skip("starting the local SLURM cluster needs root")
    pytest.importorskip("snakemake_executor_plugin_slurm")
    was_up = _slurm_up()
    if not was_up:
        if not shutil.which("apt-get") and not shutil.which("slurmctld"):
            pytest.skip("SLURM is not installed and apt-get is unavailable")
        t0 = time.perf_counter()
        r = subprocess.run(["bash", str(CLUSTER_SCRIPT)], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            if not shutil.which("slurmctld"):
                pytest.skip(f"could not install SLURM (apt): {r.stderr[-1500:]}")
            pytest.fail(f"scripts/slurm-local.sh failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        print(f"\nlocal SLURM started in {time.perf_counter() - t0:.1f}s\n{r.stdout[-600:]}")
    yield
    if not was_up:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def _sacct_jobcomp(run_id: str) -> list[dict]:
    """Jobs of one Snakemake run from the jobcomp file (no slurmdbd needed): ``sacct -c``."""
    fmt = "JobID,JobName%60,State,Partition,NCPUS,Elapsed"
    r = subprocess.run(["sacct", "-c", "-n", "-P", "-o", fmt, "-S", "now-2hours"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    keys = fmt.replace("%60", "").split(",")
    rows = [dict(zip(keys, line.split("|"))) for line in r.stdout.splitlines() if line.strip()]
    return [row for row in rows if row["JobName"] == run_id]


@pytest.mark.slurm
@pytest.mark.slow
def test_grid_runs_on_real_slurm(local_slurm, tiny_model, tmp_path):
    from llm_compression.config import evaluations, expand_grid, load_config_file

    results = tmp_path / "results"
    cfgfile = _write_config(tmp_path / "config.yaml", tiny_model, results)
    cfg = load_config_file(cfgfile)
    variants = expand_grid(cfg)
    evals = evaluations(cfg)
    assert len(variants) == 3 and evals == ["ppl-ptb-sparsegpt", "cost"]

    # the table and one figure (the other figures need no other jobs than these, and cost CI time)
    targets = [str(results / "summary.csv"), str(results / "plots" / "perplexity_vs_nonzero.png")]
    # the profile as users install it (make slurm-profile) and name it: --profile slurm
    xdg = tmp_path / "xdg"
    inst = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_profile.py"), str(PROFILE), "--name",
                           "slurm"], env={**os.environ, "XDG_CONFIG_HOME": str(xdg)}, capture_output=True, text=True,
                          timeout=60)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg)}
    env.pop("SNAKEMAKE_PROFILE", None)
    dry = _snakemake([*targets, "-n", "--profile", "slurm", "--configfile", str(cfgfile)], cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    stats = dict(re.findall(r"^([a-z_]+)\s+(\d+)$", dry.stdout, re.M))
    n_jobs = int(stats.pop("total"))
    assert n_jobs == 1 + 2 + 3 * 2 + 1 + 1, stats  # import, 2 prunes, 6 evaluations, aggregate, plot

    t0 = time.perf_counter()
    # --retries 0: a job that fails is a test failure, not a silent resubmission
    run = _snakemake([*targets, "--profile", "slurm", "--configfile", str(cfgfile), "--retries", "0"], cwd=tmp_path, env=env,
                     timeout=1200)
    wall = time.perf_counter() - t0
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    assert "Using profiles slurm" in log or "Using profile slurm" in log, log[:2000]
    print(f"\nsnakemake --profile slurm: {n_jobs} SLURM jobs in {wall:.1f}s")

    # (a) the jobs went through SLURM: jobcomp records, squeue (MinJobAge keeps them), per-job logs
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert len(submitted) == n_jobs, log[-4000:]
    jobs = _sacct_jobcomp(run_id)
    print("sacct -c (jobcomp) for run", run_id)
    for j in jobs:
        print("  " + "  ".join(f"{k}={v}" for k, v in j.items()))
    assert sorted(j["JobID"] for j in jobs) == sorted(submitted)
    assert all(j["State"] == "COMPLETED" for j in jobs), jobs
    assert all(j["Partition"] == "debug" for j in jobs), jobs
    sq = subprocess.run(["squeue", "-h", "-t", "all", "-n", run_id, "-o", "%i %T %k"], capture_output=True,
                        text=True, timeout=60)
    print("squeue -t all -n", run_id, "\n" + sq.stdout)
    comments = sq.stdout
    for rule in ("import_model", "prune", "evaluate", "aggregate", "plot"):
        assert f"rule_{rule}" in comments, (rule, comments)
        assert list((tmp_path / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log")), rule

    # (b) summary.csv is complete: every variant x evaluation, finite values
    with open(results / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = {(r["variant"], r["evaluation"]) for r in rows}
    want = {(v.label, e) for v in variants for e in evals}
    assert got == want, (sorted(got), sorted(want))
    ppl = {r["variant"]: float(r["value"]) for r in rows if r["metric"] == "perplexity"}
    assert set(ppl) == {v.label for v in variants}
    assert all(math.isfinite(x) and x > 1 for x in ppl.values()), ppl
    assert (results / "plots" / "perplexity_vs_nonzero.png").stat().st_size > 0


# ------------------------------------------------------------------- GPU requests (no GPU needed)
FAKE_SBATCH = """#!/bin/sh
# stand-in for sbatch: record the arguments the SLURM plugin passes, then refuse the job
printf '%s\\n' "$*" >> "$FAKE_SBATCH_LOG"
echo "sbatch: error: stand-in sbatch of tests/workflow/test_slurm.py" >&2
exit 1
"""


def _sbatch_calls(tmp_path, tiny_model, *, device, stages, extra=()):
    """Run the profile against a stand-in sbatch; return {rule: sbatch argument string} of submitted jobs."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    work = tmp_path / f"work-{device}-{len(extra)}"
    work.mkdir()
    results = work / "results"
    # the base checkpoint already exists, so prune / quantize / evaluate jobs are ready at once
    shutil.copytree(tiny_model, results / "tiny" / "base")
    cfgfile = _write_config(work / "config.yaml", tiny_model, results, device=device, quant=("none", "nf4"),
                            stages=stages)
    fakebin = work / "bin"
    fakebin.mkdir()
    (fakebin / "sbatch").write_text(FAKE_SBATCH)
    (fakebin / "sbatch").chmod(0o755)
    calls = work / "sbatch_calls.txt"
    env = {**os.environ, "PATH": f"{fakebin}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_LOG": str(calls)}
    run = _snakemake(["--profile", str(PROFILE), "--configfile", str(cfgfile), "--retries", "0", "--keep-going",
                      *extra], cwd=work, env=env, timeout=300)
    assert run.returncode != 0, "the stand-in sbatch refuses every job"
    assert calls.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    out = {}
    for line in calls.read_text().splitlines():
        rule = re.search(r"--comment '?rule_([a-z_]+?)(?:_wildcards_|'| )", line).group(1)
        out.setdefault(rule, []).append(line)
    return out


def _flags(call: str) -> dict:
    head = call.split("--wrap")[0]
    return {
        "gpus": re.findall(r"--gpus=(\S+)", head),
        "gres": re.findall(r"--gres=(\S+)", head),
        "cpus": re.findall(r"--cpus-per-task=(\d+)", head),
        "mem": re.findall(r"--mem (\d+)", head),
        "time": re.findall(r"-t '?(\d+)", head),
        "partition": re.findall(r"-p '?(\w+)", head),
    }


@pytest.mark.slow
def test_sbatch_requests_gpus_for_gpu_stages_only(tmp_path, tiny_model):
    """device cuda: prune / quantize / evaluate ask for --gpus=1; a GPU model and --gres come from set-resources."""
    stages = {"prune": {"cpus": 2, "mem_mb": {"base": 1000, "per_b": 0}},
              "evaluate": {"gpus": 1, "runtime": {"base": 7, "per_b": 0}}}
    calls = _sbatch_calls(tmp_path, tiny_model, device="cuda", stages=stages)
    assert set(calls) == {"prune", "quantize", "evaluate"}, calls
    for rule, lines in calls.items():
        for line in lines:
            f = _flags(line)
            assert f["gpus"] == ["1"] and f["gres"] == [], (rule, line)
            assert f["partition"] == ["debug"], line
    prune = _flags(calls["prune"][0])
    assert prune["cpus"] == ["2"] and prune["mem"] == ["1000"], calls["prune"][0]
    assert _flags(calls["evaluate"][0])["time"] == ["7"], calls["evaluate"][0]

    # site settings from the profile / command line: a GPU model, or --gres instead of --gpus
    calls = _sbatch_calls(tmp_path, tiny_model, device="cuda", stages=stages,
                          extra=["--set-resources", "prune:gpu_model=h100", "evaluate:gpu=0", "evaluate:gres=gpu:2"])
    assert all(_flags(c)["gpus"] == ["h100:1"] for c in calls["prune"]), calls["prune"]
    assert all(_flags(c)["gres"] == ["gpu:2"] and _flags(c)["gpus"] == [] for c in calls["evaluate"]), calls["evaluate"]


@pytest.mark.slow
def test_sbatch_mem_is_each_jobs_planned_peak(tmp_path, tiny_model):
    """Without a configured mem_mb, each job's sbatch --mem is its own planned peak plus the margin
    (llm_compression.memory_plan), per job: magnitude and Wanda pruning differ (Wanda holds calibration
    activations); a stage with mem_mb configured keeps it."""
    from llm_compression.config import load_config_file
    from llm_compression.planning import Plan

    stages = {"prune": {"cpus": 1}, "quantize": {"cpus": 1}, "evaluate": {"mem_mb": {"base": 1234, "per_b": 0}}}
    calls = _sbatch_calls(tmp_path, tiny_model, device="cpu", stages=stages)
    plan = Plan(load_config_file(tmp_path / "work-cpu-0" / "config.yaml"))
    planned = {stage: {plan.job_mem_mb(stage, w) for st, w in plan.memory_jobs() if st == stage}
               for stage in ("prune", "quantize")}
    assert len(planned["prune"]) == 2, planned  # magnitude and wanda
    for stage in ("prune", "quantize"):
        asked = {int(m) for c in calls[stage] for m in _flags(c)["mem"]}
        assert asked == planned[stage], (stage, asked, planned[stage])
    assert {int(m) for c in calls["evaluate"] for m in _flags(c)["mem"]} == {1234}


@pytest.mark.slow
def test_sbatch_per_stage_device(tmp_path, tiny_model):
    """device cpu, but prune on cuda with 2 GPUs: only prune asks for GPUs."""
    calls = _sbatch_calls(tmp_path, tiny_model, device="cpu", stages={"prune": {"device": "cuda", "gpus": 2}})
    assert set(calls) == {"prune", "quantize", "evaluate"}, calls
    assert all(_flags(c)["gpus"] == ["2"] for c in calls["prune"])
    for rule in ("quantize", "evaluate"):
        assert all(_flags(c)["gpus"] == [] and _flags(c)["gres"] == [] for c in calls[rule]), calls[rule]


@pytest.mark.slow
def test_dry_run_cpu_stages_request_no_gpu(tmp_path, tiny_model):
    """A dry run with device cuda: GPU stages carry gpu=1, import / aggregate / plots carry none."""
    cfgfile = _write_config(tmp_path / "config.yaml", tiny_model, tmp_path / "results", device="cuda",
                            quant=("none", "nf4"), stages={})
    r = _snakemake(["-n", "--profile", str(PROFILE), "--configfile", str(cfgfile)], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = {}
    for rule, res in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", r.stdout, re.M):
        seen.setdefault(rule, set()).add(res)
    seen.pop("all", None)  # target-only rule, runs no code
    assert set(seen) == {"import_model", "prune", "quantize", "evaluate", "aggregate", "plot"}
    for rule, resset in seen.items():
        for res in resset:
            kv = dict(x.split("=", 1) for x in res.split(", "))
            assert kv["slurm_partition"] == "debug"
            assert "runtime" in kv and "mem_mb" in kv and "cpus_per_task" in kv, (rule, kv)
            if rule in ("prune", "quantize", "evaluate"):
                assert kv.get("gpu") == "1", (rule, kv)
            else:
                assert "gpu" not in kv and "gres" not in kv, (rule, kv)
