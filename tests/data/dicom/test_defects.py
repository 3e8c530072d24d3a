"""Every defect a DICOM series can have is one line naming the series (and the file at fault)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from medflow.data.images import read_image
from medflow.data.nifti import CaseError
from tests.data.dicom.helpers import affine, duplicate, edit, series, volume


def _error(ref, **kw) -> str:
    with pytest.raises(CaseError) as info:
        read_image(ref, **kw)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(ref))
    return message


def test_missing_slice(tmp_path):
    files = series(tmp_path / "s")
    os.remove(files[3])
    assert "missing slice(s): a step of 5 mm" in _error(tmp_path / "s")


def test_duplicate_slice(tmp_path):
    files = series(tmp_path / "s")
    duplicate(files[2], "copy.dcm")
    message = _error(tmp_path / "s")
    assert "duplicate slice positions" in message and "copy.dcm" in message


def test_irregular_spacing(tmp_path):
    files = series(tmp_path / "s", aff=affine(spacing=(1, 1, 2.0)))
    pos = pydicom.dcmread(files[3]).ImagePositionPatient
    edit(files[3], ImagePositionPatient=[pos[0], pos[1], float(pos[2]) + 0.6])
    assert "irregular slice spacing" in _error(tmp_path / "s")


def test_inconsistent_orientation(tmp_path):
    files = series(tmp_path / "s")
    edit(files[1], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    assert "inconsistent orientation" in _error(tmp_path / "s")


def test_inconsistent_pixel_spacing(tmp_path):
    files = series(tmp_path / "s")
    edit(files[4], PixelSpacing=[0.5, 0.5])
    assert "inconsistent pixel spacing" in _error(tmp_path / "s")


def test_inconsistent_matrix_size(tmp_path):
    series(tmp_path / "s")
    other = series(tmp_path / "t", volume(shape=(8, 10, 6)))
    ref = pydicom.dcmread(os.path.join(tmp_path / "s", sorted(os.listdir(tmp_path / "s"))[0]))
    edit(other[5], SeriesInstanceUID=ref.SeriesInstanceUID, StudyInstanceUID=ref.StudyInstanceUID)
    shutil.move(other[5], tmp_path / "s" / "odd.dcm")
    os.remove(tmp_path / "s" / "slice_0005.dcm")
    assert "inconsistent matrix size" in _error(tmp_path / "s")


def test_gantry_tilt_is_refused_then_resampled_on_request(tmp_path):
    aff = affine(spacing=(1.0, 1.0, 2.0))
    tilted = aff.copy()
    tilted[1, 2] = 2.0 * np.tan(np.radians(15))  # each slice shifts anteriorly: a 15-degree gantry tilt
    data = np.zeros((12, 10, 6), np.float32)
    data[6, 4, :] = 1000.0  # a line through the stack, tilted with it
    series(tmp_path / "s", data, tilted, modality="MR")
    assert "gantry tilt of 15.00 degrees" in _error(tmp_path / "s")
    vol = read_image(tmp_path / "s", allow_tilt=True)
    assert any("resampled" in n for n in vol.notices)
    np.testing.assert_allclose(vol.affine[:3, 2], [0, 0, 2.0], atol=1e-6)  # orthogonal now
    # The bright line keeps its world position: on slice k it sits k * 2 tan(15) mm further anterior.
    for k in range(6):
        world = tilted[:3, :3] @ [6, 4, k] + tilted[:3, 3]
        ijk = np.linalg.solve(vol.affine[:3, :3], world - vol.affine[:3, 3])
        assert ijk[2] == pytest.approx(k)
        assert vol.data[int(round(ijk[0])), :, k].max() > 0
        row = vol.data[6, :, k]
        assert abs(float((row * np.arange(10)).sum() / row.sum()) - ijk[1]) < 0.05


def test_localizer_mixed_into_the_series_is_set_aside(tmp_path):
    data = volume()
    files = series(tmp_path / "s", data)
    scout = duplicate(files[0], "scout.dcm")
    edit(scout, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    vol = read_image(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, data)
    assert any("1 localizer image(s) set aside (scout.dcm)" in n for n in vol.notices)


def test_a_localizer_only_series_is_skipped_with_a_notice(tmp_path):
    series(tmp_path / "s")
    scouts = series(tmp_path / "scout", volume(shape=(12, 10, 2)),
                    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    vol = read_image(tmp_path)
    assert any("localizer series of 2 image(s), skipped" in n for n in vol.notices) and len(scouts) == 2


def test_non_image_objects_are_skipped_with_a_notice(tmp_path):
    from pydicom.data import get_testdata_file

    data = volume()
    series(tmp_path / "s", data)
    for name in ("rtstruct.dcm", "reportsi.dcm", "README.txt"):
        shutil.copy(get_testdata_file(name) if name != "README.txt" else __file__, tmp_path / "s" / name)
    vol = read_image(tmp_path / "s")
    np.testing.assert_array_equal(vol.data, data)
    notes = " | ".join(vol.notices)
    assert "RT Structure Set Storage, not an image: skipped" in notes
    assert "Basic Text SR Storage, not an image: skipped" in notes and "README.txt: not DICOM" in notes


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_compressed_transfer_syntaxes_decode_to_the_same_values(tmp_path, syntax):
    data = volume(shape=(64, 48, 3), low=0, high=4000)  # JPEG 2000's resolution levels need 32+ pixels a side
    for path in series(tmp_path / "s", data, modality="MR"):
        ds = pydicom.dcmread(path)
        ds.compress(syntax)
        ds.save_as(path)
    np.testing.assert_array_equal(read_image(tmp_path / "s").data, data)


def test_a_transfer_syntax_without_a_decoder_says_what_it_needs(tmp_path):
    from pydicom.encaps import encapsulate

    files = series(tmp_path / "s")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([bytes(32)])  # a video stream: no image decoder reads it
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
        ds.save_as(path, enforce_file_format=True)
    assert "pixel data in MPEG2 Main Profile / Main Level needs a decoder medflow does not pin" in _error(tmp_path / "s")


def test_truncated_file(tmp_path):
    files = series(tmp_path / "s")
    with open(files[2], "r+b") as fh:
        fh.truncate(os.path.getsize(files[2]) - 100)
    message = _error(tmp_path / "s")
    assert "slice_0002.dcm" in message and ("truncated" in message or "unreadable" in message)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hello")
    assert "no DICOM image series in the folder (not DICOM" in _error(tmp_path / "d")


def test_several_series_need_a_name_and_a_name_picks_one(tmp_path):
    data = volume(seed=9)
    series(tmp_path / "a", data, series_uid="1.2.3.4.1")
    series(tmp_path / "b", volume(seed=10), series_uid="1.2.3.4.2")
    assert "holds 2 image series" in _error(tmp_path)
    np.testing.assert_array_equal(read_image(f"{tmp_path}#1.2.3.4.1").data, data)


def test_single_slice_colour_and_projection_images_are_refused(tmp_path):
    series(tmp_path / "one", volume(shape=(12, 10, 1)))
    assert "1 image(s): a volume needs at least 2 slices" in _error(tmp_path / "one")
    files = series(tmp_path / "cr")
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    assert "no ImagePositionPatient (a projection image" in _error(tmp_path / "cr")
    files = series(tmp_path / "rgb")
    edit(files[0], SamplesPerPixel=3, PhotometricInterpretation="RGB")
    assert "samples per pixel, not a grayscale slice" in _error(tmp_path / "rgb")


def test_multiframe_without_functional_groups_is_refused(tmp_path):
    files = series(tmp_path / "s", modality="MR")
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(files[0])
    for path in files[1:]:
        os.remove(path)
    assert "multi-frame image (2 frames) without per-frame functional groups" in _error(tmp_path / "s")


def test_voxel_limit_refuses_before_decoding(tmp_path):
    series(tmp_path / "s")
    assert "over the limit of 100" in _error(tmp_path / "s", max_voxels=100)
