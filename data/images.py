"""Read an image source, whatever it is: a NIfTI file, or a DICOM series folder.

An image reference in a dataset, a stage record or a predict input is one of

* ``scan.nii.gz``: a NIfTI file (:func:`medflow.data.nifti.read_nifti`);
* ``folder/``: a folder holding one DICOM image series, at any depth;
* ``folder#<SeriesInstanceUID>``: one series of a folder that holds several.

A label reference is a NIfTI file on the image's grid, or a DICOM SEG file
(``.dcm``) that references the image's series.
"""

from __future__ import annotations

import os

from medflow.data.dicom.scan import is_dicom_file, scan_folder
from medflow.data.dicom.series import DicomVolume, read_series
from medflow.data.nifti import CaseError, Volume, read_nifti


def split_ref(ref: str) -> tuple[str, str | None]:
    """(folder or file, SeriesInstanceUID or None) of an image reference."""
    from medflow.data.dicom.ids import is_uid

    head, sep, tail = str(ref).rpartition("#")
    if sep and is_uid(tail) and os.path.isdir(head):
        return head, tail
    return str(ref), None


def read_dicom(ref: str, *, allow_tilt: bool = False, max_voxels: int | None = None) -> DicomVolume:
    """The one series a reference names (CaseError when a folder holds none, or several and names none)."""
    folder, uid = split_ref(ref)
    if not os.path.isdir(folder):
        raise CaseError(ref, "missing folder" if not os.path.lexists(folder) else "not a folder")
    series, notices = scan_folder(folder, keep=True)
    if uid is not None:
        series = [s for s in series if s.uid == uid]
        if not series:
            raise CaseError(ref, f"no image series {uid} in the folder")
    if not series:
        why = f" ({notices[0].split(': ', 1)[-1]}{' ...' if len(notices) > 1 else ''})" if notices else ""
        raise CaseError(ref, f"no DICOM image series in the folder{why}")
    if len(series) > 1:
        raise CaseError(ref, f"the folder holds {len(series)} image series; name one as "
                             f"{os.path.basename(folder)}#<SeriesInstanceUID> ({', '.join(s.uid for s in series[:3])})")
    vol = read_series(series[0].files, ref, allow_tilt=allow_tilt, max_voxels=max_voxels,
                      datasets=series[0].datasets, offsets=series[0].offsets)
    vol.notices[:0] = notices
    return vol


def read_image(ref: str | os.PathLike, *, expect_ndim: int = 3, max_voxels: int | None = None,
               allow_tilt: bool = False) -> Volume:
    """The volume a reference names: (X, Y, Z) data and its voxel -> RAS+ affine.

    Raises:
        CaseError: one line naming the file or series and the problem.
    """
    ref = str(ref)
    path, uid = split_ref(ref)
    if uid is not None or os.path.isdir(path):
        if expect_ndim != 3:
            raise CaseError(ref, "a DICOM series is one channel; a multi-channel model needs one series per channel")
        return read_dicom(ref, allow_tilt=allow_tilt, max_voxels=max_voxels)
    if os.path.isfile(path) and is_dicom_file(path):
        raise CaseError(ref, "a single DICOM file; give the folder of its series")
    return read_nifti(ref, expect_ndim=expect_ndim, max_voxels=max_voxels)


def read_label(ref: str | os.PathLike, image: Volume, classes: dict[int, str] | None = None) -> Volume:
    """A label map for ``image``: a NIfTI file, or a DICOM SEG of ``image``'s series (then on its grid)."""
    ref = str(ref)
    if os.path.isfile(ref) and is_dicom_file(ref):
        if not isinstance(image, DicomVolume):
            raise CaseError(ref, "a DICOM SEG label needs a DICOM image series")
        from medflow.data.dicom.seg import read_seg

        data = read_seg(ref, image.instances, classes)
        return Volume(data=data, affine=image.affine, path=ref, nbytes_file=os.path.getsize(ref))
    return read_nifti(ref)
