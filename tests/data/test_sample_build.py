"""Sample data from the real MNI152 template that nilearn ships (no network)."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.geometry import axcodes, voxel_spacing
from medflow.data.nifti import read_nifti
from medflow.data.sample.build import _lesion_subject, _tissue_subject, load_template


def test_template_labels():
    t = load_template(2)
    assert t.image.shape == (99, 117, 95) and t.image.max() == pytest.approx(1.0)
    counts = np.bincount(t.label.ravel(), minlength=4)
    assert counts[2] > counts[1] and counts[3] > counts[1] > 0  # GM and WM dominate the brain


def test_one_lesion_subject_is_a_valid_nifti(tmp_path):
    info = _lesion_subject((0, 3, "hypointense_lesion", tmp_path))
    vol = read_nifti(tmp_path / "images" / "lesion_003.nii.gz")
    p = info["params"]
    assert axcodes(vol.affine) == p["orientation"]
    np.testing.assert_allclose(voxel_spacing(vol.affine), p["spacing"])
    assert vol.data.dtype == np.int16 and vol.data.max() > 500
    assert info["kind"] == "hypointense_lesion" and p["lesion"]["contrast"] >= 0.2
    mask = read_nifti(tmp_path / "masks" / "lesion_003.nii.gz")
    np.testing.assert_allclose(mask.affine, vol.affine)
    assert mask.data.shape == vol.data.shape and set(np.unique(mask.data)) == {0, 1}
    # a lesion of 8-20 mm across at 2-4 mm voxels: tens to hundreds of voxels, darker than around it
    voxel_ml = abs(np.linalg.det(vol.affine[:3, :3])) / 1000
    assert 0.1 < mask.data.sum() * voxel_ml < 5.0
    _lesion_subject((0, 4, "normal", tmp_path))
    assert not (tmp_path / "masks" / "lesion_004.nii.gz").exists()


@pytest.mark.slow
def test_one_tissue_subject(tmp_path):
    info = _tissue_subject((0, 0, tmp_path))
    image = read_nifti(tmp_path / "imagesTr" / "brain_000.nii.gz")
    label = read_nifti(tmp_path / "labelsTr" / "brain_000.nii.gz")
    np.testing.assert_allclose(image.affine, label.affine)
    assert set(np.unique(label.data)) == {0, 1, 2, 3}
    assert axcodes(image.affine) == info["params"]["orientation"]


def test_same_seed_same_subject(tmp_path):
    a = _lesion_subject((5, 1, "normal", tmp_path / "a"))
    b = _lesion_subject((5, 1, "normal", tmp_path / "b"))
    c = _lesion_subject((6, 1, "normal", tmp_path / "c"))
    read = lambda d: read_nifti(d / "images" / "lesion_001.nii.gz")  # noqa: E731
    np.testing.assert_array_equal(read(tmp_path / "a").data, read(tmp_path / "b").data)
    assert a == b and c["params"] != a["params"]
