"""Real DICOM files that installed packages ship: pydicom's test series, pydicom-data, nibabel's enhanced MR."""

from __future__ import annotations

import gzip
import itertools
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medflow.data.images import read_image
from medflow.data.nifti import CaseError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DIRS = TEST_FILES / "dicomdirtests"


def _same_grid_as_highdicom(vol, oracle) -> None:
    """Every corner of highdicom's grid (LPS) is a corner of ours (RAS), and both grids have the same size."""
    assert sorted(vol.data.shape) == sorted(oracle.array.shape)
    inv = np.linalg.inv(vol.affine)
    for corner in itertools.product(*[(0, n - 1) for n in oracle.array.shape]):
        world = oracle.affine[:3, :3] @ corner + oracle.affine[:3, 3]
        ijk = inv[:3, :3] @ (world * [-1, -1, 1]) + inv[:3, 3]
        np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-3)
        assert all(int(round(i)) in (0, n - 1) for i, n in zip(ijk, vol.data.shape))


def test_clean_ct_series_matches_highdicom(tmp_path):
    import highdicom as hd

    vol = read_image(DIRS / "98892001" / "CT5N")
    files = sorted((DIRS / "98892001" / "CT5N").iterdir())
    oracle = hd.get_volume_from_series([pydicom.dcmread(f) for f in files], dtype=np.float32)
    _same_grid_as_highdicom(vol, oracle)
    assert vol.modality == "CT" and vol.data.min() < -800  # HU: RescaleIntercept -1024 applied
    assert sorted(vol.data.ravel().tolist()) == sorted(oracle.array.ravel().tolist())


def test_localizers_of_the_same_study_in_the_same_series_are_set_aside(tmp_path):
    shutil.copytree(DIRS / "98892001" / "CT5N", tmp_path / "ct")
    uid = pydicom.dcmread(tmp_path / "ct" / "2062").SeriesInstanceUID
    for name in ("6293", "6924"):  # CT2N: LOCALIZER images, put into the axial series
        ds = pydicom.dcmread(DIRS / "98892001" / "CT2N" / name)
        ds.SeriesInstanceUID = uid
        ds.save_as(tmp_path / "ct" / f"scout_{name}")
    vol = read_image(tmp_path / "ct")
    assert vol.data.shape == (16, 16, 5)
    assert any("2 localizer image(s) set aside" in n for n in vol.notices)


def test_the_localizer_series_beside_its_study_is_skipped(tmp_path):
    shutil.copytree(DIRS / "98892001", tmp_path / "study")
    vol = read_image(tmp_path / "study")
    assert vol.data.shape == (16, 16, 5) and any("localizer series of 2 image(s)" in n for n in vol.notices)


def test_series_with_a_202_mm_gap_is_refused(tmp_path):
    with pytest.raises(CaseError, match=r"missing slice\(s\): a step of 202 mm"):
        read_image(DIRS / "77654033" / "CT2")


def test_mixed_orientations_are_refused(tmp_path):
    with pytest.raises(CaseError, match="holds 3 image series"):
        read_image(DIRS / "98892003" / "MR2")
    with pytest.raises(CaseError, match="inconsistent orientation: 3 images in 3 orientations"):
        read_image(f"{DIRS / '98892003' / 'MR2'}#1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136")


def test_folder_salted_with_non_image_objects(tmp_path):
    shutil.copytree(DIRS / "98892001" / "CT5N", tmp_path / "ct")
    for name in ("rtstruct.dcm", "reportsi.dcm", "rtplan.dcm"):
        shutil.copy(TEST_FILES / name, tmp_path / name)
    shutil.copy(DIRS / "DICOMDIR", tmp_path / "DICOMDIR")
    vol = read_image(tmp_path)
    notes = " | ".join(vol.notices)
    assert vol.data.shape == (16, 16, 5)
    for kind in ("RT Structure Set Storage", "Basic Text SR Storage", "RT Plan Storage", "Media Storage Directory"):
        assert kind in notes


def test_enhanced_mr_of_nibabel_reads_through_its_functional_groups(tmp_path):
    import highdicom as hd

    (tmp_path / "mr").mkdir()
    raw = gzip.open(Path(__import__("nibabel").__file__).parent / "nicom/tests/data/philips_mprage.dcm.gz").read()
    (tmp_path / "mr" / "mprage.dcm").write_bytes(raw)
    vol = read_image(tmp_path / "mr")
    assert vol.data.shape == (256, 256, 176) and vol.modality == "MR"
    _same_grid_as_highdicom(vol, hd.imread(tmp_path / "mr" / "mprage.dcm").get_volume(dtype=np.float32))


def test_enhanced_ct_of_pydicom_data(tmp_path):
    hd = pytest.importorskip("highdicom")
    store = pytest.importorskip("data_store")  # pydicom-data, the test extra
    (tmp_path / "ct").mkdir()
    shutil.copy(Path(store.__file__).parent / "data" / "eCT_Supplemental.dcm", tmp_path / "ct")
    vol = read_image(tmp_path / "ct")
    oracle = hd.imread(tmp_path / "ct" / "eCT_Supplemental.dcm").get_volume(dtype=np.float32)
    _same_grid_as_highdicom(vol, oracle)
    assert vol.data.min() == oracle.array.min() and vol.data.max() == oracle.array.max()


def test_jpeg_lossless_decodes_with_gdcm(tmp_path):
    store = pytest.importorskip("data_store")
    src = pydicom.dcmread(Path(store.__file__).parent / "data" / "JPEG-LL.dcm")
    expect = src.pixel_array
    (tmp_path / "s").mkdir()
    for k in range(3):  # a secondary capture made a series: give each copy a place
        src.ImagePositionPatient, src.ImageOrientationPatient = [0, 0, 2.0 * k], [1, 0, 0, 0, 1, 0]
        src.PixelSpacing, src.SOPInstanceUID = [0.5, 0.5], pydicom.uid.generate_uid()
        src.save_as(tmp_path / "s" / f"{k}.dcm")
    vol = read_image(tmp_path / "s")
    assert src.file_meta.TransferSyntaxUID.name.startswith("JPEG Lossless")
    np.testing.assert_array_equal(vol.data[:, :, 1], expect.T)
