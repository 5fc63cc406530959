"""Atomic writes: an interrupted job never leaves a file or directory that looks finished."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what an earlier, killed write of ``path`` left next to it: the hidden temporary
    ``.<name>.tmp-*`` (file or folder) and a replaced ``.<name>.old-*`` folder. A kill (SIGKILL, out
    of memory, a cluster's time limit) skips the ``except`` clause that cleans up after an error.

    Only one job writes a given output at a time (Snakemake locks its outputs), so whatever
    carries ``path``'s name with these prefixes is a leftover. Returns the paths removed.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for pattern in (f".{path.name}.tmp-*", f".{path.name}.old-*"):
        for leftover in path.parent.glob(pattern):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
            removed.append(leftover)
    return removed


def refresh_directory_timestamp(path: str | os.PathLike, marker: str = ".snakemake_timestamp") -> bool:
    """Date a Snakemake ``directory()`` output by its newest file, so a rewritten file inside is seen.

    Snakemake takes a directory output's modification time from its ``marker`` file, touched when
    the job ended; a checkpoint's ``config.json`` or weights rewritten later would leave every
    downstream output "up to date". When any file under ``path`` (hidden temporaries apart) is newer
    than the marker, the marker takes that file's time, and the dependents become stale by
    Snakemake's own modification-time rule. No marker (not a finished Snakemake output): nothing done.

    Returns:
        True when the marker was moved forward.
    """
    path = Path(path)
    stamp = path / marker
    try:
        stamp_mtime = stamp.stat().st_mtime
    except FileNotFoundError:
        return False
    newest = stamp_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, os.stat(os.path.join(dirpath, f)).st_mtime)
    if newest > stamp_mtime:
        os.utime(stamp, (newest, newest))
        return True
    return False


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; rename it to ``path`` only on success.

    An existing ``path`` is replaced only after the new one is complete. On an exception the
    temporary directory is removed and ``path`` is left as it was; what a killed earlier write left
    (see :func:`remove_stale_temporaries`) is removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); the result is shared like any folder
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it private (0600); the result is shared like any file
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """JSON-encode ``obj`` (indented, keys in insertion order) and write it atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike):
    with open(path) as fh:
        return json.load(fh)
