"""DICOM end to end: a series dataset with SEG labels through ingest -> export, predict writing a DICOM SEG,
classification rows carrying the SeriesInstanceUID, serving a zipped series, and no identifier anywhere."""

from __future__ import annotations

import base64
import csv
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medflow.cli.main import main
from medflow.data.dicom.seg import write_seg
from medflow.data.dicom.write import write_series
from medflow.data.images import read_image
from tests.data.dicom.helpers import PATIENT_NAME
from tests.helpers import make_cls_dataset, make_msd, read_splits, write_pipeline
from tests.pipelines.inference.test_evaluate_equals_predict import CLS, SEG, STAGES, _predict, _run

SECRET_ID = "PID-7Q3X"  # the raw PatientID: must not leave the dataset either
INSTITUTION = "medflow sample hospital"


def _dicom_msd(src: Path, dest: Path) -> Path:
    """The NIfTI MSD set ``src`` as series folders with SEG labels; two cases per patient."""
    meta = json.loads((src / "dataset.json").read_text())
    classes = {int(k): v for k, v in meta["labels"].items()}
    training = []
    for i, entry in enumerate(meta["training"]):
        name = Path(entry["image"]).name.removesuffix(".nii.gz")
        img = nib.load(str(src / entry["image"]))
        write_series(dest / "imagesTr" / name, np.asarray(img.dataobj), img.affine, modality="MR",
                     patient_name=PATIENT_NAME, patient_id=f"{SECRET_ID}-{i // 2}")
        files = read_image(dest / "imagesTr" / name).files
        label = np.asarray(nib.load(str(src / entry["label"])).dataobj).astype(np.uint8)
        write_seg(dest / "labelsTr" / f"{name}.dcm", label, files, classes)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}.dcm"})
    codes = {"1": ["SCT", "91723000", "Anatomical Structure"]}  # the cube's coded concept; the slab has none
    (dest / "dataset.json").write_text(json.dumps({**meta, "training": training, "label_codes": codes}))
    return dest


def _dicom_csv(src: Path, dest: Path) -> Path:
    """The CSV classification set ``src`` with series folders and no patient_id column."""
    rows = list(csv.DictReader((src / "manifest.csv").open()))
    lines = ["path,label"]
    for i, row in enumerate(rows):
        img = nib.load(str(src / row["path"]))
        write_series(dest / "series" / f"s{i:02d}", np.asarray(img.dataobj), img.affine, modality="MR",
                     patient_name=PATIENT_NAME, patient_id=f"{SECRET_ID}-{row['patient_id']}")
        lines.append(f"series/s{i:02d},{row['label']}")
    (dest / "manifest.csv").write_text("\n".join(lines) + "\n")
    return dest


def _leaks(tmp_path: Path, exclude: tuple) -> list[str]:
    """Files under ``tmp_path`` (workspace, store, outputs; not the datasets) holding an identifier."""
    found = []
    for path in tmp_path.rglob("*"):
        # A DICOM SEG carries its source's patient and study, so the PACS files it with them: it is
        # output for the PACS, like the source, and the one place identifiers belong.
        if path.is_file() and not any(part in exclude for part in path.relative_to(tmp_path).parts) \
                and not path.name.endswith("_seg.dcm"):
            data = path.read_bytes()
            for needle in (PATIENT_NAME, SECRET_ID, INSTITUTION):
                if needle.encode() in data:
                    found.append(f"{path}: {needle}")
    return found


def test_segmentation_on_dicom_series_with_seg_labels_end_to_end(tmp_path, capfd):
    import highdicom as hd

    root = _dicom_msd(make_msd(tmp_path / "nifti", n=6), tmp_path / "dicom")
    stages = _run(tmp_path, write_pipeline(tmp_path / "p.yaml", root, stages=STAGES, extra=SEG),
                  ["split.test_fraction=0.34"])
    ingest = json.loads((stages["ingest"] / "manifest.json").read_text())["cases"]
    assert len(ingest) == 6 and all(c.startswith("dcm-") for c in ingest)
    patients = {v["patient_id"] for v in ingest.values()}
    assert len(patients) == 3 and all(p.startswith("pt-") for p in patients)
    test_ids = read_splits(tmp_path)["test"]
    _predict(stages["export"], root / "imagesTr", tmp_path / "out")
    for case_id in test_ids:
        evaluated = np.asarray(nib.load(str(stages["evaluate"] / "predictions" / f"{case_id}.nii.gz")).dataobj)
        predicted = np.asarray(nib.load(str(tmp_path / "out" / f"{case_id}.nii.gz")).dataobj)
        np.testing.assert_array_equal(predicted, evaluated)
        # The SEG, read with highdicom alone, is the same label map on the source frames.
        record = json.loads((stages["ingest"] / ingest[case_id]["file"]).read_text())
        source = read_image(record["images"][0])
        seg = hd.seg.segread(tmp_path / "out" / f"{case_id}_seg.dcm")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_uid
        assert str(seg.PatientName) == PATIENT_NAME and seg.StudyInstanceUID == source.study_uid
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["cube", "slab"]
        types = [d.SegmentedPropertyTypeCodeSequence[0].CodeValue for d in seg.SegmentSequence]
        assert types == ["91723000", "85756007"]  # dataset.json's label_codes, else the generic Tissue
        stack = seg.get_pixels_by_source_instance([uid for uid, _ in source.instances], combine_segments=True)
        np.testing.assert_array_equal(stack.transpose(2, 1, 0), predicted)
    out, err = capfd.readouterr()
    assert not any(n in out + err for n in (PATIENT_NAME, SECRET_ID, INSTITUTION))
    assert _leaks(tmp_path, exclude=("nifti", "dicom")) == []


