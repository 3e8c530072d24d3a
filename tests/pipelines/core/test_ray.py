"""executor: ray on a real Ray (a local instance and a two-node ray.cluster_utils.Cluster), never mocked.

Every address stays on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, asserted). Outputs must be
byte for byte a local run's; a worker killed mid-stage or a node removed loses no case, duplicates
none and quarantines none.
"""

from __future__ import annotations

import filecmp
import os
import threading
import time
from pathlib import Path

import pytest

from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from tests.helpers import make_msd, write_pipeline

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray = pytest.importorskip("ray")


@pytest.fixture(autouse=True)
def loopback(monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    yield
    ray.shutdown()


def _run(tmp_path: Path, cfg_path: Path, name: str, **kw) -> dict:
    os.environ["MEDFLOW_WORKSPACE"] = str(tmp_path / name)
    results, _ = run_pipeline(load_config(cfg_path), target="preprocess", **kw)
    return {r.name: r for r in results}


def _same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    stack = [cmp]
    while stack:
        c = stack.pop()
        assert not c.left_only and not c.right_only and not c.diff_files, (c.left, c.left_only, c.right_only,
                                                                          c.diff_files)
        assert not filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)[1]
        stack.extend(c.subdirs.values())


def _assert_loopback() -> None:
    addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    assert addresses == {"127.0.0.1"}, addresses


def test_ray_outputs_and_quarantine_are_the_local_runs(tmp_path, monkeypatch):
    root = make_msd(tmp_path / "msd", n=8)
    (root / "imagesTr" / "case_03.nii.gz").write_bytes(b"not a volume")  # quarantined by both executors
    cfg = write_pipeline(tmp_path / "p.yaml", root)
    local = _run(tmp_path, cfg, "local")
    remote = _run(tmp_path, cfg, "ray", executor="ray")
    _assert_loopback()
    for stage in ("ingest", "preprocess"):
        assert Path(local[stage].path).name == Path(remote[stage].path).name  # the same keys
        _same_tree(Path(local[stage].path), Path(remote[stage].path))  # the same bytes, manifest included
    assert remote["ingest"].quarantined == 1 and remote["preprocess"].cases == 7


def test_only_the_driver_writes_the_sqlite_store(tmp_path):
    """A sqlite: store is safe under executor ray because its workers cannot track: their
    MLFLOW_TRACKING_URI names no store. The driver's runs are all there."""
    from medflow.core.ray_exec import NO_TRACKING_URI, connect
    from medflow.tracking.runs import MlflowTracker
    from mlflow import MlflowClient

    root = make_msd(tmp_path / "msd", n=4)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    os.environ["MEDFLOW_WORKSPACE"] = str(tmp_path / "ws")
    run_pipeline(load_config(write_pipeline(tmp_path / "p.yaml", root)), target="preprocess", executor="ray",
                 tracker=MlflowTracker(store))
    seen = connect().get([connect().remote(lambda: os.environ.get("MLFLOW_TRACKING_URI")).remote()
                          for _ in range(4)])
    assert set(seen) == {NO_TRACKING_URI}
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert sorted(r.data.tags.get("medflow.stage", "parent") for r in runs) == ["ingest", "parent", "preprocess"]


def test_a_worker_killed_mid_stage_loses_duplicates_and_quarantines_nothing(tmp_path, monkeypatch):
    root = make_msd(tmp_path / "msd", n=10)
    cfg = write_pipeline(tmp_path / "p.yaml", root)
    local = _run(tmp_path, cfg, "local")
    # The first Ray worker to reach its 3rd point of preprocess (after one case file is published, in the
    # middle of writing the next) SIGKILLs itself, once. Ray retries the lost task in a fresh worker.
    monkeypatch.setenv("MEDFLOW_FAULT", "kill@preprocess:3")
    monkeypatch.setenv("MEDFLOW_FAULT_ONCE", str(tmp_path / "killed"))
    remote = _run(tmp_path, cfg, "ray", executor="ray")
    assert remote["preprocess"].state == "ran" and remote["preprocess"].quarantined == 0
    _same_tree(Path(local["preprocess"].path), Path(remote["preprocess"].path))
    assert (tmp_path / "killed").exists()  # the kill happened
    leftovers = [p for p in Path(remote["preprocess"].path).rglob(".tmp-*")]
    assert leftovers == []  # the killed write left nothing half-written (swept or never published)


