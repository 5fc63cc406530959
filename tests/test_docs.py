"""The documentation: the site builds in strict mode (a broken link or a missing page fails), the configuration
reference shows every schema key with its default, the README stays on one screen, and the commands the
getting-started page shows run (as dry runs where a real run is too long)."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm_compression.config import load_schema
from llm_compression.config_reference import config_reference_markdown, schema_keys

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150


def test_readme_fits_one_screen_and_links_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES, len(readme.splitlines())
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).exists(), target


def test_config_reference_lists_every_schema_key_with_its_default_and_a_description():
    md = config_reference_markdown()
    rows = {m[1]: m[0] for m in re.finditer(r"^\| `([^`]+)`[^|]*\|.*$", md, re.M)}
    keys = schema_keys(load_schema())
    assert len(keys) > 100
    for k in keys:
        if "." not in k.path and "[" not in k.path:  # a top-level key has its own section
            assert f"## `{k.path}`" in md, k.path
            continue
        assert k.path in rows, k.path
        assert k.description, f"{k.path} has no description in the schema"
        if k.default:
            assert f"`{k.default}`" in rows[k.path], (k.path, k.default)
    # recipe defaults come from normalize_recipe's table
    assert re.search(r"`healing.<name>.lora.rank` \| integer \| `8`", md)


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "grid.pruning[].ratios" in reference and "healing.&lt;name&gt;.lora.rank" in reference
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "prune_model" in api and "heal_model" in api


def _shown_commands(page: Path) -> list[str]:
    """Command lines of the page's ``bash`` blocks, comments stripped."""
    text = page.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_getting_started_commands_run(tmp_path):
    """Each command shown on the getting-started page: ``make`` targets as ``make -n`` (what they would run),
    Snakemake calls as dry runs (``-n``) from the project root; every one must succeed."""
    commands = _shown_commands(ROOT / "docs" / "getting-started.md")
    assert {"make run", "make test"} <= set(commands), commands
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env["PYTHONPATH"] = str(ROOT / "src")
    ran = 0
    for line in commands:
        argv = shlex.split(line)
        if argv[0] == "make":
            argv = ["make", "--no-print-directory", "-n", *argv[1:]]
        elif argv[0].endswith("snakemake"):
            argv = [sys.executable, "-m", "snakemake", *argv[1:], "-n"]
        else:
            pytest.fail(f"getting-started shows a command this test does not know how to check: {line!r}")
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, (line, r.stdout[-2000:], r.stderr[-2000:])
        ran += 1
    assert ran == len(commands)
