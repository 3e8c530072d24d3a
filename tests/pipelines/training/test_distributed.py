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

from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.training.distributed import cluster
from tests.helpers import make_msd, write_pipeline

ROOT = Path(__file__).resolve().parents[3]
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
    return subprocess.Popen([sys.executable, "-m", "tests.pipelines.training.mw_worker", str(config), str(out)], cwd=ROOT,
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


def _medflow(args: list[str], env_extra: dict) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(env_extra)
    return subprocess.Popen([sys.executable, "-m", "medflow.cli.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(stage_dir: Path) -> np.ndarray:
    import keras

    model = keras.saving.load_model(stage_dir / "model.keras", compile=False, safe_mode=True)
    return np.concatenate([np.asarray(v).ravel() for v in model.trainable_variables])


@pytest.mark.slow
def test_medflow_run_trains_on_two_workers_and_only_the_chief_logs(tmp_path):
    from mlflow import MlflowClient

    root = make_msd(tmp_path / "msd", n=4)
    config = write_pipeline(tmp_path / "p.yaml", root, stages="[ingest, preprocess, split, train]",
                            extra=EXTRA.replace("val_samples_per_case: 1}",
                                                "val_samples_per_case: 1, distribute: multi_worker}"))
    stores = {name: f"sqlite:///{tmp_path / f'{name}.db'}" for name in ("pair", "one")}
    spaces = {name: str(tmp_path / f"ws_{name}") for name in stores}
    # One worker alone (no TF_CONFIG) is the reference: the same global batch and seed.
    one = _medflow(["run", str(config)], {"MEDFLOW_WORKSPACE": spaces["one"], "MLFLOW_TRACKING_URI": stores["one"]})
    assert one.wait(timeout=600) == 0, one.stdout.read()[-3000:]
    # The pair: the upstream stages first (a worker joins only for train), then both workers.
    env = {"MEDFLOW_WORKSPACE": spaces["pair"], "MLFLOW_TRACKING_URI": stores["pair"]}
    for stage in ("preprocess", "split"):
        prep = _medflow(["run", str(config), "--stage", stage], env)
        assert prep.wait(timeout=600) == 0, prep.stdout.read()[-3000:]
    hosts = [f"127.0.0.1:{p}" for p in _ports(2)]
    procs = [_medflow(["run", str(config), "--stage", "train"],
                      {**env, "TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                                       "task": {"type": "worker", "index": i}})}) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[1][-3000:] + outs[0][-3000:]
    assert "worker 1/2: not the chief" in outs[1] and "train          worker 1/2" in outs[1]
    train_dirs = {name: next((Path(spaces[name]) / "stages" / "train").glob("*/manifest.json")).parent
                  for name in spaces}
    assert train_dirs["one"].name == train_dirs["pair"].name  # the same key: the same training
    a, b = _weights(train_dirs["one"]), _weights(train_dirs["pair"])
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max()
    client = MlflowClient(stores["pair"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    train_runs = [r for r in runs if r.data.tags.get("medflow.stage") == "train"]
    assert len(train_runs) == 1  # only the chief logged
    assert len(client.get_metric_history(train_runs[0].info.run_id, "val_loss")) == 2


def test_mirrored_strategy_trains_with_keras_fit(tmp_path):
    config = write_pipeline(tmp_path / "p.yaml", make_msd(tmp_path / "msd", n=4),
                            stages="[ingest, preprocess, split, train]", extra=EXTRA)
    results, _ = run_pipeline(load_config(config, ["train.distribute=mirrored", "train.epochs=1"]), workers=1)
    train = Path(results[-1].path)
    assert results[-1].state == "ran" and (train / "model.keras").exists()
    assert "val_dice" in (train / "history.csv").read_text()  # fit's own metrics, under the strategy