def test_a_node_removed_mid_stage_loses_no_case(tmp_path):
    from ray.cluster_utils import Cluster

    root = make_msd(tmp_path / "msd", n=24, shape=(40, 36, 32))
    cfg = write_pipeline(tmp_path / "p.yaml", root)
    local = _run(tmp_path, cfg, "local")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        os.environ["MEDFLOW_WORKSPACE"] = str(tmp_path / "ray")
        c = load_config(cfg)
        run_pipeline(c, target="ingest", executor="ray", ray_address=cluster.address)
        _assert_loopback()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        cases = tmp_path / "ray" / "stages" / "preprocess"
        removed = threading.Event()
        written_at_removal = []

        def remove_when_started():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                written = len(list(cases.glob("*/cases/*.npz")))
                if written >= 3:
                    cluster.remove_node(worker, allow_graceful=False)
                    written_at_removal.append(written)
                    removed.set()
                    return
                time.sleep(0.002)

        thread = threading.Thread(target=remove_when_started)
        thread.start()
        results, _ = run_pipeline(c, target="preprocess", executor="ray", ray_address=cluster.address)
        thread.join()
        assert removed.is_set() and written_at_removal[0] < 24  # the node went while cases were left
        out = {r.name: r for r in results}
        assert out["preprocess"].state == "ran" and out["preprocess"].quarantined == 0
        _same_tree(Path(local["preprocess"].path), Path(out["preprocess"].path))
    finally:
        ray.shutdown()
        cluster.shutdown()


TRAIN_EXTRA = """
loader: {mode: 2d, patch_size: [16, 16], slice_axis: 2, samples_per_case: 4, batch_size: 4}
augment: {seed: 3, transforms: [{name: flip, p: 0.5}, {name: gamma, p: 0.5}]}
model: {name: unet2d, params: {depth: 2, filters: 4, norm: none}}
train: {epochs: 3, optimizer: sgd, learning_rate: 0.05, schedule: cosine, monitor: val_dice, val_samples_per_case: 1}
"""


def _weights(stage_dir: Path):
    import keras
    import numpy as np

    model = keras.saving.load_model(stage_dir / "model.keras", compile=False, safe_mode=True)
    return np.concatenate([np.asarray(v).ravel() for v in model.trainable_variables])


def _train(tmp_path: Path, cfg_path: Path, name: str, overrides: list[str], tracker=None):
    os.environ["MEDFLOW_WORKSPACE"] = str(tmp_path / name)
    results, _ = run_pipeline(load_config(cfg_path, overrides), workers=1, tracker=tracker)
    return results[-1]


def test_training_on_ray_matches_multi_worker_and_survives_a_killed_worker(tmp_path, monkeypatch):
    import numpy as np
    from mlflow import MlflowClient

    from medflow.tracking.runs import MlflowTracker

    root = make_msd(tmp_path / "msd", n=4)
    cfg = write_pipeline(tmp_path / "p.yaml", root, stages="[ingest, preprocess, split, train]", extra=TRAIN_EXTRA)
    reference = _weights(Path(_train(tmp_path, cfg, "mw", ["train.distribute=multi_worker"]).path))
    store = f"sqlite:///{tmp_path / 'store.db'}"  # only the driver writes it
    ray_run = _train(tmp_path, cfg, "ray", ["train.distribute=ray", "train.workers=2"], MlflowTracker(store))
    _assert_loopback()
    weights = _weights(Path(ray_run.path))
    assert np.abs(weights - reference).max() < 1e-4 * np.abs(reference).max()  # two Ray workers train like one
    assert not list(Path(ray_run.path).glob(".tmp-*"))  # Ray Train's records are gone with the stage
    client = MlflowClient(store)
    (train_run,) = [r for r in client.search_runs([client.get_experiment_by_name("test").experiment_id])
                    if r.data.tags.get("medflow.stage") == "train"]
    assert len(client.get_metric_history(train_run.info.run_id, "val_loss")) == 3  # the chief's epochs, replayed
    # A worker SIGKILLs itself at its 5th training step (epoch 2), once: Ray restarts the group and every
    # worker resumes from the chief's last checkpoint. The result is the uninterrupted run's.
    monkeypatch.setenv("MEDFLOW_FAULT", "kill@train:5")
    monkeypatch.setenv("MEDFLOW_FAULT_ONCE", str(tmp_path / "killed"))
    killed = _train(tmp_path, cfg, "killed", ["train.distribute=ray", "train.workers=2"])
    assert (tmp_path / "killed").exists() and killed.state == "ran"
    assert np.abs(_weights(Path(killed.path)) - weights).max() < 1e-4 * np.abs(weights).max()


