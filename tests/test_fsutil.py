"""Atomic writes leave either the old content or the new, never a half-written file."""
from __future__ import annotations

import pytest

from avatar3d import fsutil


def test_atomic_file_replaces_on_success(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with fsutil.atomic_file(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_file_keeps_old_content_on_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with fsutil.atomic_file(path, "w") as f:
            f.write("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_path_keeps_suffix_and_cleans_up(tmp_path):
    with pytest.raises(RuntimeError):
        with fsutil.atomic_path(tmp_path / "v.mp4") as tmp:
            assert tmp.suffix == ".mp4"
            tmp.write_bytes(b"x")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_commit_dir_replaces_existing(tmp_path):
    final = tmp_path / "data"
    final.mkdir()
    (final / "old").write_text("1")
    work = fsutil.work_dir_for(final)
    assert work.name == ".data.partial"
    work.mkdir()
    (work / "new").write_text("2")
    fsutil.commit_dir(work, final)
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert not work.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_atomic_files_get_normal_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        with fsutil.atomic_file(tmp_path / "a.txt", "w") as f:
            f.write("x")
        with fsutil.atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644
