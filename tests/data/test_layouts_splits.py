"""Dataset listings (MSD, nnU-Net v2, CSV), path safety, duplicates, and patient-level splits."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest

from medflow.data.layouts import DatasetError, list_csv, list_msd
from medflow.data.splits import SplitCase, SplitError, make_splits
from tests.helpers import add_msd_case, make_affine, make_msd, save


def test_msd_listing(tmp_path):
    root = make_msd(tmp_path / "d", n=3)
    listing = list_msd(str(root))
    assert [c.case_id for c in listing.cases] == ["case_00", "case_01", "case_02"]
    assert listing.classes == {0: "background", 1: "cube", 2: "slab"}
    assert listing.channels == ["MRI"] and listing.task == "segmentation"
    assert all(os.path.isabs(c.images[0]) and c.label.endswith("case_00.nii.gz") for c in listing.cases[:1])


def test_msd_outside_root_and_duplicates(tmp_path):
    root = make_msd(tmp_path / "d", n=2)
    outside = save(tmp_path / "elsewhere" / "x.nii.gz", np.ones((4, 4, 4)), make_affine())
    add_msd_case(root, "up", image_path="../elsewhere/x.nii.gz")
    add_msd_case(root, "abs", image_path=str(outside))
    os.symlink(outside, root / "imagesTr" / "link.nii.gz")
    add_msd_case(root, "link", image_path="./imagesTr/link.nii.gz")
    add_msd_case(root, "dup", image_path="./imagesTr/case_00.nii.gz")
    errors = {c.source: c.error for c in list_msd(str(root)).cases}
    assert errors["../elsewhere/x.nii.gz"] == "path resolves outside the dataset root"
    assert errors[str(outside)] == "path resolves outside the dataset root"
    assert errors["./imagesTr/link.nii.gz"] == "path resolves outside the dataset root"
    dup = [c for c in list_msd(str(root)).cases if c.case_id == "case_00"]
    assert dup[0].error is None and "duplicate case id 'case_00'" in dup[1].error


def test_nnunet_v2_listing(tmp_path):
    root = tmp_path / "v2"
    aff = make_affine()
    for case in ("a", "b"):
        for ch in range(2):
            save(root / "imagesTr" / f"{case}_{ch:04d}.nii.gz", np.ones((4, 4, 4)), aff)
        save(root / "labelsTr" / f"{case}.nii.gz", np.zeros((4, 4, 4)), aff, np.uint8)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "tumor": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    listing = list_msd(str(root))
    assert listing.channels == ["CT", "PET"] and listing.classes == {0: "background", 1: "tumor"}
    assert [len(c.images) for c in listing.cases] == [2, 2]
    assert listing.cases[0].images[1].endswith("a_0001.nii.gz")


def test_bad_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json: unreadable JSON"):
        list_msd(str(tmp_path))


def test_csv_listing(tmp_path):
    (tmp_path / "manifest.csv").write_text(
        "path,label,patient_id\n"
        "images/a.nii.gz,normal,p1\n"
        "images/b.nii.gz,lesion,p1\n"
        "images/c.nii.gz,unicorn,p2\n"
        "../d.nii.gz,normal,p3\n"
        "other/a.nii.gz,normal,p4\n"
        "images/e.nii.gz,normal,\n")
    listing = list_csv(str(tmp_path), classes=["normal", "lesion"])
    errors = {c.source: c.error for c in listing.cases}
    assert errors["images/a.nii.gz"] is None and errors["images/b.nii.gz"] is None
    assert "label 'unicorn' is not one of the declared classes" in errors["images/c.nii.gz"]
    assert "outside the dataset root" in errors["../d.nii.gz"]
    assert "duplicate case id 'a'" in errors["other/a.nii.gz"]
    assert "empty patient_id" in errors["images/e.nii.gz"]
    assert listing.classes == {0: "normal", 1: "lesion"}
    (tmp_path / "bad.csv").write_text("file,label\nx,y\n")
    with pytest.raises(DatasetError, match="missing column"):
        list_csv(str(tmp_path), "bad.csv")


def _cases(n_patients=30, per_patient=2, classes=("a", "b", "c")):
    return [SplitCase(f"p{p:02d}_s{s}", f"p{p:02d}", classes[p % len(classes)])
            for p in range(n_patients) for s in range(per_patient)]


def test_splits_by_patient_stratified_and_seeded():
    cases = _cases()
    s = make_splits(cases, seed=3, test_fraction=0.2, folds=3)
    patient = {c.case_id: c.patient_id for c in cases}
    test_patients = {patient[c] for c in s["test"]}
    assert len(test_patients) == 6 and len(s["test"]) == 12
    assert Counter(s["counts"]["test"].values()) == Counter({4: 3})  # 2 patients x 2 scans per class
    val_seen = []
    for fold in s["folds"]:
        tr, va = {patient[c] for c in fold["train"]}, {patient[c] for c in fold["val"]}
        assert not tr & va and not (tr | va) & test_patients
        val_seen += fold["val"]
    trainval = sorted(c.case_id for c in cases if c.case_id not in s["test"])
    assert sorted(val_seen) == trainval  # every case in exactly one validation fold
    assert make_splits(list(reversed(cases)), seed=3, test_fraction=0.2, folds=3) == s  # order-free
    assert make_splits(cases, seed=4, test_fraction=0.2, folds=3)["test"] != s["test"]


def test_single_fold_and_fixed_splits():
    s = make_splits(_cases(10, 1), seed=0, test_fraction=0.0, folds=1, val_fraction=0.3)
    assert s["test"] == [] and len(s["folds"][0]["val"]) == 3 and len(s["folds"][0]["train"]) == 7
    fixed = [SplitCase("a", "p1", "x", "train"), SplitCase("b", "p2", "y", "val"), SplitCase("c", "p3", "x", "test")]
    assert make_splits(fixed, seed=0)["folds"] == [{"train": ["a"], "val": ["b"]}]
    with pytest.raises(SplitError, match="several splits"):
        make_splits(fixed + [SplitCase("d", "p1", "x", "test")], seed=0)
    with pytest.raises(SplitError, match="too few"):
        make_splits(_cases(3, 1), seed=0, test_fraction=0.3, folds=5)
