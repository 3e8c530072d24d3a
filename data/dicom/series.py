"""One DICOM image series to a validated volume on an RAS+ grid.

What dcm2niix and dicom2nifti check, each failure a :class:`CaseError` of one
line naming the series (and the file, where one file is at fault):

* slices sorted by ImagePositionPatient projected on the slice normal (the cross
  product of ImageOrientationPatient's row and column cosines), never by
  InstanceNumber or file name;
* the slice spacing from those positions, never from SliceThickness; duplicate,
  missing (a gap) and irregular positions refused;
* one orientation, pixel spacing and matrix size for the whole series; images
  marked LOCALIZER set aside with a notice when the rest is consistent;
* gantry tilt (the slice stack sheared against its normal) refused, or resampled
  onto an orthogonal grid with ``allow_tilt``;
* RescaleSlope/Intercept applied per slice (CT in HU);
* enhanced multi-frame objects read through their functional groups.

Voxel order: axis 0 runs along a row (the column index), axis 1 down the columns
(the row index), axis 2 through the slices in position order. The affine maps it
to RAS+ mm: DICOM's patient frame is LPS, so the first two world rows flip sign.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pydicom
from scipy import ndimage

from medflow.data.dicom.frames import Frame, frames_of, pixel_frames
from medflow.data.nifti import CaseError, Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORIENTATION_TOL = 1e-3  # direction cosines
SPACING_TOL = 1e-3  # relative, pixel spacing
STEP_TOL = 0.05  # relative, slice steps (dcm2niix allows small jitter)
TILT_TOL_DEG = 0.25


@dataclass
class DicomVolume(Volume):
    """A :class:`Volume` read from a DICOM series (``data`` (X, Y, Z), ``affine`` voxel -> RAS+ mm).

    Attributes:
        modality: the header's Modality ('CT', 'MR', ...).
        series_uid, study_uid: SeriesInstanceUID and StudyInstanceUID.
        instances: (SOPInstanceUID, frame number or None) of each slice, in the order of axis 2.
        files: the file of each slice, in the order of axis 2.
        notices: one line per thing set aside (localizers dropped).
    """

    modality: str = ""
    series_uid: str = ""
    study_uid: str = ""
    instances: list = field(default_factory=list)
    files: list = field(default_factory=list)
    notices: list = field(default_factory=list)


def _normal(orientation: np.ndarray) -> np.ndarray:
    n = np.cross(orientation[:3], orientation[3:])
    return n / np.linalg.norm(n)


def _drop_localizers(where: str, frames: list[Frame]) -> tuple[list[Frame], list[str]]:
    """Frames marked LOCALIZER are set aside when the others agree on one orientation."""
    scouts = [f for f in frames if "LOCALIZER" in f.image_type]
    if not scouts or len(scouts) == len(frames):
        return frames, []
    rest = [f for f in frames if "LOCALIZER" not in f.image_type]
    orientations = {tuple(np.round(f.orientation, 3)) for f in rest}
    if len(orientations) != 1:
        return frames, []  # not consistent without them either: the orientation check reports it
    return rest, [f"{where}: {len(scouts)} localizer image(s) set aside ({os.path.basename(scouts[0].file)}"
                  + (" ..." if len(scouts) > 1 else "") + ")"]


def _check_consistent(where: str, frames: list[Frame]) -> None:
    ref = frames[0]
    for f in frames[1:]:
        if np.abs(f.orientation - ref.orientation).max() > ORIENTATION_TOL:
            n = len({tuple(np.round(g.orientation, 3)) for g in frames})
            raise CaseError(where, f"inconsistent orientation: {len(frames)} images in {n} orientations "
                                   f"({os.path.basename(ref.file)} and {os.path.basename(f.file)} differ; a 3-plane "
                                   f"localizer or mixed acquisitions)")
        if (f.rows, f.columns) != (ref.rows, ref.columns):
            raise CaseError(where, f"inconsistent matrix size: {ref.rows}x{ref.columns} in "
                                   f"{os.path.basename(ref.file)}, {f.rows}x{f.columns} in {os.path.basename(f.file)}")
        if np.abs(f.spacing - ref.spacing).max() > SPACING_TOL * ref.spacing.max():
            raise CaseError(where, f"inconsistent pixel spacing: {ref.spacing.tolist()} mm in "
                                   f"{os.path.basename(ref.file)}, {f.spacing.tolist()} mm in "
                                   f"{os.path.basename(f.file)}")


def slice_geometry(where: str, frames: list[Frame], allow_tilt: bool = False):
    """Sort ``frames`` by position along the normal; check the steps; return (frames, affine, tilt_deg).

    The affine's third column is the mean step between slice positions, so a tilted stack gets a sheared
    affine; ``tilt_deg`` is its angle against the normal.
    """
    normal = _normal(frames[0].orientation)
    depth = np.array([f.position @ normal for f in frames])
    order = np.argsort(depth, kind="stable")
    frames, depth = [frames[i] for i in order], depth[order]
    steps = np.diff(depth)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise CaseError(where, f"duplicate slice positions: {dup.size} position(s) hold more than one image, first at "
                               f"{depth[i]:.2f} mm ({os.path.basename(frames[i].file)}, "
                               f"{os.path.basename(frames[i + 1].file)}); several echoes or time points in one series?")
    step = float(np.median(steps))
    far = np.flatnonzero(np.abs(steps - step) > STEP_TOL * step + 1e-3)
    if far.size:
        i = int(far[0])
        kind = "missing slice(s)" if steps[i] > 1.5 * step else "irregular slice spacing"
        raise CaseError(where, f"{kind}: a step of {steps[i]:.3g} mm after position {depth[i]:.2f} mm "
                               f"({os.path.basename(frames[i].file)}) where the series steps {step:.3g} mm "
                               f"({far.size} irregular step(s))")
    ref = frames[0]
    row, col = ref.orientation[:3], ref.orientation[3:]
    # PixelSpacing is (between rows, between columns): axis 0 (along a row) steps spacing[1].
    stack = (frames[-1].position - ref.position) / (len(frames) - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * ref.spacing[1], col * ref.spacing[0], stack, ref.position
    cos = abs(float(stack @ normal)) / float(np.linalg.norm(stack))
    tilt = float(np.degrees(np.arccos(min(1.0, cos))))
    if tilt > TILT_TOL_DEG and not allow_tilt:
        raise CaseError(where, f"gantry tilt of {tilt:.2f} degrees (slices sheared against their normal); set "
                               f"dicom.allow_tilt: true to resample it onto an orthogonal grid")
    return frames, LPS_TO_RAS @ lps, tilt


def untilt(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample a sheared (tilted) stack onto the orthogonal grid of its first slice (linear).

    Returns:
        (float32 data of the same shape, affine whose third column is the normal times the slice step).
    """
    a = np.asarray(affine, dtype=np.float64)
    normal = np.cross(a[:3, 0], a[:3, 1])
    normal /= np.linalg.norm(normal)
    target = a.copy()
    target[:3, 2] = normal * float(a[:3, 2] @ normal)
    m = np.linalg.inv(a) @ target  # target voxel -> source voxel
    out = ndimage.affine_transform(data.astype(np.float32), m[:3, :3], offset=m[:3, 3], order=1,
                                   mode="constant", cval=float(data.min()))
    return out, target


