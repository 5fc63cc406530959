#!/usr/bin/env python3
"""Install one of the project's Snakemake profiles (default: profiles/slurm) as a *named* profile, so that
`snakemake --profile slurm` works as written from the project root.

Snakemake looks a profile name up in the current directory, then in the user's config folder
(platformdirs: $XDG_CONFIG_HOME/snakemake, default ~/.config/snakemake on Linux), then in the site
config folder. This copies the profile's config.yaml to <user config folder>/snakemake/<name>/.

- Never overwrites silently: an identical installed profile is left alone; a different one is refused
  with the differences printed, unless --force (make slurm-profile FORCE=1), which keeps the old file as
  config.yaml.bak.
- Paths: Snakemake resolves a string value of a profile against the profile's own folder when such a file
  exists there, and against the directory it runs in otherwise. A value that resolves inside the project's
  profile folder is written as an absolute path; every other relative path (slurm-logdir) stays relative to
  the directory Snakemake runs in, the project root. A relative value that would resolve inside the
  installed folder instead is refused.

Standard library only (platformdirs is used when importable, as Snakemake itself does), so it runs
before `make setup`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import sys
from pathlib import Path

HEADER = ("# Installed by `make slurm-profile` (scripts/install_profile.py) from llm-compression's {src}.\n"
          "# Use from the project root: snakemake --profile {name}. Relative paths below are relative to\n"
          "# the directory Snakemake runs in (the project root). Edit the SITE lines for your cluster.\n")
_TOP_SCALAR = re.compile(r"^(?P<key>[A-Za-z][\w-]*):[ \t]+(?P<value>[^#\s][^#]*?)[ \t]*(?P<comment>#.*)?$")


def user_profile_root() -> Path:
    """Snakemake's user config folder (where it looks up profile names)."""
    try:
        from platformdirs import AppDirs
    except ImportError:  # the same place platformdirs picks on Linux
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        return Path(base) / "snakemake"
    return Path(AppDirs("snakemake", "snakemake").user_config_dir)


def render(src_file: Path, name: str, project_root: Path) -> str:
    """The installed text of a profile config: header + the source with profile-relative paths made absolute.

    Raises:
        SystemExit: a relative value would resolve inside the installed profile folder.
    """
    out = []
    for line in src_file.read_text().splitlines(keepends=True):
        m = _TOP_SCALAR.match(line.rstrip("\n"))
        if m:
            value = m["value"].strip("'\"")
            if not os.path.isabs(value) and (src_file.parent / value).exists():
                absolute = str((src_file.parent / value).resolve())
                line = f"{m['key']}: {absolute}" + (f"  {m['comment']}" if m["comment"] else "") + "\n"
        out.append(line)
    try:
        rel = src_file.relative_to(project_root)
    except ValueError:
        rel = src_file
    return HEADER.format(src=rel, name=name) + "".join(out)


def install(src_dir: Path, name: str, *, force: bool = False, project_root: Path | None = None,
            dest_root: Path | None = None) -> int:
    """Install ``src_dir/config.yaml`` as the named profile ``name``; returns a process exit code
    (0 installed or already identical, 1 refused, 2 bad input)."""
    src_file = src_dir / "config.yaml"
    if not src_file.is_file():
        print(f"install_profile: {src_file} does not exist (give a profile folder with config.yaml)", file=sys.stderr)
        return 2
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
        print(f"install_profile: profile name {name!r} must be a plain folder name, e.g. 'slurm'", file=sys.stderr)
        return 2
    project_root = project_root or src_dir.resolve().parents[1]
    dest_dir = (dest_root or user_profile_root()) / name
    dest = dest_dir / "config.yaml"
    text = render(src_file, name, project_root)
    for m in filter(None, map(_TOP_SCALAR.match, text.splitlines())):
        value = m["value"].strip("'\"")
        if not os.path.isabs(value) and "/" in value and (dest_dir / value).exists():
            print(f"install_profile: {m['key']}: {value!r} would resolve inside {dest_dir}, not the project root; "
                  "remove that file or use an absolute path", file=sys.stderr)
            return 2
    if dest.exists():
        old = dest.read_text()
        if old == text:
            print(f"profile '{name}' is already installed and identical: {dest}")
            return 0
        diff = "".join(difflib.unified_diff(old.splitlines(keepends=True), text.splitlines(keepends=True),
                                            fromfile=f"{dest} (installed)", tofile=f"{src_file} (project)"))
        print(diff, end="" if diff.endswith("\n") else "\n")
        if not force:
            print(f"install_profile: a different profile '{name}' is already installed at {dest} (differences above); "
                  "left unchanged. Re-run with FORCE=1 (make slurm-profile FORCE=1) to replace it "
                  "(the old file is kept as config.yaml.bak)", file=sys.stderr)
            return 1
        shutil.copy2(dest, dest.with_name("config.yaml.bak"))
        print(f"replacing the installed profile '{name}' (old file kept as {dest.with_name('config.yaml.bak')})")
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".config.yaml.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, dest)
    print(f"installed profile '{name}': {dest}\nrun from the project root: snakemake --profile {name} -n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", default="profiles/slurm", help="profile folder of this project")
    ap.add_argument("--name", default="slurm", help="profile name to install as (default: slurm)")
    ap.add_argument("--force", action="store_true", help="replace a different installed profile (keeps a .bak)")
    args = ap.parse_args(argv)
    return install(Path(args.source), args.name, force=args.force)


if __name__ == "__main__":
    sys.exit(main())
