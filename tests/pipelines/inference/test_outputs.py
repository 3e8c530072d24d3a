"""Inference outputs: each file written whole, on the input's grid, readable by others."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medflow.inference.outputs import image_affine, label_nifti_bytes, read_sinogram, write_labels, write_reconstruction
from tests.helpers import make_affine, save


def test_sinogram_reading_names_the_problem(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones((5, 3)))
    assert read_sinogram(tmp_path / "ok.npy", (5, 3)).dtype == np.float32
    np.save(tmp_path / "shape.npy", np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"sinogram shape \(3, 5\)"):
        read_sinogram(tmp_path / "shape.npy", (5, 3))
    np.save(tmp_path / "nan.npy", np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        read_sinogram(tmp_path / "nan.npy", (5, 3))
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ValueError, match="not a readable .npy"):
        read_sinogram(tmp_path / "text.npy", (5, 3))


def test_reconstruction_pair_is_centred_with_its_pixel_size(tmp_path):
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    write_reconstruction(tmp_path, "r", image, {"pixel_mm": 0.5})
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), image)
    nii = nib.load(str(tmp_path / "r.nii.gz"))
    np.testing.assert_allclose(nii.affine, image_affine((4, 4), {"pixel_mm": 0.5}))
    assert nii.affine[0, 0] == 0.5 and nii.affine[0, 3] == -0.75  # pixel (1.5, 1.5) on the rotation axis
    assert not list(tmp_path.glob(".tmp-*"))


def test_labels_keep_the_reference_header(tmp_path):
    affine = make_affine()
    save(tmp_path / "ref.nii.gz", np.ones((4, 3, 2), np.float32), affine, np.int16)
    labels = np.zeros((4, 3, 2), np.uint8)
    labels[1, 1, 1] = 2
    write_labels(tmp_path / "out" / "l.nii.gz", labels, affine, tmp_path / "ref.nii.gz")
    out = nib.load(str(tmp_path / "out" / "l.nii.gz"))
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    assert out.get_data_dtype() == np.uint8 and np.asarray(out.dataobj)[1, 1, 1] == 2
    raw = gzip.decompress(label_nifti_bytes(labels, affine))
    assert nib.Nifti1Image.from_bytes(raw).shape == (4, 3, 2)
