"""Slow: two worker processes on 127.0.0.1 train like one (MultiWorkerMirroredStrategy, custom step)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.config import load_config
from pipelines.distributed import cluster
from pipelines.runner import run_pipeline
from tests.helpers import make_msd, write_pipeline

ROOT = Path(__file__).resolve().parents[2]
EXTRA = """
loader: {mode: 2d, patch_size: [16, 16], slice_axis: 2, samples_per_case: 4, batch_size: 4}
augment: {seed: 3, transforms: [{name: flip, p: 0.5}, {name: gamma, p: 0.5}]}
model: {name: unet2d, params: {depth: 2, filters: 4, norm: none}}
train: {epochs: 2, optimizer: sgd, learning_rate: 0.05, schedule: cosine, monitor: val_dice, val_samples_per_case: 1}
"""


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(config: Path, out: Path, tf_config: dict | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, "-m", "tests.pipelines.mw_worker", str(config), str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_cluster_reads_tf_config(monkeypatch):
    assert cluster() == (0, 1)
    spec = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(spec))
    assert cluster() == (2, 3)


@pytest.mark.slow
def test_two_workers_match_one_worker(tmp_path):
    config = write_pipeline(tmp_path / "p.yaml", make_msd(tmp_path / "msd", n=4), stages="[ingest, preprocess, split]",
                            extra=EXTRA)
    run_pipeline(load_config(config), workers=1)
    single = _launch(config, tmp_path / "single.npz", None)
    assert single.wait(timeout=600) == 0, single.stdout.read()[-3000:]
    hosts = [f"127.0.0.1:{p}" for p in _ports(2)]
    procs = [_launch(config, tmp_path / f"w{i}.npz", {"cluster": {"worker": hosts}, "task": {"type": "worker",
                                                                                           "index": i}})
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stdout.read()[-3000:]
    one, w0, w1 = (np.load(tmp_path / f"{n}.npz") for n in ("single", "w0", "w1"))
    assert int(w0["iterations"]) == int(one["iterations"]) == 6  # 2 epochs x 3 steps of the global batch
    assert np.array_equal(w0["weights"], w1["weights"])  # the workers stay in lockstep
    scale = np.abs(one["weights"]).max()
    assert np.abs(w0["weights"] - one["weights"]).max() < 1e-4 * scale  # and end where one worker ends
    h_one, h0, h1 = (json.loads(str(x["history"])) for x in (one, w0, w1))
    assert len(h0) == len(h_one) == 2 and h0 == h1  # same validation everywhere: callbacks decide alike
    for a, b in zip(h0, h_one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["val_dice"] == pytest.approx(b["val_dice"], abs=1e-4)
    assert (tmp_path / "w0" / "best.keras").exists()  # the stage checkpoint callback ran under the strategy
