"""Export end to end: bundles, MLflow pyfunc models, champion aliases, ``medflow predict`` from the registry."""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import mlflow
from medflow.cli.main import main
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.inference.bundle import BundleError, load_bundle
from medflow.inference.serving import PipelineModel, gunzip_b64
from medflow.tasks.base import VolumeCase
from medflow.tracking.runs import MlflowTracker
from mlflow import MlflowClient
from tests.helpers import make_cls_dataset, make_msd, write_pipeline

STAGES = "[ingest, preprocess, split, train, evaluate, export]"
SEG = """
loader: {mode: 2d, patch_size: [16, 16], slice_axis: 2, samples_per_case: 4, batch_size: 4}
augment: {seed: 1, transforms: [{name: flip, p: 0.5}]}
model: {name: unet2d, params: {depth: 2, filters: 4}}
train: {epochs: 2, learning_rate: 0.01, monitor: val_dice, val_samples_per_case: 1, preview_cases: 1}
evaluate: {overlap: 0.25, batch_size: 16, hd95: false}
"""
CLS = """
preprocess: {spacing: [2.0, 2.0, 2.0], crop_to_foreground: false}
loader: {mode: 3d, patch_size: [8, 8, 8], crop: center, samples_per_case: 1, batch_size: 4}
augment: {seed: 1, transforms: []}
model: {name: logistic, params: {downsample: 1, l2: 0.0}}
train: {epochs: 3, learning_rate: 0.05, monitor: val_accuracy, preview_cases: 1}
"""


def _run(tmp, root, extra, overrides=(), layout="msd"):
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDFLOW_WORKSPACE", str(tmp / "workspace"))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 's.db'}")
    cfg = load_config(write_pipeline(tmp / "p.yaml", root, layout=layout, stages=STAGES, extra=extra), list(overrides))
    results, _ = run_pipeline(cfg, tracker=MlflowTracker())
    mp.undo()
    return {"tmp": tmp, "root": root, "cfg": cfg, "store": f"sqlite:///{tmp / 's.db'}",
            "results": {r.name: r for r in results}}


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    return _run(tmp, make_msd(tmp / "msd", n=6), SEG, ["split.test_fraction=0.34"])


def _use(run, monkeypatch):
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(run["tmp"] / "workspace"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run["store"])


def test_bundle_is_self_contained_and_its_runtimes_agree(seg):
    folder = Path(seg["results"]["export"].path)
    assert folder.parent == seg["tmp"] / "workspace" / "exports" / "test"
    assert {"model.keras", "saved_model", "model.onnx", "plan.json", "MODEL_CARD.md", "parity.json",
            "manifest.json"} <= {p.name for p in folder.iterdir()}
    mask = os.umask(0)
    os.umask(mask)
    for name in ("plan.json", "model.keras", "model.onnx", "MODEL_CARD.md", "saved_model/saved_model.pb"):
        assert (folder / name).stat().st_mode & 0o777 == 0o666 & ~mask, name  # readable as any new file
    assert (folder / "saved_model").stat().st_mode & 0o777 == 0o777 & ~mask
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["family"] == "segmentation" and plan["classes"] == ["background", "cube", "slab"]
    assert plan["preprocess"]["spacing"] == [1.0, 1.0, 1.0] and plan["window"]["patch_size"] == [16, 16]
    assert plan["metrics"]["best_val_dice"]["split"] == "val" and plan["metrics"]["test_mean_dice"]["split"] == "test"
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["scale"] == 1.0 and max(parity["max_abs_diff"].values()) < 1e-4  # probabilities
    card = (folder / "MODEL_CARD.md").read_text()
    assert "| test_mean_dice | test |" in card and "| onnx | `model.onnx` |" in card and "Intended use" in card
    image = nib.load(str(seg["root"] / "imagesTr" / "case_00.nii.gz"))
    case = VolumeCase([image.get_fdata().astype(np.float32)], image.affine)
    probs = {rt: load_bundle(folder, rt).infer(case).probabilities for rt in ("keras", "saved_model", "onnx")}
    assert probs["keras"].shape == (*image.shape, 3)  # on the input's own grid
    for rt in ("saved_model", "onnx"):
        assert np.abs(probs[rt] - probs["keras"]).max() < 1e-4


