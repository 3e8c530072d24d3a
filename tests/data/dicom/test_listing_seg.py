"""DICOM series as dataset cases (CSV and MSD layouts), de-identified ids, and DICOM SEG labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medflow.data.dicom.ids import case_id, patient_key
from medflow.data.dicom.seg import read_seg, write_seg
from medflow.data.images import read_image, read_label
from medflow.data.layouts import list_csv, list_msd
from medflow.data.nifti import CaseError
from tests.data.dicom.helpers import series, volume


def test_a_csv_row_folder_with_two_series_is_two_cases_with_hashed_ids(tmp_path):
    series(tmp_path / "ds" / "study" / "a", series_uid="1.2.9.1", patient_id="PAT-1")
    series(tmp_path / "ds" / "study" / "b", volume(seed=2), series_uid="1.2.9.2", patient_id="PAT-1")
    series(tmp_path / "ds" / "other", volume(seed=3), series_uid="1.2.9.3", patient_id="PAT-2")
    (tmp_path / "ds" / "manifest.csv").write_text("path,label\nstudy,sick\nother,well\n")
    listing = list_csv(str(tmp_path / "ds"), id_salt="site-a")
    cases = {c.case_id: c for c in listing.cases}
    assert set(cases) == {case_id(u, "site-a") for u in ("1.2.9.1", "1.2.9.2", "1.2.9.3")}
    assert all(not c.error for c in cases.values()) and listing.channels == ["CT"]
    a, b = cases[case_id("1.2.9.1", "site-a")], cases[case_id("1.2.9.2", "site-a")]
    assert a.patient_id == b.patient_id == patient_key("PAT-1", "site-a") and a.target == "sick"
    assert a.images[0].endswith("study#1.2.9.1")
    assert case_id("1.2.9.1", "site-a") != case_id("1.2.9.1", "site-b")  # the salt changes every id
    raw = list_csv(str(tmp_path / "ds"), log_identifiers=True)
    assert {c.patient_id for c in raw.cases} == {"PAT-1", "PAT-2"}


def test_a_mask_covers_one_series_and_a_nifti_row_still_needs_a_patient(tmp_path):
    series(tmp_path / "ds" / "two" / "a", series_uid="1.2.9.1")
    series(tmp_path / "ds" / "two" / "b", series_uid="1.2.9.2")
    (tmp_path / "ds" / "m.nii.gz").write_bytes(b"")
    (tmp_path / "ds" / "manifest.csv").write_text("path,label,mask\ntwo,sick,m.nii.gz\nx.nii.gz,well,\n")
    errors = [c.error for c in list_csv(str(tmp_path / "ds")).cases]
    assert "holds 2 image series and its label covers one" in errors[0]
    assert "no patient_id column (a NIfTI row needs one)" in errors[1]


def test_modalities_must_agree(tmp_path):
    series(tmp_path / "ds" / "ct", series_uid="1.2.9.1")
    series(tmp_path / "ds" / "mr", series_uid="1.2.9.2", modality="MR")
    (tmp_path / "ds" / "manifest.csv").write_text("path,label\nct,a\nmr,b\n")
    listing = list_csv(str(tmp_path / "ds"))
    assert listing.channels == ["CT"]
    assert [c.error for c in listing.cases][1] == "modality MRI in the DICOM header, the dataset's channel is CT"


def test_msd_series_entries_with_seg_labels(tmp_path):
    root = tmp_path / "msd"
    data = volume(seed=5)
    series(root / "imagesTr" / "c1", data, series_uid="1.2.9.1", patient_id="P1", modality="MR")
    files = read_image(root / "imagesTr" / "c1").files
    label = (data > 500).astype(np.uint8) + (data > 1500).astype(np.uint8)
    write_seg(root / "labelsTr" / "c1.dcm", label, files, {0: "background", 1: "bright", 2: "brighter"})
    meta = {"name": "T", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "bright", "2": "brighter"},
            "training": [{"image": "./imagesTr/c1", "label": "./labelsTr/c1.dcm"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    (case,) = list_msd(str(root)).cases
    assert case.case_id == case_id("1.2.9.1") and case.patient_id == patient_key("P1") and not case.error
    image = read_image(case.images[0])
    got = read_label(case.label, image, {0: "background", 1: "bright", 2: "brighter"})
    np.testing.assert_array_equal(got.data, label)
    np.testing.assert_array_equal(got.affine, image.affine)


def test_seg_segments_are_matched_to_classes_by_name(tmp_path):
    data = volume(seed=6)
    files = series(tmp_path / "s", data)
    image = read_image(tmp_path / "s")
    label = np.zeros(data.shape, np.uint8)
    label[2:5, 3:6, 1:4] = 3
    write_seg(tmp_path / "seg.dcm", label, files, {0: "bg", 3: "Tumour"})
    np.testing.assert_array_equal(read_seg(tmp_path / "seg.dcm", image.instances, {0: "bg", 3: "tumour"}), label)
    with pytest.raises(CaseError, match="segment 1 'tumour' names none of the classes"):
        read_seg(tmp_path / "seg.dcm", image.instances, {0: "bg", 1: "oedema"})
    series(tmp_path / "t", data, series_uid="1.2.9.77")  # the same pixels, other instances
    with pytest.raises(CaseError, match="SEG does not map onto the series' 6 slices"):
        read_seg(tmp_path / "seg.dcm", read_image(tmp_path / "t").instances)


def test_a_seg_label_on_a_nifti_image_is_refused(tmp_path):
    from tests.helpers import make_affine, save

    files = series(tmp_path / "s")
    write_seg(tmp_path / "seg.dcm", np.zeros((12, 10, 6), np.uint8), files, {0: "bg", 1: "x"})
    save(tmp_path / "img.nii.gz", volume(), make_affine())
    with pytest.raises(CaseError, match="a DICOM SEG label needs a DICOM image series"):
        read_label(tmp_path / "seg.dcm", read_image(tmp_path / "img.nii.gz"))


def test_label_codes_are_checked(tmp_path):
    from medflow.data.layouts import DatasetError
    from tests.helpers import make_msd

    root = make_msd(tmp_path / "msd", n=1)
    meta = json.loads((root / "dataset.json").read_text())
    for codes, problem in (({"7": ["SCT", "1", "x"]}, "is not one of the label values"),
                           ({"1": ["SCT", "1"]}, "must be [scheme, code, meaning]")):
        (root / "dataset.json").write_text(json.dumps({**meta, "label_codes": codes}))
        with pytest.raises(DatasetError, match=problem.replace("[", r"\[").replace("]", r"\]")):
            list_msd(str(root))
    (root / "dataset.json").write_text(json.dumps({**meta, "label_codes": {"1": ["SCT", "85756007", "Tissue"]}}))
    assert list_msd(str(root)).codes == {1: ("SCT", "85756007", "Tissue")}


def test_the_dicom_section_keys_the_ingest_stage(tmp_path):
    from medflow.core.catalog import STAGES
    from medflow.core.loading import load_config
    from tests.helpers import write_pipeline

    path = write_pipeline(tmp_path / "p.yaml", tmp_path)
    keys = {STAGES["ingest"].key(load_config(path, over), {}) for over in
            ([], ["dicom.id_salt=site-a"], ["dicom.allow_tilt=true"], ["dicom.log_identifiers=true"])}
    assert len(keys) == 4  # a salt or a reading rule changes the ids or the volumes: never a stale ingest
