"""Fault injection points and failed writes: a failed write names its file and leaves nothing behind."""

from __future__ import annotations

import errno

import pytest

from medflow.data import faults
from medflow.data.atomic import WriteFailed, write_atomic


def test_the_spec_is_checked():
    assert faults.parse("kill@train:17") == ("kill", "train", 17)
    for bad in ("kill@train", "boom@train:1", "kill@:1", "kill@train:0", "enospc"):
        with pytest.raises(ValueError, match="MEDFLOW_FAULT"):
            faults.parse(bad)


def test_an_injected_full_disk_fails_the_nth_write_of_its_stage_only(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.FAULT_ENV, "enospc@pre:2")
    for i in range(3):  # outside the stage nothing fails
        with write_atomic(tmp_path / f"out{i}.txt") as tmp:
            tmp.write_text("x")
    with faults.in_stage("pre"):
        with write_atomic(tmp_path / "a.txt") as tmp:
            tmp.write_text("a")
        with pytest.raises(WriteFailed) as err:
            with write_atomic(tmp_path / "b.txt") as tmp:
                tmp.write_text("b")
    assert err.value.errno == errno.ENOSPC and str(err.value) == f"{tmp_path / 'b.txt'}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out0.txt", "out1.txt", "out2.txt"]


def test_a_real_write_error_names_the_destination_not_the_temporary(tmp_path):
    with pytest.raises(WriteFailed) as err:
        with write_atomic(tmp_path / "big.bin") as tmp:
            with open("/dev/full", "wb") as full:  # ENOSPC on every write, no file name in the error
                full.write(b"x" * 65536)
                full.flush()
            tmp.write_bytes(b"never")
    assert err.value.filename == str(tmp_path / "big.bin") and err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_an_input_error_inside_a_write_stays_what_it_is(tmp_path):
    with pytest.raises(FileNotFoundError):
        with write_atomic(tmp_path / "out.txt") as tmp:
            tmp.write_text((tmp_path / "absent.txt").read_text())
    assert list(tmp_path.iterdir()) == []


def test_counting_writes_one_line_per_point(tmp_path, monkeypatch):
    count = tmp_path / "count.txt"
    monkeypatch.setenv(faults.COUNT_ENV, str(count))
    with faults.in_stage("s"):
        with write_atomic(tmp_path / "x.txt") as tmp:
            tmp.write_text("x")
        faults.point("step")
    assert count.read_text().splitlines() == ["s write", "s publish", "s step"]