def test_registered_and_champion_with_the_comparison_recorded(seg):
    client = MlflowClient(seg["store"])
    registry = json.loads((Path(seg["results"]["export"].path) / "manifest.json").read_text())["registry"]
    assert registry["version"] == "1" and registry["champion"] is True
    mv = client.get_model_version_by_alias("test", "champion")
    assert str(mv.version) == "1" and "no champion yet" in mv.tags["medflow.champion_comparison"]
    assert mv.tags["medflow.selection_metric"] == "best_val_dice"
    run = client.get_run(seg["results"]["export"].run_id)
    assert {"stage/MODEL_CARD.md", "stage/plan.json"} <= {a.path for a in client.list_artifacts(run.info.run_id, "stage")}


def test_champion_moves_only_when_the_validation_metric_is_better(seg, monkeypatch, tmp_path):
    _use(seg, monkeypatch)
    tracker = MlflowTracker()
    info = {"name": "champ", "runtime": "keras", "metric": "best_val_dice", "greater_is_better": True}
    exp = tracker.experiment_id("champ")
    decisions = []
    for i, value in enumerate((0.5, 0.4, 0.7)):  # three bundles (three export keys)
        folder = shutil.copytree(seg["results"]["export"].path, tmp_path / f"bundle{i}")
        with mlflow.start_run(experiment_id=exp):
            decisions.append(tracker.register_export(folder, {**info, "value": value}))
    assert [d["champion"] for d in decisions] == [True, False, True]
    assert "0.4 vs champion v1 0.5 (higher is better): kept" in decisions[1]["comparison"]
    assert "0.7 vs champion v1 0.5 (higher is better): moved" in decisions[2]["comparison"]
    client = MlflowClient(seg["store"])
    assert str(client.get_model_version_by_alias("champ", "champion").version) == "3"
    assert client.get_model_version("champ", "2").tags["medflow.champion_comparison"].endswith("kept")


def test_registering_a_bundle_again_reuses_its_version(seg, monkeypatch, tmp_path):
    """An export re-run (after a kill mid-registration, or --force) makes no second version of one bundle."""
    _use(seg, monkeypatch)
    tracker = MlflowTracker()
    folder = shutil.copytree(seg["results"]["export"].path, tmp_path / "bundle")
    info = {"name": "again", "runtime": "keras", "metric": "best_val_dice", "greater_is_better": True, "value": 0.5}
    exp = tracker.experiment_id("again")
    records = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=exp):
            records.append(tracker.register_export(folder, info))
    client = MlflowClient(seg["store"])
    (only,) = client.search_model_versions("name = 'again'")
    assert records[0]["version"] == records[1]["version"] == str(only.version) == "1"
    assert records[1]["champion"] and records[1]["comparison"] == records[0]["comparison"]  # decided once
    assert only.tags["medflow.bundle"] == str(folder) and only.tags["medflow.selection_value"] == "0.5"
    assert records[0]["model_uri"] == records[1]["model_uri"] == only.source


