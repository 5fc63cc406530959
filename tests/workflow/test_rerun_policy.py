"""What makes the workflow rerun, and what it leaves behind (README: "Rerun policy").

A tiny random Llama project is run once in a temporary folder (a copy of the workflow's files);
copies of that finished project are then moved, edited or given another config:

- a moved or copied project has nothing to do (params name data by paths relative to the project);
- a checkpoint file rewritten after its job (weights, config.json) makes its dependents stale;
- a killed save leaves a hidden temporary that the next run of the rule removes;
- a job that fails prints its error's last lines on the console, and a second config file
  writes to its own results folder, so the first run's results stay as they were;
- a run killed midway (the whole process group, as a lost SSH session or an OOM kill would) resumes
  with the same command (``--profile profiles/default``, as ``make run``/``make study``): finished jobs
  are not redone, the interrupted one is, and a third call has nothing to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_FILES = ("Snakefile", "rules", "workflow", "schemas", "src", "profiles", "envs")  # envs: the rules' conda: files
PRUNED = "results/tiny/pruned/magnitude_unstructured_0.5_x1"


# ------------------------------------------------------------------ a killed save (library level)
def test_killed_save_leaves_only_a_hidden_temporary_that_the_next_save_removes(tmp_path):
    """SIGKILL in the middle of save_checkpoint: no finished-looking folder, one hidden temporary;
    the next save of that checkpoint removes it (and a killed file write's temporary, likewise)."""
    out = tmp_path / "ckpt"
    child = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from conftest import tiny_llama, tiny_tokenizer
from llm_compression.models import save_checkpoint
from llm_compression.io import write_text_atomic
import llm_compression.io as io
tok = tiny_tokenizer()
def killed(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
tok.save_pretrained = killed          # weights are written, then the process dies
save_checkpoint(tiny_llama(), tok, {str(out)!r}, {{"stage": "test"}})
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert not out.exists()
    left = list(tmp_path.glob(".ckpt.tmp-*"))
    assert len(left) == 1 and (left[0] / "model.safetensors").exists()

    from conftest import tiny_llama, tiny_tokenizer

    from llm_compression.io import write_text_atomic
    from llm_compression.models import save_checkpoint

    save_checkpoint(tiny_llama(), tiny_tokenizer(), out, {"stage": "test"})
    assert (out / "config.json").exists() and not list(tmp_path.glob(".ckpt.*"))

    (tmp_path / ".m.json.tmp-abc123").write_text('{"half": ')   # what a killed write_text_atomic leaves
    write_text_atomic(tmp_path / "m.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.json"]


# ------------------------------------------------------------------------- error on the console
def test_failed_job_prints_its_error_on_the_console(tmp_path):
    log = tmp_path / "logs" / "job.log"
    script = ("import sys; sys.path.insert(0, %r)\n"
              "from llm_compression.runtime import setup_job\n"
              "setup_job(%r)\n"
              "print('working')\n"
              "raise ValueError('seqlen 100000 exceeds the context of 8192')\n") % (str(ROOT / "src"), str(log))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "llm-compression: job failed (ValueError)" in p.stderr and str(log) in p.stderr
    assert "ValueError: seqlen 100000 exceeds the context of 8192" in p.stderr
    text = log.read_text()
    assert "working" in text and "Traceback (most recent call last)" in text and "seqlen 100000" in text


# ------------------------------------------------------------------------- the finished project
def _tiny_model(out: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_byte_tokenizer, tiny_llama

    tok = make_byte_tokenizer()
    model = tiny_llama(vocab_size=len(tok), max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _config(**over) -> dict:
    cfg = {
        "device": "cpu",
        "model": {"name": "tiny", "source": "models/tiny"},   # relative: inside the project
        "grid": {"dense": True, "pruning": [{"method": "magnitude", "ratios": [0.5]}], "quantization": ["none"]},
        "evaluation": {"perplexity": {"seqlen": 64, "max_tokens": 256, "batch_size": 4,
                                      "datasets": {"wikitext2": {"path": "data/wikitext-2-raw"}}},
                       "cost": {"enabled": True, "seqlen": 64}},
        "report": {"plot_formats": ["png"]},
        "resources": {"stages": {s: {"cpus": 1} for s in ("import", "prune", "evaluate")}},
    }
    cfg.update(over)
    return cfg


def _snakemake(cwd: Path, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _jobs(dry: str) -> dict:
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\n\s*total", dry, re.S)
    return {ln.split()[0]: int(ln.split()[1]) for ln in m.group(1).splitlines() if ln.strip()} if m else {}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)   # copy2: modification times kept, as `cp -a` / rsync -a
    return dst


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A finished run of the tiny project (import, magnitude 0.5, WikiText-2 perplexity and cost of
    dense and pruned, table, figures): about a minute on 2 idle cores, more under load."""
    proj = tmp_path_factory.mktemp("rerun") / "project"
    proj.mkdir()
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree(src, proj / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
         if src.is_dir() else shutil.copy2(src, proj / name))
    _tiny_model(proj / "models" / "tiny")
    data = proj / "data" / "wikitext-2-raw"
    data.mkdir(parents=True)
    (data / "wiki.test.raw").write_text(" = Tiny = \n\n" + " The cat sat on the mat . \n" * 200)
    (proj / "config.yaml").write_text(yaml.safe_dump(_config()))
    t0 = time.perf_counter()
    run = _snakemake(proj)
    assert run.returncode == 0, run.stderr[-5000:]
    print(f"tiny project run: {time.perf_counter() - t0:.1f}s")
    assert "Nothing to be done" in _snakemake(proj, "-n").stdout
    return proj


@pytest.mark.slow
def test_moved_or_copied_project_has_nothing_to_do(project, tmp_path):
    moved = _copy(project, tmp_path / "copy")
    dry = _snakemake(moved, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout, dry.stdout[-3000:]
    renamed = moved.rename(tmp_path / "renamed")
    dry = _snakemake(renamed, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout, dry.stdout[-3000:]


@pytest.mark.slow
def test_rewritten_checkpoint_file_makes_its_dependents_stale(project, tmp_path):
    # weights of the pruned checkpoint rewritten in place (same bytes, later time)
    p = _copy(project, tmp_path / "weights")
    w = p / PRUNED / "model.safetensors"
    time.sleep(0.05)
    w.write_bytes(w.read_bytes())
    dry = _snakemake(p, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = _jobs(dry.stdout)
    # its two metrics, then the table and the figures; not the prune job itself, nor the dense metrics
    assert counts.get("evaluate") == 2 and "prune" not in counts and "import_model" not in counts, counts
    assert "aggregate" in counts
    assert f"Updated input files: {PRUNED}" in dry.stdout, dry.stdout[-3000:]

    # config.json of the base rewritten: the prune job and the dense metrics follow
    p = _copy(project, tmp_path / "config")
    c = p / "results/tiny/base/config.json"
    time.sleep(0.05)
    c.write_text(c.read_text())
    counts = _jobs(_snakemake(p, "-n").stdout)
    assert counts.get("prune") == 1 and counts.get("evaluate") == 4 and "import_model" not in counts, counts


@pytest.mark.slow
def test_next_run_of_a_rule_removes_a_killed_saves_temporary(project, tmp_path):
    p = _copy(project, tmp_path / "killed")
    leftover = p / "results/tiny/pruned/.magnitude_unstructured_0.5_x1.tmp-k1ll3d"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    shutil.rmtree(p / PRUNED)   # the killed job's output is absent (Snakemake removed it as incomplete)
    run = _snakemake(p, PRUNED)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (p / PRUNED / "config.json").exists()
    assert not list((p / "results/tiny/pruned").glob(".*tmp-*"))


@pytest.mark.slow
def test_failing_config_keeps_the_first_results_and_shows_its_error(project, tmp_path):
    p = _copy(project, tmp_path / "failing")
    (p / "data" / "empty").mkdir()
    metrics = sorted((p / "results/tiny/metrics").rglob("*.json"))
    before = {m: (m.stat().st_mtime_ns, m.read_bytes()) for m in metrics}
    other = _config(evaluation={"perplexity": {"seqlen": 64, "max_tokens": 256,
                                               "datasets": {"wikitext2": {"path": "data/empty"}}}})
    (p / "other.yaml").write_text(yaml.safe_dump(other))   # no `results:`: it gets results/other/
    run = _snakemake(p, "--configfile", "other.yaml", "--forceall", "--until", "evaluate")
    assert run.returncode != 0
    console = run.stdout + run.stderr   # what the user sees: the error itself, not only "check log file(s)"
    assert "llm-compression: job failed (CorpusError); last lines, full log results/other/logs/evaluate/" in console, \
        console[-4000:]
    assert "CorpusError: file data/empty/wiki.test.raw does not exist" in console, console[-4000:]
    assert (p / "results/other/tiny").is_dir()
    assert {m: (m.stat().st_mtime_ns, m.read_bytes()) for m in metrics} == before
    assert "Nothing to be done" in _snakemake(p, "-n").stdout


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_jobs(project, tmp_path):
    p = tmp_path / "interrupted"
    p.mkdir()
    for name in (*WORKFLOW_FILES, "models", "data", "config.yaml"):
        src = project / name
        shutil.copytree(src, p / name, symlinks=True) if src.is_dir() else shutil.copy2(src, p / name)
    shutil.copytree(ROOT / "scripts", p / "scripts")
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/default", "--cores", "2"]
    base = p / "results/tiny/base/compression.json"
    run = subprocess.Popen(cmd, cwd=p, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not base.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert base.exists() and run.poll() is None, "the run ended (or hung) before it could be interrupted"
        time.sleep(1.0)   # the next jobs (prune, dense evaluations) are running now
    finally:
        os.killpg(run.pid, signal.SIGKILL)   # Snakemake and its running jobs, at once
        run.wait()
    finished = {f: f.stat().st_mtime_ns for f in (p / "results/tiny/base").iterdir()}
    planned = _jobs(_snakemake(p, "-n", "--rerun-incomplete").stdout)
    assert "import_model" not in planned and planned.get("evaluate", 0) >= 1, planned
    assert list((p / ".snakemake/locks").iterdir())   # the killed run's lock is still there
    # what `make run` / `make study` do: release the stale lock, then the same command
    release = subprocess.run([sys.executable, "scripts/release_stale_lock.py", "--", *cmd[3:]], cwd=p,
                             capture_output=True, text=True, timeout=300)
    assert release.returncode == 0 and "releasing the lock of an interrupted run" in release.stderr, release.stderr
    resumed = subprocess.run(cmd, cwd=p, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert {f: f.stat().st_mtime_ns for f in finished} == finished   # the import was not redone
    assert (p / "results/summary.csv").exists() and (p / PRUNED / "config.json").exists()
    assert not list((p / "results/tiny").rglob(".*tmp-*"))   # nothing half-written left behind
    assert "Nothing to be done" in _snakemake(p, "-n").stdout


def test_a_live_run_keeps_its_lock(tmp_path):
    """release_stale_lock leaves a lock alone while a Snakemake process (here a stand-in whose arguments
    name snakemake) runs in the project folder, and does nothing without a lock."""
    script = ROOT / "scripts" / "release_stale_lock.py"
    assert subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True).stderr == ""
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("x")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # snakemake"], cwd=tmp_path)
    try:
        r = subprocess.run([sys.executable, str(script), "--", "--cores", "1"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    finally:
        live.kill()
        live.wait()
    assert r.returncode == 0 and r.stderr == "" and (locks / "0.input.lock").exists()


@pytest.mark.slow
def test_streaming_switch_reruns_nothing_and_forced_reruns_give_the_same_results(project, tmp_path):
    """resources.streaming: always is a job resource: switching it on plans nothing; rerunning the prune and
    evaluate jobs with it streams them (one block resident) and gives the same weights and metrics."""
    import json

    import torch
    from safetensors.torch import load_file

    copy = _copy(project, tmp_path / "streamed")
    cfg = _config(resources={"streaming": "always", "stages": {s: {"cpus": 1} for s in ("import", "prune", "evaluate")}})
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    dry = _snakemake(copy, "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout, dry.stdout[-3000:]
    run = _snakemake(copy, "--forcerun", "prune", "evaluate")
    assert run.returncode == 0, run.stderr[-5000:]
    pruned = "results/tiny/pruned/magnitude_unstructured_0.5_x1"
    comp = json.loads((copy / pruned / "compression.json").read_text())
    assert comp["result"]["streamed"] is True
    # every job records the memory plan's estimate beside its measured peak (llm_compression.memory_plan)
    assert comp["memory"]["streamed"] is True and comp["memory"]["measured_peak_rss_bytes"] > 0
    for log in ("prune/magnitude_unstructured_0.5_x1", "evaluate/dense/none/none/ppl-wikitext2-sparsegpt"):
        streamed = json.loads((copy / f"results/logs/{log}.log.memory.json").read_text())
        before = json.loads((project / f"results/logs/{log}.log.memory.json").read_text())
        assert streamed["streamed"] is True and before["streamed"] is False, log  # auto: a tiny model fits
        for rec in (streamed, before):  # a tiny model: the runtime dominates both
            assert 0.5 < rec["measured_over_estimate"] < 2, (log, rec)
    assert "streamed" not in json.loads((project / pruned / "compression.json").read_text())["result"]
    a = {k: v for f in sorted((project / pruned).glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    b = {k: v for f in sorted((copy / pruned).glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    assert set(b) <= set(a) and all(torch.equal(a[k], b[k]) for k in b)
    for f in sorted((project / "results/tiny/metrics").rglob("ppl-*.json")):
        ra, rb = json.loads(f.read_text()), json.loads((copy / f.relative_to(project)).read_text())
        assert rb["metrics"] == ra["metrics"] and rb["windows"] == ra["windows"], f
        assert rb["runtime"].get("streamed") is True
