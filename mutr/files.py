"""Atomic file writes: a temporary file in the destination folder, fsync, rename into place.

A crash or kill mid-write leaves the previous file (or none), never a truncated one. Files get
the permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes them 0600, and some
writers, such as safetensors, replace the temporary file's inode, so permissions are set after
writing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp_path)`` fills a temporary file beside ``path``, which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (not possible on every platform/filesystem)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_path(tmp: Path, path: Path, aside: Path | None = None) -> None:
    """Move the finished ``tmp`` (a file or a folder) to ``path``. A folder cannot replace a folder
    atomically: with ``aside``, an existing ``path`` is first renamed there and removed afterwards."""
    if aside is not None and path.exists():
        os.replace(path, aside)
        os.replace(tmp, path)
        remove_path(aside)
    else:
        os.replace(tmp, path)


def remove_path(path: Path) -> None:
    """Remove a file or folder if it is there (a temporary or a replaced output; errors ignored)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