def test_classification_on_dicom_takes_patients_from_the_header_and_names_series(tmp_path):
    root = _dicom_csv(make_cls_dataset(tmp_path / "nifti", n=12), tmp_path / "dicom")
    stages = _run(tmp_path, write_pipeline(tmp_path / "p.yaml", root, layout="csv", stages=STAGES, extra=CLS))
    ingest = json.loads((stages["ingest"] / "manifest.json").read_text())["cases"]
    by_patient: dict = {}
    for case_id, case in ingest.items():
        by_patient.setdefault(case["patient_id"], []).append(case_id)
    assert len(by_patient) == 6 and all(len(v) == 2 for v in by_patient.values())  # make_cls_dataset: 2 per patient
    splits = read_splits(tmp_path)
    held_out = {c: "test" for c in splits["test"]} | {c: f"fold{i}" for i, f in enumerate(splits["folds"])
                                                      for c in f["val"]}
    assert set(held_out) == set(ingest)  # every case is held out once: in the test set or one fold
    for cases in by_patient.values():
        assert len({held_out[c] for c in cases}) == 1  # a patient's two series stay together
    _predict(stages["export"], root / "series", tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert len(rows) == 12 and all(row["case"] in ingest for row in rows)  # predict names series as ingest does
    uids = {r["series_uid"] for r in rows}
    assert uids == {pydicom.dcmread(p / "slice_0000.dcm").SeriesInstanceUID for p in (root / "series").iterdir()}
    # Explanation maps of a series lie on the grid it was read on.
    one = next((root / "series").iterdir())
    assert main(["predict", "--model", str(stages["export"]), "--input", str(one), "--output",
                 str(tmp_path / "explained"), "--explain", "occlusion"]) == 0
    (row,) = list(csv.DictReader((tmp_path / "explained" / "predictions.csv").open()))
    explanation = nib.load(str(tmp_path / "explained" / f"{row['case']}_explanation.nii.gz"))
    source = read_image(one)
    assert explanation.shape == source.data.shape and np.allclose(explanation.affine, source.affine)
    assert _leaks(tmp_path, exclude=("nifti", "dicom")) == []


def _zip(folder: Path, extra: dict | None = None) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"study/{path.relative_to(folder)}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    root = make_msd(tmp / "msd", n=4)
    stages = _run(tmp, write_pipeline(tmp / "p.yaml", root, stages=STAGES, extra=SEG), ["split.test_fraction=0.25"])
    return stages["export"], root


def test_served_zipped_series_gives_the_nifti_answer(tmp_path, seg_bundle):
    from medflow.inference.bundle import load_bundle
    from medflow.inference.serving import PipelineModel

    bundle, root = seg_bundle
    img = nib.load(str(root / "imagesTr" / "case_00.nii.gz"))
    write_series(tmp_path / "s", np.asarray(img.dataobj), img.affine, modality="MR")
    model = PipelineModel(load_bundle(bundle, "keras"))
    blob = base64.b64encode((root / "imagesTr" / "case_00.nii.gz").read_bytes()).decode()
    answers = model.predict({"case": ["zip", "nifti", "escape", "junk"],
                             "dicom_zip_b64": [_zip(tmp_path / "s"), None, _zip(tmp_path / "s", {"../evil.dcm": b"x"}),
                                               base64.b64encode(b"not a zip").decode()],
                             "nifti_b64": [None, blob, None, None]})
    rows = answers.set_index("case")
    assert rows.loc["zip", "error"] == "" and rows.loc["nifti", "error"] == ""
    assert rows.loc["zip", "volume_ml_cube"] == pytest.approx(rows.loc["nifti", "volume_ml_cube"])
    assert rows.loc["zip", "labels_nifti_b64"] and "points outside the archive" in rows.loc["escape", "error"]
    assert rows.loc["junk", "error"] == "dicom_zip_b64: not a zip archive"
    small = PipelineModel(load_bundle(bundle, "keras"))
    from medflow.inference import serving

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serving, "MAX_VOXELS", 100)
        refused = small.predict({"dicom_zip_b64": [_zip(tmp_path / "s"), _zip(tmp_path / "s", {"x": b"\0" * 10**7})]})
    assert "over the limit of 100" in refused.loc[0, "error"] and refused.loc[0, "error"].startswith("dicom_zip_b64")
    assert "the zip unpacks to more than" in refused.loc[1, "error"]  # 10 MB of zeros: a zip bomb in small
