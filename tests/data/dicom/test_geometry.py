"""DICOM series geometry: slice order, spacing and the LPS -> RAS affine against known volumes and highdicom."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medflow.data.dicom.series import read_series
from medflow.data.geometry import voxel_to_world
from medflow.data.images import read_image
from tests.data.dicom.helpers import affine, series, volume

ORIENTATIONS = {
    "axial": affine(),
    "coronal": affine(perm=(0, 2, 1), spacing=(0.7, 0.7, 3.0)),
    "sagittal": affine(perm=(1, 2, 0), spacing=(1.0, 1.0, 1.5)),
    "oblique": affine(rotation=(20.0, -15.0, 35.0), spacing=(0.6, 1.1, 4.0)),
    "anisotropic_lps": affine(rotation=(0.0, 0.0, 180.0), spacing=(0.5, 0.5, 5.0)),
}


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_series_reads_back_the_volume_it_was_written_from(tmp_path, name):
    data, aff = volume(seed=3), ORIENTATIONS[name]
    series(tmp_path / name, data, aff)
    vol = read_image(tmp_path / name)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, aff, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, np.linalg.norm(aff[:3, :3], axis=0), rtol=1e-6)
    assert vol.modality == "CT" and len(vol.instances) == data.shape[2]


def test_slice_order_comes_from_positions_not_names_or_instance_numbers(tmp_path):
    data = volume(seed=4)
    names = [f"IM{9 - k:02d}" for k in range(data.shape[2])]  # name order is the reverse of slice order
    files = series(tmp_path / "s", data, affine(), file_names=names)
    for k, path in enumerate(files):  # InstanceNumber inverted too
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 100 - k
        ds.save_as(path)
    vol = read_image(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, data)


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path):
    files = series(tmp_path / "s", volume(), affine(spacing=(1, 1, 2.5)))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SliceThickness = "1.0"  # thin slices, 2.5 mm apart: the gap must not be lost
        ds.save_as(path)
    assert read_image(tmp_path / "s").spacing[2] == pytest.approx(2.5)


def test_voxel_to_world_hits_a_bright_voxel_at_a_known_place(tmp_path):
    aff = ORIENTATIONS["oblique"]
    data = np.zeros((12, 10, 6), np.float32)
    data[7, 2, 4] = 1000.0
    series(tmp_path / "s", data, aff)
    vol = read_image(tmp_path / "s")
    world = voxel_to_world(aff, [[7, 2, 4]])[0]
    found = np.argwhere(vol.data == 1000.0)[0]
    np.testing.assert_allclose(voxel_to_world(vol.affine, [found])[0], world, atol=1e-6)
    # DICOM's own frame: ImagePositionPatient of slice 4 is that slice's first pixel in LPS.
    ds = pydicom.dcmread(vol.files[4])
    lps = np.array([-1, -1, 1]) * voxel_to_world(vol.affine, [[0, 0, 4]])[0]
    np.testing.assert_allclose(np.asarray(ds.ImagePositionPatient, float), lps, atol=1e-6)


@pytest.mark.parametrize("name", ["oblique", "coronal", "anisotropic_lps"])
def test_geometry_agrees_with_highdicom(tmp_path, name):
    import highdicom as hd

    data = volume(seed=5)
    files = series(tmp_path / "s", data, ORIENTATIONS[name], file_names=[f"f{k}" for k in (3, 5, 0, 1, 4, 2)])
    vol = read_series(files, "s")
    oracle = hd.get_volume_from_series([pydicom.dcmread(f) for f in files], dtype=np.float32)
    # Every highdicom voxel (slice, row, column) must land on our voxel of the same value.
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in oracle.array.shape], indexing="ij"), -1).reshape(-1, 3)
    world_lps = idx @ oracle.affine[:3, :3].T + oracle.affine[:3, 3]
    ours = np.rint((world_lps * [-1, -1, 1] - vol.affine[:3, 3]) @ np.linalg.inv(vol.affine[:3, :3]).T).astype(int)
    np.testing.assert_array_equal(vol.data[tuple(ours.T)], oracle.array[tuple(idx.T)])


@pytest.mark.parametrize("modality,slope,intercept", [("CT", 0.5, -1024.0), ("CT", 1.0, -1024.0), ("MR", 2.5, 10.0)])
def test_rescale_slope_and_intercept_are_applied(tmp_path, modality, slope, intercept):
    data = volume(seed=6, low=-1000, high=3000).astype(np.float64) * slope + intercept
    series(tmp_path / "s", data, affine(), modality=modality, slope=slope, intercept=intercept)
    vol = read_image(tmp_path / "s")
    np.testing.assert_allclose(vol.data, data, atol=1e-3)
    assert vol.modality == modality and vol.data.dtype == np.float32


def test_rescale_may_differ_per_slice(tmp_path):
    data = volume(seed=7)
    files = series(tmp_path / "s", data, affine(), slope=1.0, intercept=0.0)
    ds = pydicom.dcmread(files[2])
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-5"
    ds.save_as(files[2])
    expect = data.copy()
    expect[:, :, 2] = data[:, :, 2] * 2 - 5
    np.testing.assert_allclose(read_image(tmp_path / "s").data, expect)


def test_untouched_values_keep_the_stored_type(tmp_path):
    data = volume(seed=8, low=0, high=4000)
    series(tmp_path / "s", data, affine(), modality="MR")
    assert read_image(tmp_path / "s").data.dtype == np.int16


def test_twelve_bit_ct_in_hu_stays_int16_and_matches_pydicom(tmp_path):
    data = volume(seed=9, low=-1024, high=3071)
    files = series(tmp_path / "s", data, affine(), intercept=-1024.0, bits_stored=12, signed=False)
    vol = read_image(tmp_path / "s")
    assert vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, data)
    # Garbage in the 4 unused high bits is not pixel data: masked, as pydicom does.
    ds = pydicom.dcmread(files[0])
    raw = np.frombuffer(ds.PixelData, "<u2").copy()
    ds.PixelData = (raw | 0xF000).tobytes()
    ds.save_as(files[0])
    stored = pydicom.dcmread(files[0]).pixel_array
    np.testing.assert_array_equal(read_image(tmp_path / "s").data[:, :, 0].T + 1024, stored)


def test_signed_twelve_bits_are_sign_extended_as_pydicom_does(tmp_path):
    data = volume(seed=10, low=-2000, high=2000)
    files = series(tmp_path / "s", data, affine(), modality="MR", bits_stored=12)
    ds = pydicom.dcmread(files[1])
    ds.PixelData = (np.frombuffer(ds.PixelData, "<i2") & 0x0FFF).astype("<u2").tobytes()  # high bits cleared
    ds.save_as(files[1])
    np.testing.assert_array_equal(read_image(tmp_path / "s").data[:, :, 1].T, pydicom.dcmread(files[1]).pixel_array)
    np.testing.assert_array_equal(read_image(tmp_path / "s").data[:, :, 1], data[:, :, 1])
