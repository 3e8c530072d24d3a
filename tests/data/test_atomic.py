"""write_atomic: a file or folder appears whole, with normal permissions, or not at all."""

from __future__ import annotations

import os

import pytest

from medflow.data.atomic import write_atomic


def test_file_is_published_with_the_umask_mode(tmp_path):
    dest = tmp_path / "sub" / "a.json"
    with write_atomic(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".tmp-") and not dest.exists()
        tmp.write_text("{}")
    mask = os.umask(0)
    os.umask(mask)
    assert dest.read_text() == "{}" and dest.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in dest.parent.iterdir()] == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    dest = tmp_path / "a.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with write_atomic(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert dest.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_folder_replaces_the_old_one_whole(tmp_path):
    dest = tmp_path / "ckpt"
    dest.mkdir()
    (dest / "stale").write_text("x")
    with write_atomic(dest, folder=True) as tmp:
        (tmp / "model.keras").write_text("m")
    assert sorted(p.name for p in dest.iterdir()) == ["model.keras"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with pytest.raises(ValueError):
        with write_atomic(dest, folder=True) as tmp:
            (tmp / "partial").write_text("p")
            raise ValueError
    assert sorted(p.name for p in dest.iterdir()) == ["model.keras"] and len(list(tmp_path.iterdir())) == 1


def test_suffix_is_kept_for_writers_that_look_at_it(tmp_path):
    with write_atomic(tmp_path / "x.nii.gz", suffix=".nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"")
