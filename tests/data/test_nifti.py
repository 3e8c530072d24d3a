"""Validated NIfTI reading: every bad-input case gives one line naming the file and the problem."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from medflow.data.nifti import CaseError, read_nifti, write_nifti
from tests.helpers import make_affine, save


def _expect(path, fragment):
    with pytest.raises(CaseError) as info:
        read_nifti(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path) + ": ")
    assert fragment in msg, msg
    return msg


def test_roundtrip_keeps_data_affine_and_scaling(tmp_path):
    aff = make_affine()
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    write_nifti(tmp_path / "a.nii.gz", data, aff)
    vol = read_nifti(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, aff)
    assert vol.spacing == pytest.approx((1.5, 0.8, 2.5))
    # scl_slope/scl_inter are applied, as nibabel does
    import nibabel as nib

    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), aff)
    img.header.set_slope_inter(2.0, -5.0)
    nib.save(img, tmp_path / "s.nii")
    np.testing.assert_allclose(read_nifti(tmp_path / "s.nii").data, np.arange(24).reshape(2, 3, 4) * 2.0 - 5.0)


def test_trailing_singleton_axis_is_3d(tmp_path):
    save(tmp_path / "t.nii.gz", np.ones((4, 5, 6, 1), np.float32), make_affine())
    assert read_nifti(tmp_path / "t.nii.gz").data.shape == (4, 5, 6)


def test_missing_and_empty_and_not_nifti(tmp_path):
    _expect(tmp_path / "nope.nii.gz", "missing file")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    _expect(tmp_path / "empty.nii.gz", "empty file")
    (tmp_path / "text.nii").write_text("hello, this is not an image" * 30)
    _expect(tmp_path / "text.nii", "not NIfTI")
    (tmp_path / "plain.nii.gz").write_text("not gzip")
    _expect(tmp_path / "plain.nii.gz", "not gzip")
    (tmp_path / "image.png").write_bytes(b"\x89PNG....")
    _expect(tmp_path / "image.png", "not NIfTI")


def test_truncated_and_corrupt_gzip(tmp_path):
    path = save(tmp_path / "a.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)), make_affine(), np.float32)
    blob = path.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(blob[: len(blob) // 2])
    _expect(tmp_path / "trunc.nii.gz", "truncated or corrupt gzip")
    bad = bytearray(blob)
    for i in range(len(bad) // 2, len(bad) // 2 + 64):
        bad[i] ^= 0x5A
    (tmp_path / "corrupt.nii.gz").write_bytes(bytes(bad))
    _expect(tmp_path / "corrupt.nii.gz", "truncated or corrupt gzip")


def _set_dims(raw: bytes, dims) -> bytes:
    # dim[0..7] is 8 int16 at byte offset 40 of a NIfTI-1 header
    return raw[:40] + struct.pack("<8h", len(dims), *dims, *([1] * (7 - len(dims)))) + raw[56:]


def test_header_dims_larger_than_data(tmp_path):
    path = save(tmp_path / "a.nii", np.ones((8, 8, 8), np.float32), make_affine())
    (tmp_path / "big.nii").write_bytes(_set_dims(path.read_bytes(), (8, 8, 9)))
    _expect(tmp_path / "big.nii", "need")
    # A gzip claiming 30000^3 float32 voxels must fail before anything of that size is allocated.
    huge = gzip.compress(_set_dims(path.read_bytes(), (30000, 30000, 30000)))
    (tmp_path / "huge.nii.gz").write_bytes(huge)
    msg = _expect(tmp_path / "huge.nii.gz", "holds at most")
    assert "TiB" in msg
    # Claims less than the data holds: also a mismatch.
    (tmp_path / "small.nii.gz").write_bytes(gzip.compress(_set_dims(path.read_bytes(), (8, 8, 7))))
    _expect(tmp_path / "small.nii.gz", "larger than header dims")


def test_wrong_dimensionality_and_zero_axis(tmp_path):
    save(tmp_path / "2d.nii.gz", np.ones((8, 8), np.float32), make_affine())
    _expect(tmp_path / "2d.nii.gz", "2D image")
    save(tmp_path / "slice.nii.gz", np.ones((8, 8, 1), np.float32), make_affine())
    _expect(tmp_path / "slice.nii.gz", "2D image")
    save(tmp_path / "4d.nii.gz", np.ones((8, 8, 8, 3), np.float32), make_affine())
    _expect(tmp_path / "4d.nii.gz", "4D image")
    path = save(tmp_path / "z.nii", np.ones((8, 8, 8), np.float32), make_affine())
    (tmp_path / "zero.nii").write_bytes(_set_dims(path.read_bytes(), (8, 0, 8)))
    _expect(tmp_path / "zero.nii", "zero-size axis")


def test_nan_inf_voxels(tmp_path):
    data = np.ones((6, 6, 6), np.float32)
    data[1, 2, 3] = np.nan
    data[2, 2, 2] = np.inf
    save(tmp_path / "nan.nii.gz", data, make_affine())
    _expect(tmp_path / "nan.nii.gz", "2 NaN/Inf voxels")


def test_case_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(CaseError("/x/y.nii", "empty file")))
    assert (err.path, err.problem, str(err)) == ("/x/y.nii", "empty file", "/x/y.nii: empty file")
