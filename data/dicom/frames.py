"""The frames of DICOM image objects: where each lies, and its decoded, rescaled pixels.

A classic series has one frame per file, with its geometry in the top-level
attributes. An enhanced multi-frame object (Enhanced CT/MR) keeps many frames in
one file, with the geometry of each in the per-frame (or shared) functional
groups. Both become :class:`Frame` records, so the series reader checks and
sorts them alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medflow.data.nifti import CaseError

# What decodes each compressed transfer syntax among the pinned plugins (pydicom picks them up).
_DECODERS = {
    "JPEG Baseline": "python-gdcm",
    "JPEG Extended": "python-gdcm",
    "JPEG Lossless": "python-gdcm",
    "JPEG-LS": "pyjpegls",
    "JPEG 2000": "pylibjpeg-openjpeg",
    "RLE": "pydicom (built in)",
    "Deflated": "pydicom (built in)",
}


_NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass
class Frame:
    """One 2D frame of a series.

    Attributes:
        file: the file holding it.
        frame: 1-based frame number in a multi-frame object, None for a single-frame file.
        sop_uid: SOPInstanceUID of the object.
        position: (3,) ImagePositionPatient, LPS mm (the centre of the first transmitted pixel).
        orientation: (6,) ImageOrientationPatient: row then column direction cosines.
        spacing: (2,) PixelSpacing: between rows, between columns (mm).
        rows, columns: matrix size.
        slope, intercept: the modality rescale (stored value -> HU or other units).
        image_type: ImageType values, upper case.
        dataset: the decoded object the pixels come from (without its PixelData when parsed up to it).
        pixel_offset: where the PixelData element starts in ``file`` (None: in ``dataset``, or unknown).
    """

    file: str
    frame: int | None
    sop_uid: str
    position: np.ndarray
    orientation: np.ndarray
    spacing: np.ndarray
    rows: int
    columns: int
    slope: float
    intercept: float
    image_type: tuple
    dataset: Dataset
    pixel_offset: int | None = None


def _group(ds: Dataset, per: Dataset | None, name: str):
    """The first item of functional group ``name``: the frame's own, else the shared one."""
    for holder in (per, ds.get("SharedFunctionalGroupsSequence", [None])[0]):
        if holder is not None and name in holder and len(holder[name].value):
            return holder[name][0]
    return None


