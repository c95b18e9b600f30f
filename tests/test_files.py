"""mutr.files.atomic_write: all or nothing, usual permissions, no temp files left."""

from __future__ import annotations

import os

import pytest

from mutr.files import atomic_write


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_gives_usual_permissions_even_if_the_writer_replaces_the_file(tmp_path) -> None:
    def replace_inode(tmp):  # what safetensors' save_file does: a new file under the same name
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"new")
        os.close(fd)

    out = atomic_write(tmp_path / "sub" / "model.bin", replace_inode)
    assert out.read_bytes() == b"new"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in out.parent.iterdir()] == ["model.bin"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
