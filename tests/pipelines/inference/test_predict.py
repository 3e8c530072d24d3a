"""`medflow predict`'s model and input resolution, and its per-file quarantine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medflow.data.ct.ellipses import EllipsesSpec
from medflow.inference.bundle import BundleError
from medflow.inference.plan import InferencePlan
from medflow.inference.predict import PredictError, list_inputs, open_model, predict_files
from medflow.models.reconstruction import sinogram_model
from medflow.models.registry import build_model


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory):
    """A folder shaped like a train_recon stage's: the reconstructor, its plan, a manifest naming it."""
    folder = tmp_path_factory.mktemp("train")
    spec = EllipsesSpec(size=16, angles=6)
    model = sinogram_model(build_model("fbpconvnet", (16, 16, 1), 1, {"depth": 1, "filters": 2}), spec.geometry())
    model.save(folder / "reconstructor.keras")
    InferencePlan("reconstruction", tuple(model.input_shape[1:]), geometry=spec.geometry()).save(folder)
    (folder / "manifest.json").write_text(json.dumps({"inference_model": "reconstructor.keras"}))
    return folder


def test_a_train_folder_is_a_model_on_keras(train_folder, tmp_path):
    bundle = open_model(str(train_folder))
    assert bundle.family == "reconstruction" and bundle.runtime == "keras"
    assert open_model(str(train_folder / "reconstructor.keras")).plan == bundle.plan
    with pytest.raises(PredictError, match="keras runtime only"):
        open_model(str(train_folder), "onnx")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shape = bundle.plan.input_shape
    np.save(inputs / "a.npy", np.ones(shape, np.float32))
    np.save(inputs / "b.npy", np.ones((2, 2), np.float32))
    (inputs / "notes.txt").write_text("not an input")
    files = list_inputs(inputs, bundle)
    assert [f.name for f in files] == ["a.npy", "b.npy"]
    report = predict_files(bundle, files, tmp_path / "out")
    assert report["written"] == ["a"] and report["quarantine"][0]["path"].endswith("b.npy")
    assert "sinogram shape (2, 2)" in report["quarantine"][0]["problem"]
    assert json.loads((tmp_path / "out" / "quarantine.json").read_text()) == report["quarantine"]
    assert np.load(tmp_path / "out" / "a.npy").shape == (16, 16)


def test_models_that_are_not_there_are_one_line_errors(tmp_path):
    with pytest.raises(PredictError, match="no such model"):
        open_model(str(tmp_path / "missing"))
    (tmp_path / "m.keras").write_text("x")
    with pytest.raises(PredictError, match="no plan.json beside it"):
        open_model(str(tmp_path / "m.keras"))
    (tmp_path / "plan.json").write_text(json.dumps({"family": "detection"}))
    with pytest.raises(BundleError, match="unknown model family 'detection'"):
        open_model(str(tmp_path))


def test_an_input_folder_without_inputs(train_folder, tmp_path):
    with pytest.raises(PredictError, match="no .npy files"):
        list_inputs(tmp_path, open_model(str(train_folder)))


def test_inputs_given_twice_existing_outputs_and_inputs_inside_the_output(train_folder, tmp_path, capsys):
    from medflow.cli.main import main

    bundle = open_model(str(train_folder))
    first, second = tmp_path / "in1", tmp_path / "in2"
    for folder in (first, second):
        folder.mkdir()
        np.save(folder / "a.npy", np.ones(bundle.plan.input_shape, np.float32))
    (first / "same.npy").symlink_to(first / "a.npy")
    with pytest.raises(PredictError, match="given twice"):
        list_inputs([first / "a.npy", first / "a.npy"], bundle)
    with pytest.raises(PredictError, match="given twice"):
        list_inputs([first], bundle)  # a.npy and a link to it
    (first / "same.npy").unlink()
    out = tmp_path / "out"
    args = ["predict", "--model", str(train_folder), "--input", str(first), str(second), "--output", str(out)]
    assert main(args) == 0
    assert "its outputs are named 'a-2'" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a-2.nii.gz", "a-2.npy", "a.nii.gz", "a.npy", "quarantine.json"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 2  # outputs exist: nothing is written
    assert "a.npy: exists (and 4 more); pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main([*args, "--overwrite"]) == 0
    np.save(out / "b.npy", np.ones(bundle.plan.input_shape, np.float32))
    assert main(["predict", "--model", str(train_folder), "--input", str(out / "b.npy"), "--output", str(out),
                 "--overwrite"]) == 2
    assert "lies inside the output folder" in capsys.readouterr().err


