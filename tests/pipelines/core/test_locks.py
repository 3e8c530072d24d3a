"""A stage's lock: a second holder waits for the first, and a failed write stops a stage with one line."""

from __future__ import annotations

import threading
import time

import pytest

from medflow.core.engine import StageFailed
from medflow.core.loading import load_config
from medflow.core.locks import stage_lock
from medflow.core.runner import run_pipeline
from tests.helpers import write_pipeline


def test_a_second_holder_waits_and_says_for_whom(tmp_path, capsys):
    path = tmp_path / "s.lock"
    held = threading.Event()

    def first():
        with stage_lock("train", "k" * 16, path):
            held.set()
            time.sleep(1.0)

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(10)
    with stage_lock("train", "k" * 16, path) as waited:
        assert waited >= 0.5
    thread.join()
    assert "[train] waiting: medflow pid" in capsys.readouterr().err


def test_a_full_disk_stops_the_stage_with_one_line_and_the_next_run_resumes(tmp_path, msd_root, monkeypatch):
    cfg = load_config(write_pipeline(tmp_path / "p.yaml", msd_root, stages="[ingest, preprocess]"))
    # Ingest first, on its own: in one run with preprocess it would preprocess every case ahead, and
    # preprocess would only move the case files into its folder (renames, no writes to fail).
    run_pipeline(cfg, target="ingest")
    monkeypatch.setenv("MEDFLOW_FAULT", "enospc@preprocess:3")
    with pytest.raises(StageFailed) as err:
        run_pipeline(cfg)
    message = str(err.value)
    assert message.startswith("[preprocess] ") and "No space left on device" in message and "\n" not in message
    assert "/stages/preprocess/" in message and "resumes with the 1 case(s) written" in message
    folder = next((tmp_path / "workspace/stages/preprocess").iterdir())
    assert not list(folder.rglob(".tmp-*")) and not (folder / "manifest.json").exists()
    monkeypatch.delenv("MEDFLOW_FAULT")
    results, _ = run_pipeline(cfg)
    assert [r.state for r in results] == ["skipped", "ran"] and results[1].cases == 4
