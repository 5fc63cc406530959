"""envs/ for Snakemake's conda integration (`snakemake --sdm conda`).

Conda and its channels are not reachable on the development machine, so creating the environment is
not tested here. Everything else is: the pins in envs/ equal those of pyproject.toml and the Makefile
(they must never drift), every rule that runs code names an environment file that exists, and a dry
run with `--sdm conda` (against a stand-in `conda` that answers Snakemake's version checks) plans to
create exactly that environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
ENVS = ROOT / "envs"


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for d in deps:
        req = Requirement(d)
        (spec,) = list(req.specifier)  # every dependency is pinned with exactly one ==
        assert spec.operator == "==", d
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def _env_files() -> list[Path]:
    files = sorted(ENVS.glob("*.yaml")) + sorted(ENVS.glob("*.yml"))
    assert files, "envs/ holds no environment file"
    return files


def _env_pins(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(conda pins, pip pins) of one environment file; every entry must carry an exact version."""
    env = yaml.safe_load(path.read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                if line.startswith("-"):  # pip options (--extra-index-url ...)
                    continue
                req = Requirement(line)
                (spec,) = list(req.specifier)
                assert spec.operator == "==", f"{path.name}: pip entry {line!r} is not pinned with =="
                pip[canonicalize_name(req.name)] = spec.version
        elif dep == "pip":
            continue
        else:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==?\s*([0-9][^\s=]*)", dep)
            assert m, f"{path.name}: conda entry {dep!r} is not pinned (name=version)"
            conda[canonicalize_name(m[1])] = m[2]
    return conda, pip


def _makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\??:?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile has no {name}"
    return m[1].strip()


@pytest.mark.parametrize("env_file", _env_files(), ids=lambda p: p.name)
def test_env_pins_equal_pyproject(env_file):
    pins = _pyproject_pins()
    conda, pip = _env_pins(env_file)
    # the interpreter: a version pyproject allows
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert "python" in conda, f"{env_file.name} pins no python"
    assert SpecifierSet(requires).contains(conda["python"] + ".0"), (conda["python"], requires)
    # every pinned package is pinned exactly as in pyproject.toml, and none is missing
    both = {**{k: v for k, v in conda.items() if k not in ("python", "pip")}, **pip}
    drift = {k: (v, pins.get(k)) for k, v in both.items() if pins.get(k) != v}
    assert not drift, f"{env_file.name} pins differ from pyproject.toml (env, pyproject): {drift}"
    missing = sorted(set(pins) - set(both))
    assert not missing, f"{env_file.name} lacks pyproject dependencies {missing}"


def test_makefile_torch_and_embedded_pins_match():
    pins = _pyproject_pins()
    torch = Requirement(_makefile_var("TORCH_SPEC"))
    assert str(torch.specifier) == f"=={pins['torch']}"
    embedded = dict(x.split("==") for x in _makefile_var("EMBEDDED").split())
    for env_file in _env_files():
        deploy = env_file.with_name(env_file.name.rsplit(".", 1)[0] + ".post-deploy.sh")
        if not deploy.exists():
            continue
        text = deploy.read_text()
        line = next(l for l in text.splitlines() if "pip install" in l)  # noqa: E741
        assert "--no-deps" in line, line
        got = dict(x.split("==") for x in line.split() if "==" in x)
        assert got == embedded, f"{deploy.name} installs {got}, the Makefile's EMBEDDED is {embedded}"
        assert os.access(deploy, os.X_OK) or text.startswith("#!"), deploy


_PROBE = r"""
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings
root = Path(sys.argv[1])
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=root / "Snakefile", workdir=root)
    rules = {r.name: {"conda": r.conda_env if isinstance(r.conda_env, (str, type(None))) else repr(r.conda_env),
                      "norun": r.norun, "basedir": str(r.basedir)} for r in wf._workflow.rules}
print("RULES=" + json.dumps(rules))
"""


def test_every_rule_that_runs_code_has_a_conda_env():
    r = subprocess.run([sys.executable, "-c", _PROBE, str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rules = json.loads(r.stdout.split("RULES=", 1)[1])
    code_rules = {n: v for n, v in rules.items() if not v["norun"]}
    assert {"import_model", "prune", "quantize", "evaluate", "aggregate", "plot"} <= set(code_rules)
    for name, info in code_rules.items():
        assert info["conda"], f"rule {name} has no conda: directive"
        env = (Path(info["basedir"]) / info["conda"]).resolve()
        assert env.parent == ENVS and env.exists(), (name, env)
    # target-only rules (`all`) run no code and need no environment
    assert all(v["norun"] for n, v in rules.items() if n not in code_rules)


STAND_IN_CONDA = """#!/bin/sh
# stand-in conda: answers the checks Snakemake makes before a dry run of --sdm conda, refuses anything else
case "$*" in
  "info --json") echo '{"conda_version": "24.11.3", "root_prefix": "/opt/conda", "conda_prefix": "/opt/conda",
                       "active_prefix": null, "platform": "linux-64", "envs_dirs": [], "pkgs_dirs": []}';;
  "--version") echo "conda 24.11.3";;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}, "success": true}';;
  *) echo "stand-in conda: refused: $*" >&2; exit 1;;
esac
"""


def test_dry_run_with_sdm_conda_plans_the_env(tmp_path):
    """`snakemake --sdm conda -n` from the project root plans to create envs/llm-compression.yaml for its jobs."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "conda").write_text(STAND_IN_CONDA)
    (fakebin / "conda").chmod(0o755)
    env = {**os.environ, "PATH": f"{fakebin}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--sdm", "conda", "--cores", "1",
                        "--conda-prefix", str(tmp_path / "conda-envs")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    created = re.findall(r"Conda environment (\S+) will be created", out)
    assert created == ["envs/llm-compression.yaml"], out[-4000:]
    assert re.search(r"^import_model\s+1$", out, re.M), out[-4000:]
    assert not (tmp_path / "conda-envs").exists() or not any((tmp_path / "conda-envs").iterdir())