def test_predict_from_the_registry_writes_native_label_maps(seg, monkeypatch, tmp_path, capsys):
    _use(seg, monkeypatch)
    inputs = tmp_path / "in"
    inputs.mkdir()
    evaluated = Path(seg["results"]["evaluate"].path) / "predictions"
    cases = sorted(p.name for p in evaluated.iterdir())
    for name in cases:
        shutil.copy(seg["root"] / "imagesTr" / name, inputs / name)
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not a volume")
    out = tmp_path / "out"
    assert main(["predict", "--model", "models:/test@champion", "--input", str(inputs), "--output", str(out)]) == 1
    assert "broken.nii.gz: " in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted([*cases, "quarantine.json"])
    for name in cases:
        got, want, src = (nib.load(str(d / name)) for d in (out, evaluated, inputs))
        assert np.allclose(got.affine, src.affine) and got.shape == src.shape
        # the same path as the evaluate stage: at most a rounding tie may differ
        assert np.mean(np.asarray(got.dataobj) != np.asarray(want.dataobj)) < 1e-3
    assert main(["predict", "--model", "models:/nope@champion", "--input", str(inputs), "--output", str(out)]) == 2


def test_pyfunc_model_takes_paths_bytes_and_arrays(seg, monkeypatch):
    _use(seg, monkeypatch)
    # server files are off unless the loader allows their folder
    model = mlflow.pyfunc.load_model("models:/test@champion", model_config={"allow_paths": [str(seg["root"])]})
    path = seg["root"] / "imagesTr" / "case_01.nii.gz"
    img = nib.load(str(path))
    rows = pd.DataFrame({  # one input per row; the other cells None (JSON null), as a client sends them
        "path": [str(path), None, None, str(path.with_name("missing.nii.gz"))],
        "nifti_b64": [None, base64.b64encode(path.read_bytes()).decode("ascii"), None, None],
        "image": [None, None, img.get_fdata().astype(np.float32), None],
        "affine": [None, None, img.affine, None],
        "case": [None, "sent", "array", None],
    })
    out = model.predict(rows)
    assert list(out["case"]) == ["case_01", "sent", "array", "missing"]
    assert list(out["error"][:3]) == ["", "", ""] and "missing file" in out["error"][3]
    maps = [nib.Nifti1Image.from_bytes(gunzip_b64(b)) for b in out["labels_nifti_b64"][:3]]
    for m in maps:
        assert m.shape == img.shape and np.allclose(m.affine, img.affine)
        assert np.array_equal(np.asarray(m.dataobj), np.asarray(maps[0].dataobj))
    voxel_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000
    assert out["volume_ml_cube"][0] == pytest.approx((np.asarray(maps[0].dataobj) == 1).sum() * voxel_ml)


def test_bad_bundles_are_one_line_errors(tmp_path):
    with pytest.raises(BundleError, match="not an export bundle"):
        load_bundle(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"family": "detection"}))
    with pytest.raises(BundleError, match="unknown model family 'detection'"):
        load_bundle(tmp_path)


def test_classification_export_predicts_a_csv_like_evaluate(tmp_path, monkeypatch):
    root = make_cls_dataset(tmp_path / "cls", n=16)
    run = _run(tmp_path, root, CLS, ["dataset.classes=[normal, lesion]"], layout="csv")
    _use(run, monkeypatch)
    out = tmp_path / "out"
    assert main(["predict", "--model", "models:/test@champion", "--input", str(root / "images"),
                 "--output", str(out), "--runtime", "onnx"]) == 0
    rows = {r["case"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert len(rows) == 16 and set(next(iter(rows.values()))) == {"case", "class", "p_normal", "p_lesion"}
    evaluated = list(csv.DictReader((Path(run["results"]["evaluate"].path) / "test" / "predictions.csv").open()))
    for r in evaluated:  # raw NIfTI through the bundle == preprocessed case through the evaluate stage
        assert float(rows[r["case_id"]]["p_lesion"]) == pytest.approx(float(r["p_lesion"]), abs=1e-4)
        assert rows[r["case_id"]]["class"] == r["predicted_class"]
    served = PipelineModel(load_bundle(Path(run["results"]["export"].path)), allow_paths=[tmp_path]).predict(
        pd.DataFrame([{"path": str(root / "images" / "s01.nii.gz")}]), {"output_dir": str(tmp_path / "srv")})
    assert served["class"][0] == rows["s01"]["class"] and (tmp_path / "srv" / "predictions.csv").exists()