def read_series(files: list[str], where: str, *, allow_tilt: bool = False, max_voxels: int | None = None,
                datasets: list | None = None, offsets: list | None = None) -> DicomVolume:
    """Read one series' files (any order) into a :class:`DicomVolume`.

    Args:
        files: the series' files (single-frame slices, or one enhanced multi-frame object).
        where: what messages name (the series folder, or ``folder#SeriesInstanceUID``).
        allow_tilt: resample a gantry-tilted stack instead of refusing it.
        max_voxels: refuse a series with more voxels before decoding any pixel data.
        datasets, offsets: the files already parsed up to their pixel data, and where that starts
            (``scan_folder(keep=True)``), so none is parsed twice.

    Raises:
        CaseError: one line naming ``where`` and the problem.
    """
    datasets = list(datasets) if datasets is not None else []
    for path in files[len(datasets):]:
        try:
            datasets.append(pydicom.dcmread(path, force=True))  # the scan vetted it (old files lack a preamble)
        except Exception as err:
            raise CaseError(where, f"{os.path.basename(path)}: unreadable DICOM ({' '.join(str(err).split())[:160]})")
    offsets = list(offsets) if offsets is not None else []
    offsets += [None] * (len(datasets) - len(offsets))
    frames = [f for path, ds, at in zip(files, datasets, offsets) for f in frames_of(where, path, ds, at)]
    frames, notices = _drop_localizers(where, frames)
    if len(frames) < 2:
        raise CaseError(where, f"{len(frames)} image(s): a volume needs at least 2 slices")
    _check_consistent(where, frames)
    frames, affine, tilt = slice_geometry(where, frames, allow_tilt)
    shape = (frames[0].columns, frames[0].rows, len(frames))
    if max_voxels is not None and int(np.prod(shape)) > max_voxels:
        raise CaseError(where, f"{shape} holds {int(np.prod(shape))} voxels, over the limit of {max_voxels}")
    stack = pixel_frames(where, frames)  # (Z, rows, columns), rescaled
    data = stack.transpose(2, 1, 0)  # (columns, rows, Z): a view, no copy
    if tilt > TILT_TOL_DEG:
        data, affine = untilt(data, affine)
        notices.append(f"{where}: gantry tilt of {tilt:.2f} degrees resampled onto an orthogonal grid")
    ds0 = datasets[0]
    return DicomVolume(
        data=data, affine=affine, path=where, nbytes_file=sum(os.path.getsize(p) for p in files),
        modality=str(ds0.get("Modality", "")), series_uid=str(ds0.get("SeriesInstanceUID", "")),
        study_uid=str(ds0.get("StudyInstanceUID", "")), instances=[(f.sop_uid, f.frame) for f in frames],
        files=[f.file for f in frames], notices=notices,
    )