def test_ray_train_gives_every_worker_a_loopback_tf_config(tmp_path):
    import json

    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from medflow.core.ray_exec import connect

    connect()
    seen = tmp_path / "seen"
    seen.mkdir()

    def loop(config):
        spec = json.loads(os.environ["TF_CONFIG"])
        (Path(config["dir"]) / str(spec["task"]["index"])).write_text(json.dumps(spec["cluster"]["worker"]))

    TensorflowTrainer(loop, train_loop_config={"dir": str(seen)}, scaling_config=ScalingConfig(num_workers=2),
                      run_config=RunConfig(storage_path=str(tmp_path / "ray"))).fit()
    hosts = {h.rsplit(":", 1)[0] for f in seen.iterdir() for h in json.loads(f.read_text())}
    assert len(list(seen.iterdir())) == 2 and hosts == {"127.0.0.1"}


def test_evaluate_predict_and_simulate_on_ray_give_the_local_outputs(tmp_path):
    import nibabel as nib
    import numpy as np

    from medflow.cli.main import main
    from tests.pipelines.inference.test_evaluate_equals_predict import RECON, SEG

    root = make_msd(tmp_path / "msd", n=6)
    cfg = write_pipeline(tmp_path / "p.yaml", root, stages="[ingest, preprocess, split, train, evaluate, export]",
                         extra=SEG)
    outputs = {}
    for name in ("local", "ray"):
        os.environ["MEDFLOW_WORKSPACE"] = str(tmp_path / name)
        results, _ = run_pipeline(load_config(cfg, ["split.test_fraction=0.34"]), workers=1, executor=name)
        outputs[name] = {r.name: Path(r.path) for r in results}
    local, remote = outputs["local"]["evaluate"], outputs["ray"]["evaluate"]
    assert local.name == remote.name  # the same key: the same trained model, evaluated
    assert (local / "metrics.csv").read_text() == (remote / "metrics.csv").read_text()
    for pred in (local / "predictions").iterdir():
        np.testing.assert_array_equal(np.asarray(nib.load(pred).dataobj),
                                      np.asarray(nib.load(remote / "predictions" / pred.name).dataobj))
    bundle = outputs["local"]["export"]
    for name in ("local", "ray"):
        assert main(["predict", "--model", str(bundle), "--input", str(root / "imagesTr"), "--output",
                     str(tmp_path / f"pred_{name}"), "--executor", name]) == 0
    for pred in (tmp_path / "pred_local").glob("*.nii.gz"):
        np.testing.assert_array_equal(np.asarray(nib.load(pred).dataobj),
                                      np.asarray(nib.load(tmp_path / "pred_ray" / pred.name).dataobj))
    assert len(list((tmp_path / "pred_ray").glob("*.nii.gz"))) == 6
    (tmp_path / "recon.yaml").write_text(RECON)
    data = {}
    for name in ("local", "ray"):
        os.environ["MEDFLOW_WORKSPACE"] = str(tmp_path / f"recon_{name}")
        results, _ = run_pipeline(load_config(tmp_path / "recon.yaml"), target="simulate", executor=name)
        data[name] = Path(results[-1].path)
    _same_tree(data["local"], data["ray"])  # the same chunks, byte for byte