def frames_of(where: str, path: str, ds: Dataset, pixel_offset: int | None = None) -> list[Frame]:
    """The frames of one decoded object (pixels not yet decoded); CaseError when it has no usable geometry.
    ``pixel_offset``: where its PixelData element starts in the file, for a dataset parsed up to it."""
    name = os.path.basename(path)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise CaseError(where, f"{name}: {ds.get('PhotometricInterpretation', 'colour')} image with "
                               f"{ds.SamplesPerPixel} samples per pixel, not a grayscale slice")
    image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or []))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    common = dict(file=path, sop_uid=str(ds.get("SOPInstanceUID", "")), rows=int(ds.Rows), columns=int(ds.Columns),
                  image_type=image_type, dataset=ds, pixel_offset=pixel_offset)
    if "PerFrameFunctionalGroupsSequence" in ds:
        per_frame = ds.PerFrameFunctionalGroupsSequence
        if len(per_frame) != n_frames:
            raise CaseError(where, f"{name}: {len(per_frame)} per-frame functional groups for {n_frames} frames")
        frames = []
        for i, per in enumerate(per_frame):
            pos, ori, meas = (_group(ds, per, g) for g in
                              ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"))
            if pos is None or ori is None or meas is None or "PixelSpacing" not in meas:
                raise CaseError(where, f"{name}: enhanced multi-frame image whose frame {i + 1} has no plane "
                                       f"position, orientation or pixel spacing in its functional groups")
            vt = _group(ds, per, "PixelValueTransformationSequence")
            frames.append(Frame(frame=i + 1, position=np.asarray(pos.ImagePositionPatient, dtype=np.float64),
                                orientation=np.asarray(ori.ImageOrientationPatient, dtype=np.float64),
                                spacing=np.asarray(meas.PixelSpacing, dtype=np.float64),
                                slope=float(vt.get("RescaleSlope", 1) if vt else 1),
                                intercept=float(vt.get("RescaleIntercept", 0) if vt else 0), **common))
        return frames
    if n_frames > 1:
        raise CaseError(where, f"{name}: multi-frame image ({n_frames} frames) without per-frame functional "
                               f"groups: its frames have no positions, so it is refused")
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
    if missing:
        raise CaseError(where, f"{name}: no {', '.join(missing)} (a projection image or secondary capture, "
                               f"not a cross-sectional slice)")
    return [Frame(frame=None, position=np.asarray(ds.ImagePositionPatient, dtype=np.float64),
                  orientation=np.asarray(ds.ImageOrientationPatient, dtype=np.float64),
                  spacing=np.asarray(ds.PixelSpacing, dtype=np.float64),
                  slope=float(ds.get("RescaleSlope", 1) or 1), intercept=float(ds.get("RescaleIntercept", 0) or 0),
                  **common)]


def _from_file(frame: Frame, syntax, need: int, name: str, where: str) -> bytes | None:
    """The pixel bytes of a dataset parsed up to its PixelData element, read straight from the file (pydicom's
    deferred read costs several times the I/O); None for an encapsulated (compressed) element."""
    explicit = syntax == ExplicitVRLittleEndian
    with open(frame.file, "rb") as fh:
        fh.seek(frame.pixel_offset)
        head = fh.read(12 if explicit else 8)
        if len(head) < (12 if explicit else 8) or head[:4] != b"\xe0\x7f\x10\x00":
            return None
        length = int.from_bytes(head[8:12] if explicit else head[4:8], "little")
        if explicit and head[4:6] not in (b"OW", b"OB"):
            return None
        if length == 0xFFFFFFFF:  # undefined length: encapsulated fragments
            return None
        raw = fh.read(min(length, need))
    if len(raw) < need:
        raise CaseError(where, f"{name}: truncated pixel data ({len(raw)} of {need} bytes)")
    return raw


def _native(frame: Frame, syntax, name: str, where: str) -> np.ndarray | None:
    """The stored values of an uncompressed little-endian single frame, straight from the bytes (no copy
    beyond the unused high bits), or None where pydicom's general path is needed."""
    ds, rows, columns = frame.dataset, frame.rows, frame.columns
    if syntax not in _NATIVE or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        return None
    alloc, stored = int(ds.get("BitsAllocated", 0)), int(ds.get("BitsStored", 0))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if alloc not in (8, 16, 32) or not 0 < stored <= alloc:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{alloc // 8}")
    need = rows * columns * dtype.itemsize
    if "PixelData" in ds:
        raw = ds.PixelData
    elif frame.pixel_offset is not None:
        raw = _from_file(frame, syntax, need, name, where)
    else:
        return None
    if raw is None:
        return None
    if len(raw) < need:
        raise CaseError(where, f"{name}: truncated pixel data ({len(raw)} of {need} bytes)")
    pixels = np.frombuffer(raw, dtype=dtype, count=rows * columns).reshape(rows, columns)
    shift = alloc - stored
    if shift:  # bits above BitsStored are not pixel data: sign-extend or mask them as pydicom does
        pixels = (pixels << shift) >> shift if signed else pixels & dtype.type((1 << stored) - 1)
    return pixels


def _decoded(where: str, frame: Frame) -> np.ndarray:
    ds, name = frame.dataset, os.path.basename(frame.file)
    meta = getattr(ds, "file_meta", None)  # not `in dir(ds)`: that lists every keyword, per frame
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        native = _native(frame, syntax, name, where)
        if native is not None:
            return native
        if "PixelData" not in ds:  # parsed up to the pixels: pydicom's decoders need the whole object
            import pydicom

            ds = pydicom.dcmread(frame.file, force=True)
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as err:
        label = syntax.name if syntax is not None else "this transfer syntax"
        hint = next((v for k, v in _DECODERS.items() if k in label), None)
        need = f"needs decoder {hint} (not importable here)" if hint else "needs a decoder medflow does not pin"
        raise CaseError(where, f"{name}: pixel data in {label} {need}") from None
    except (ValueError, AttributeError, KeyError) as err:
        text = " ".join(str(err).split())
        problem = "truncated pixel data" if ("less than" in text or "truncat" in text.lower()
                                             or "PixelData" in text) else f"undecodable pixel data ({text[:120]})"
        raise CaseError(where, f"{name}: {problem}") from None


def _rescaled_type(frames: list[Frame]):
    """The output type: None (the stored type) without a rescale; int16 when every slope is 1 and the
    integer intercepts keep BitsStored's whole range inside int16 (CT in HU, as dcm2niix stores it);
    float32 otherwise."""
    if all(f.slope == 1 and f.intercept == 0 for f in frames):
        return None
    if any(f.slope != 1 or f.intercept != int(f.intercept) for f in frames):
        return np.float32
    ds = frames[0].dataset
    bits, signed = int(ds.get("BitsStored", 16) or 16), int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    inter = [f.intercept for f in frames]
    return np.int16 if lo + min(inter) >= -32768 and hi + max(inter) <= 32767 else np.float32


def pixel_frames(where: str, frames: list[Frame]) -> np.ndarray:
    """Decode and rescale ``frames`` in order into one (Z, rows, columns) array.

    The stored type is kept when no frame has a rescale; int16 for an integer shift that fits it (CT in HU);
    otherwise float32. Each object is decoded once, however many of its frames are used.
    """
    cache: dict[int, np.ndarray] = {}
    kind = _rescaled_type(frames)
    out = None
    for z, f in enumerate(frames):
        key = id(f.dataset)
        if key not in cache:
            arr = _decoded(where, f)
            cache[key] = arr if f.frame is not None else arr[None]
        pixels = cache[key][(f.frame or 1) - 1]
        if pixels.shape != (f.rows, f.columns):
            raise CaseError(where, f"{os.path.basename(f.file)}: pixel data of shape {pixels.shape} for a "
                                   f"{f.rows}x{f.columns} matrix")
        if out is None:
            out = np.empty((len(frames), f.rows, f.columns), dtype=kind or pixels.dtype)
        if kind is None:
            out[z] = pixels
        elif kind is np.int16:  # in int16: modular arithmetic, exact because the range check says it fits
            np.add(pixels, np.int16(f.intercept), out=out[z], dtype=np.int16, casting="unsafe")
        else:
            np.multiply(pixels, np.float32(f.slope), out=out[z], casting="unsafe")
            out[z] += np.float32(f.intercept)
        if f.frame is None:
            cache.pop(key)  # a single-frame file is done with: free its pixels early
    return out
