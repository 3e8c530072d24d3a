"""segcls through the pipeline: masks and weak cases train it, evaluate adds lesion and explanation figures and
the montage, and `medflow predict --explain` writes the maps on each input's own grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from mlflow import MlflowClient
from tests.helpers import make_cls_dataset, run_evaluation

EXTRA = """
preprocess: {spacing: [2.0, 2.0, 2.0], crop_to_foreground: false}
loader: {mode: 3d, patch_size: [8, 8, 8], crop: center, samples_per_case: 1, batch_size: 4}
augment: {seed: 1, transforms: [{name: flip, p: 0.5, axes: [0]}]}
model: {name: segcls, params: {depth: 2, filters: 4, max_filters: 8}}
train: {epochs: 3, learning_rate: 0.01, monitor: val_loss, class_weights: balanced, preview_cases: 1}
evaluate: {montage_cases: 2}
"""


def test_segcls_pipeline_and_explained_predictions(tmp_path):
    root = make_cls_dataset(tmp_path / "cls", n=16, masks=True, weak=(5,))
    store, cfg, ev = run_evaluation(tmp_path, root, EXTRA, ["dataset.classes=[normal, lesion]",
                                                            "dataset.normal_class=normal"], layout="csv")
    folder = Path(ev.path)
    summary = json.loads((folder / "summary.json").read_text())
    test = summary["reports"]["test"]
    assert test["lesions"]["cases_with_masks"] == sum(1 for c in summary["splits"]["test"] if c != "s05")
    assert 0.0 <= test["lesions"]["detection_sensitivity"] <= 1.0
    assert test["explanation"]["method"] == "hirescam" and test["explanation"]["cases"] >= 1
    assert test["explanation"]["layer"] == "lesion"  # segcls: the map its class head reads
    assert (folder / "test" / "explanations.png").stat().st_size > 0
    train = json.loads(next((tmp_path / "workspace/stages/train").glob("*/history.csv")).parent.joinpath(
        "train.json").read_text())
    history = next((tmp_path / "workspace/stages/train").glob("*/history.csv")).read_text().splitlines()[0]
    assert {"val_accuracy", "lesion_dice", "val_lesion_dice", "class_loss"} <= set(history.split(","))
    assert train["model"]["name"] == "segcls"
    assert "refit_head" not in train  # trained on whole windows: the class layer already saw what inference sees
    run = MlflowClient(store).get_run(ev.run_id)
    assert {"test_lesion_dice", "test_detection_sensitivity", "test_explanation_mass_in_lesion"} <= set(
        run.data.metrics)

    from medflow.inference.predict import open_model, predict_files
    from medflow.tasks.explanations import ExplainSettings

    bundle = open_model(str(next((tmp_path / "workspace/stages/train").glob("*/plan.json")).parent))
    images = sorted((root / "images").glob("*.nii.gz"))[:2]
    report = predict_files(bundle, images, tmp_path / "out", explain=ExplainSettings())
    assert report["quarantine"] == [] and len(report["written"]) == 2
    for image in images:
        name = image.name.removesuffix(".nii.gz")
        ref = nib.load(image)
        for kind in ("explanation", "lesion"):
            out = nib.load(tmp_path / "out" / f"{name}_{kind}.nii.gz")
            assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
            data = out.get_fdata()
            assert np.all(np.isfinite(data)) and data.min() >= 0 and data.max() <= 1 + 1e-6
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "explanation" and rows[1].endswith("hirescam")


def test_segcls_trains_on_lesion_patches_and_infers_on_the_window(tmp_path):
    """loader.train_patch_size: the network is built for any size, trains on patches centred on the lesion,
    and evaluate still feeds it the whole inference window."""
    root = make_cls_dataset(tmp_path / "cls", n=12, masks=True)
    overrides = ["dataset.classes=[normal, lesion]", "dataset.normal_class=normal",
                 "loader.train_patch_size=[4, 4, 4]", "loader.foreground_ratio=0.5", "train.epochs=2"]
    _, _, ev = run_evaluation(tmp_path, root, EXTRA, overrides, layout="csv")
    train_dir = next((tmp_path / "workspace/stages/train").glob("*/plan.json")).parent
    assert json.loads((train_dir / "plan.json").read_text())["input_shape"] == [8, 8, 8, 1]
    import keras

    model = keras.saving.load_model(train_dir / "model.keras", safe_mode=True)
    assert tuple(model.inputs[0].shape[1:4]) == (None, None, None)
    summary = json.loads((Path(ev.path) / "summary.json").read_text())
    assert 0.0 <= summary["reports"]["test"]["lesions"]["detection_sensitivity"] <= 1.0
    # Trained on patches: the class layer is refitted on the training cases' whole windows (train.refit_head).
    info = json.loads((train_dir / "train.json").read_text())
    assert info["refit_head"]["cases"] == len(info["train_cases"])
    best = keras.saving.load_model(train_dir / "best.keras", safe_mode=True)
    refit = [w for w in model.get_layer("probabilities").get_weights()]
    assert not all(np.allclose(a, b) for a, b in zip(refit, best.get_layer("probabilities").get_weights()))
    # The body and the lesion map are the training's.
    for a, b in zip(model.get_layer("lesion").get_weights(), best.get_layer("lesion").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_train_patches_need_a_model_that_segments(tmp_path):
    from medflow.core.engine import StageFailed

    root = make_cls_dataset(tmp_path / "cls", n=12, masks=True)
    extra = EXTRA.replace("name: segcls, params: {depth: 2, filters: 4, max_filters: 8}", "name: cnn, params: {}")
    try:
        run_evaluation(tmp_path, root, extra, ["dataset.classes=[normal, lesion]", "dataset.normal_class=normal",
                                               "loader.train_patch_size=[4, 4, 4]"], layout="csv")
    except StageFailed as err:
        assert "loader.train_patch_size" in str(err)
    else:
        raise AssertionError("a cnn trained on patches should stop the train stage")
