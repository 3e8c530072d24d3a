"""Sinograms from CT volumes in HU (data/ct/volumes.py)."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.ct.physics import fbp_hu
from medflow.data.ct.volumes import CtGeometry, axial_slices, volume_sinograms
from medflow.data.nifti import CaseError, write_nifti


def _phantom_volume(path, flip_x: bool):
    """A water cylinder (0 HU) with a bone rod (+1000 HU) in air, 0.8 x 0.8 x 3 mm, optionally stored flipped."""
    x = (np.arange(100) - 49.5) * 0.8
    xx, yy = np.meshgrid(x, x, indexing="ij")
    slab = np.where(np.hypot(xx, yy) < 30, 0.0, -1000.0)
    slab[np.hypot(xx - 12.0, yy) < 5] = 1000.0  # the rod sits at +x (patient left in RAS)
    data = np.repeat(slab[:, :, None], 4, axis=2)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[:3, 3] = [-39.6, -39.6, 0.0]
    if flip_x:  # the same object stored with the x axis reversed (LPS-like file order)
        data = data[::-1]
        affine = affine @ np.array([[-1, 0, 0, 99], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    write_nifti(path, data.astype(np.float32), affine)


@pytest.mark.parametrize("flip_x", [False, True])
def test_slices_are_canonical_square_and_centred(tmp_path, flip_x):
    _phantom_volume(tmp_path / "ct.nii.gz", flip_x)
    slices, affine = axial_slices(tmp_path / "ct.nii.gz", size=64, pixel_mm=1.6)
    assert slices.shape == (4, 64, 64)
    # Resampled to 1.6 mm, the 60 mm cylinder spans about 37 pixels and the rod sits on the +x side.
    water = np.argwhere(slices[0] > -500)
    assert 30 < np.ptp(water[:, 0]) < 42
    rod = np.argwhere(slices[0] > 500).mean(0)
    world = affine @ np.array([rod[0], rod[1], 0, 1.0])
    assert world[0] == pytest.approx(12.0, abs=1.0) and world[1] == pytest.approx(0.0, abs=1.0)
    assert slices[0, 0, 0] == -1000.0  # padding is air


def test_volume_sinograms_reconstruct_to_hu(tmp_path):
    _phantom_volume(tmp_path / "ct.nii.gz", False)
    geometry = CtGeometry(size=64, pixel_mm=1.6, angles=120, detectors=None, photons=None)
    sinos, slices, _ = volume_sinograms(tmp_path / "ct.nii.gz", geometry, np.random.default_rng(0))
    assert sinos.shape == (4, geometry.to_json()["detectors"], 120)
    recon = fbp_hu(sinos[1], geometry.to_json()["angles_deg"], 64, 1.6)
    inside = (slices[1] == 0.0)
    assert abs(np.median(recon[inside])) < 40.0
    assert np.median(recon[slices[1] > 500]) > 600.0


def test_bad_volume_is_a_one_line_error(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(CaseError, match="bad.nii.gz"):
        axial_slices(tmp_path / "bad.nii.gz", 32, 1.0)
