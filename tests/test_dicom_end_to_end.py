"""Slow: the DICOM version of the segmentation sample set, ingest -> train -> evaluate -> export -> predict with SEG."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import run_medflow

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_dicom_sample_set_end_to_end(tmp_path):
    import highdicom as hd

    env = dict(os.environ, MEDFLOW_WORKSPACE=str(tmp_path / "ws"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/s.db")
    run_medflow("sample-data", "--only", "brain_tissue", "--format", "dicom", env=env)
    data = tmp_path / "ws/sample/demo/brain_tissue_dicom"
    out = run_medflow("run", str(ROOT / "pipelines/configs/segmentation.yaml"), "--profile", "demo",
                   "--set", f"dataset.root={data}", env=env).stdout
    row = next(line.split() for line in out.split("summary:")[1].splitlines() if line.strip().startswith("segm"))
    assert row[-1] == "beats", out  # the network beats multi-Otsu on the held-out series, as on NIfTI
    export = next(Path(p) for p in (tmp_path / "ws/exports/segmentation").iterdir())
    split = next((tmp_path / "ws/stages/split").glob("*/splits.json"))
    test_ids = json.loads(split.read_text())["test"]
    run_medflow("predict", "--model", str(export), "--input", str(data / "imagesTr"), "--output", str(tmp_path / "out"),
             env=env)
    evaluate = next((tmp_path / "ws/stages/evaluate").iterdir())
    for case_id in test_ids:
        predicted = np.asarray(nib.load(str(tmp_path / "out" / f"{case_id}.nii.gz")).dataobj)
        evaluated = np.asarray(nib.load(str(evaluate / "predictions" / f"{case_id}.nii.gz")).dataobj)
        np.testing.assert_array_equal(predicted, evaluated)
        seg = hd.seg.segread(tmp_path / "out" / f"{case_id}_seg.dcm")
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["csf_other", "gray_matter", "white_matter"]
        assert int(seg.NumberOfFrames) == 3 * predicted.shape[2]  # a frame per segment and slice, empty ones kept
