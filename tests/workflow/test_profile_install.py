"""`make slurm-profile` installs profiles/slurm as the named profile `slurm`, so `snakemake --profile slurm`
works as written from the project root (README, docs/cluster.md). Every test uses a temporary
XDG_CONFIG_HOME: the user's own profiles are never touched."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install_profile.py"

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _installer():
    spec = importlib.util.spec_from_file_location("install_profile", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _make(xdg: Path, *args):
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg)}
    env.pop("SNAKEMAKE_PROFILE", None)
    return subprocess.run(["make", "-s", "--no-print-directory", "slurm-profile", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@needs_make
def test_make_slurm_profile_installs_refuses_and_forces(tmp_path):
    xdg = tmp_path / "xdg"
    dest = xdg / "snakemake" / "slurm" / "config.yaml"
    r = _make(xdg)
    assert r.returncode == 0, r.stdout + r.stderr
    installed = dest.read_text()
    source = (ROOT / "profiles" / "slurm" / "config.yaml").read_text()
    assert installed.endswith(source) and installed.startswith("# Installed by `make slurm-profile`")

    # again: identical, nothing changes
    r = _make(xdg)
    assert r.returncode == 0 and "already installed and identical" in r.stdout, r.stdout + r.stderr
    assert dest.read_text() == installed

    # a profile the user edited is never overwritten silently: refused, with the differences
    edited = installed.replace("slurm_partition: debug", "slurm_partition: gpu-long")
    dest.write_text(edited)
    r = _make(xdg)
    assert r.returncode != 0
    assert "-  slurm_partition: gpu-long" in r.stdout and "+  slurm_partition: debug" in r.stdout, r.stdout
    assert "FORCE=1" in r.stderr
    assert dest.read_text() == edited

    # FORCE=1 replaces it and keeps the old file
    r = _make(xdg, "FORCE=1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert dest.read_text() == installed
    assert dest.with_name("config.yaml.bak").read_text() == edited


def test_profile_relative_paths_made_absolute(tmp_path):
    """A value Snakemake would resolve against the project's profile folder keeps pointing there once installed;
    a value relative to the project root stays relative."""
    mod = _installer()
    proj = tmp_path / "proj"
    prof = proj / "profiles" / "site"
    (prof / "conda-cache").mkdir(parents=True)
    (prof / "config.yaml").write_text("executor: slurm\nconda-prefix: conda-cache  # SITE\n"
                                      "slurm-logdir: .snakemake/slurm_logs\njobs: 4\n")
    rc = mod.install(prof, "site", project_root=proj, dest_root=tmp_path / "cfg")
    assert rc == 0
    text = (tmp_path / "cfg" / "site" / "config.yaml").read_text()
    assert f"conda-prefix: {prof / 'conda-cache'}  # SITE\n" in text
    assert "slurm-logdir: .snakemake/slurm_logs\n" in text and "executor: slurm\n" in text

    # a relative value that would resolve inside the installed folder instead is refused
    (tmp_path / "cfg" / "site" / ".snakemake" / "slurm_logs").mkdir(parents=True)
    (tmp_path / "cfg" / "site" / "config.yaml").unlink()
    assert mod.install(prof, "site", project_root=proj, dest_root=tmp_path / "cfg") == 2
    assert not (tmp_path / "cfg" / "site" / "config.yaml").exists()

    # bad input
    assert mod.install(tmp_path / "nope", "site", dest_root=tmp_path / "cfg") == 2
    assert mod.install(prof, "../escape", project_root=proj, dest_root=tmp_path / "cfg") == 2


def test_user_profile_root_respects_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert _installer().user_profile_root() == tmp_path / "snakemake"


@needs_make
def test_dry_run_with_named_profile_from_project_root(tmp_path):
    """`snakemake --profile slurm -n` from the project root: the installed named profile is found (no profiles/
    prefix), its site settings reach every job, and the default grid is planned."""
    xdg = tmp_path / "xdg"
    assert _make(xdg).returncode == 0
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg)}
    env.pop("SNAKEMAKE_PROFILE", None)
    # an empty results folder: a checkout where `make run` ran has nothing left to plan in results/
    r = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "--config",
                        f"results={tmp_path / 'results'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert re.search(r"Using profiles? slurm\b", out), out[:2000]
    stats = dict(re.findall(r"^([a-z_]+)\s+(\d+)$", out, re.M))
    assert int(stats["import_model"]) == 1 and int(stats["total"]) > 5, stats
    resources = re.findall(r"^    resources: (.*)$", out, re.M)
    assert resources and all("slurm_partition=debug" in x for x in resources), resources[:3]

    # without the installed profile the same command fails with Snakemake's message (the symptom)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "empty")
    r = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "no profile.yaml (or config.yaml) found" in r.stderr, r.stderr[-2000:]