def _seg_bundle(tmp_path):
    """A tiny segmentation export bundle (untrained 2D U-Net) and a one-case MSD set to predict on."""
    from medflow.core.config import PreprocessConfig
    from medflow.core.loading import load_config
    from medflow.models.runtimes import export_formats
    from medflow.stages.preprocess import plan_from_config
    from medflow.tasks import TASKS
    from tests.helpers import make_msd, write_pipeline

    cfg = load_config(write_pipeline(tmp_path / "p.yaml", make_msd(tmp_path / "msd", n=1)),
                      ["loader.patch_size=[16,16]"])
    shape = [16, 16, 1]
    export_formats(build_model("unet2d", shape, 3, {"depth": 1, "filters": 2}), tmp_path / "bundle",
                   formats=("keras", "onnx"))
    pre = plan_from_config(PreprocessConfig(spacing=(2.0, 2.0, 2.0)), (2.0, 2.0, 2.0), ("mr",))
    facts = {"classes": ["background", "cube", "slab"], "channels": ["MR"], "input_shape": shape,
             "preprocess": pre.to_json()}
    TASKS["segmentation"].inference_plan(cfg, facts).save(tmp_path / "bundle")
    return tmp_path / "bundle", tmp_path / "msd" / "imagesTr"


def test_predict_on_onnx_runs_without_tensorflow(tmp_path):
    """`medflow predict` on ONNX Runtime (the default, auto, for a bundle with model.onnx, or --runtime onnx)
    never imports TensorFlow (its start-up is most of a one-volume run)."""
    import subprocess
    import sys

    from medflow.cli.main import build_parser, needs_tensorflow

    bundle, images = _seg_bundle(tmp_path)
    args = ["predict", "--model", str(bundle), "--input", str(images), "--output", str(tmp_path / "out"),
            "--runtime", "onnx"]
    assert not needs_tensorflow(build_parser().parse_args(args))
    assert not needs_tensorflow(build_parser().parse_args(args[:-2]))  # auto
    assert needs_tensorflow(build_parser().parse_args(args[:-1] + ["keras"]))
    assert needs_tensorflow(build_parser().parse_args([*args[:-2], "--explain"]))  # auto + HiResCAM: keras
    code = ("import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"  # any import fails
            "from medflow.cli.main import main; sys.exit(main(sys.argv[1:]))")
    for run_args, out in ((args, "out"), (args[:-2], "auto")):
        run_args = [a if a != str(tmp_path / "out") else str(tmp_path / out) for a in run_args]
        done = subprocess.run([sys.executable, "-c", code, *run_args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert (tmp_path / out / "case_00.nii.gz").exists()
        assert "(segmentation, onnx)" in done.stdout


def test_auto_runtime_is_onnx_where_the_bundle_has_it_and_no_gradients_are_needed(tmp_path, train_folder):
    from medflow.inference.predict import locate_model, resolve_runtime

    bundle, _ = _seg_bundle(tmp_path)
    where = locate_model(str(bundle))
    assert where == (bundle, None)
    assert resolve_runtime(where, "auto") == "onnx"
    assert resolve_runtime(where, "auto", gradients=True) == "keras"  # Grad-CAM needs the Keras model
    assert resolve_runtime(where, "saved_model") == "saved_model"  # a runtime named is a runtime used
    assert resolve_runtime(locate_model(str(train_folder)), "auto") == "keras"  # a train folder: keras only
    assert open_model(str(train_folder), "auto").runtime == "keras"
    (bundle / "model.onnx").unlink()
    assert resolve_runtime(where, "auto") == "keras"
    assert open_model(str(bundle), "auto").runtime == "keras"
