"""A stage killed with SIGKILL resumes with the cases it finished and ends identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from medflow.data.casefile import file_sha256
from tests.helpers import make_msd, write_pipeline

DRIVER = """
import os, sys, time
import medflow.stages.preprocess as pp
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline

slow = float(os.environ.get("SLOW", "0"))
original = pp.preprocess_job
def paced(job):  # slow each case down so the test can kill the stage half-way
    time.sleep(slow)
    return original(job)
pp.preprocess_job = paced
cfg = load_config(sys.argv[1])
# Ingest in a run of its own: in one run with preprocess it would preprocess every case ahead, and
# preprocess would only move those case files into its folder, too fast to kill half-way.
run_pipeline(cfg, target="ingest", workers=1)
run_pipeline(cfg, target="preprocess", workers=1)
"""


def _env(workspace: Path, slow: float) -> dict:
    env = dict(os.environ, MEDFLOW_WORKSPACE=str(workspace), SLOW=str(slow))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[3]), env.get("PYTHONPATH", "")])
    return env


def _outputs(workspace: Path) -> dict:
    (pre,) = (workspace / "stages" / "preprocess").iterdir()
    manifest = json.loads((pre / "manifest.json").read_text())
    files = {p.name: file_sha256(p) for p in sorted((pre / "cases").iterdir())}
    return {"manifest": manifest, "files": files}


def test_kill_and_resume_gives_identical_outputs(tmp_path):
    root = make_msd(tmp_path / "msd", n=8)
    cfg = write_pipeline(tmp_path / "p.yaml", root)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)

    killed_ws = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(driver), str(cfg)], env=_env(killed_ws, 0.4),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    cases_dir = None
    while time.time() < deadline:
        # pathlib's * matches dot files: skip the temp files a case is written through
        found = [p for p in (killed_ws / "stages" / "preprocess").glob("*/cases/*.npz") if not p.name.startswith(".")]
        if len(found) >= 3:
            cases_dir = found[0].parent
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert cases_dir is not None, "the stage never got going"
    finished_before = {p.name: p.stat().st_mtime_ns for p in cases_dir.glob("*.npz") if not p.name.startswith(".")}
    assert 3 <= len(finished_before) < 8
    assert not (cases_dir.parent / "manifest.json").exists()
    (cases_dir / ".tmp-leftover.npz").write_bytes(b"half a file")  # what a kill mid-write leaves

    subprocess.run([sys.executable, str(driver), str(cfg)], env=_env(killed_ws, 0), check=True,
                   capture_output=True)
    for name, mtime in finished_before.items():  # finished cases were not redone
        assert (cases_dir / name).stat().st_mtime_ns == mtime
    assert not list(cases_dir.glob(".tmp-*"))

    clean_ws = tmp_path / "clean"
    subprocess.run([sys.executable, str(driver), str(cfg)], env=_env(clean_ws, 0), check=True, capture_output=True)
    resumed, clean = _outputs(killed_ws), _outputs(clean_ws)
    assert resumed["files"] == clean["files"] and len(clean["files"]) == 8
    assert resumed["manifest"] == clean["manifest"]
