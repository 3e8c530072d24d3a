"""Validated NIfTI reading and atomic NIfTI writing.

nibabel trusts the header: a file whose dims promise 10^12 voxels makes it
allocate (or memory-map) that much before noticing the data is not there. For
batch ingest of thousands of files from unknown sources that is the wrong way
round, so :func:`read_nifti` checks the header against what the file can hold
before it allocates anything, and turns every failure into a one-line
:class:`CaseError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medflow.data.atomic import write_atomic

try:  # ISA-L's inflate: the same bytes about twice as fast as zlib, which dominates reading a .nii.gz
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _InflateError
except ImportError:  # pragma: no cover - isal is a pinned dependency; plain zlib still reads everything
    _gzip, _InflateError = gzip, zlib.error

# Deflate cannot expand data by more than ~1032:1, so a gzip file of N bytes can
# never hold more than this many times N bytes of voxels.
MAX_DEFLATE_RATIO = 1032
_HEADER_CLASSES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_SUPPORTED_KINDS = "buif"  # bool, unsigned, signed, float; no complex or RGB


class CaseError(ValueError):
    """A problem with one input case. ``str(err)`` is one line: ``<path>: <problem>``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # survives the trip back from a worker process
        return (type(self), (self.path, self.problem))


@dataclass
class Volume:
    """A decoded NIfTI volume.

    Attributes:
        data: voxel array, shape (X, Y, Z), in the file's voxel order, with the
            header's scl_slope/scl_inter applied.
        affine: (4, 4) voxel-to-world (RAS+ mm) matrix, sform preferred over qform.
        path: the file it came from.
        nbytes_file: size of the file on disk (compressed size for .nii.gz).
    """

    data: np.ndarray
    affine: np.ndarray
    path: str
    nbytes_file: int

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def is_nifti_name(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def strip_nifti_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_header(path: str, head: bytes):
    if len(head) < 348:
        raise CaseError(path, f"not NIfTI: only {len(head)} bytes, shorter than a NIfTI header")
    for order in ("<", ">"):
        size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if size in _HEADER_CLASSES:
            break
    else:
        raise CaseError(path, "not NIfTI: header size field is neither 348 nor 540")
    if len(head) < size:
        raise CaseError(path, "not NIfTI: file ends inside the header")
    try:
        header = _HEADER_CLASSES[size].from_fileobj(io.BytesIO(head[:size]), check=False)
    except Exception as err:  # nibabel raises several types for garbage headers
        raise CaseError(path, f"not NIfTI: unreadable header ({err})") from None
    magic = bytes(header["magic"]).rstrip(b"\0")
    if magic in (b"ni1", b"ni2"):
        raise CaseError(path, "NIfTI pair (.hdr/.img) is not supported; convert to single-file .nii(.gz)")
    if magic not in (b"n+1", b"n+2"):
        raise CaseError(path, f"not NIfTI: bad magic {magic!r}")
    return header


def _check_shape(path: str, header, expect_ndim: int) -> tuple[int, ...]:
    raw_dims = [int(d) for d in header["dim"]]
    ndim = raw_dims[0]
    if not 1 <= ndim <= 7 or any(d < 0 for d in raw_dims[1 : ndim + 1]):
        raise CaseError(path, f"invalid header dims {raw_dims[: ndim + 1] if 0 <= ndim <= 7 else raw_dims}")
    shape = tuple(raw_dims[1 : ndim + 1])
    if 0 in shape:
        raise CaseError(path, f"zero-size axis in dims {shape}")
    # Trailing singleton axes (X, Y, Z, 1) are common and harmless.
    spatial = shape
    while len(spatial) > expect_ndim and spatial[-1] == 1:
        spatial = spatial[:-1]
    if expect_ndim == 3 and len(spatial) == 3 and spatial[2] == 1:
        spatial = spatial[:2]
    if len(spatial) != expect_ndim:
        raise CaseError(path, f"{len(spatial)}D image with dims {shape} where {expect_ndim}D is expected")
    return shape


def read_nifti(path: str | os.PathLike, *, expect_ndim: int = 3, max_voxels: int | None = None) -> Volume:
    """Read and validate one NIfTI-1/2 file (``.nii`` or ``.nii.gz``).

    Args:
        path: file to read.
        expect_ndim: spatial dimensionality required (trailing singleton axes are dropped).
        max_voxels: refuse a header that claims more voxels (all axes) before decoding any data: a small
            gzip can claim gigabytes, so untrusted bytes (a served request) come with a limit.

    Returns:
        The decoded :class:`Volume`; ``data`` has shape (X, Y, Z).

    Raises:
        CaseError: missing or empty file, not NIfTI, truncated or corrupt gzip,
            dims that do not match the data size, wrong dimensionality, a zero-size
            axis, unsupported data type, NaN/Inf voxels or a degenerate affine.
    """
    path = str(path)
    if not os.path.lexists(path):
        raise CaseError(path, "missing file")
    if not os.path.isfile(path):
        raise CaseError(path, "not a regular file")
    if not is_nifti_name(path):
        raise CaseError(path, "not NIfTI: expected a .nii or .nii.gz file")
    size = os.path.getsize(path)
    if size == 0:
        raise CaseError(path, "empty file")
    compressed = path.lower().endswith(".gz")
    with open(path, "rb") as raw:
        if compressed and raw.read(2) != b"\x1f\x8b":
            raise CaseError(path, "not gzip data despite the .gz suffix")
        raw.seek(0)
        stream = _gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            buf = _read_checked(path, stream, size, compressed, expect_ndim, max_voxels)
        except (EOFError, zlib.error, _InflateError, gzip.BadGzipFile) as err:
            raise CaseError(path, f"truncated or corrupt gzip ({err})") from None
    header, shape, buf = buf
    dtype = header.get_data_dtype()
    offset = int(header.get_data_offset())
    data = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset, order="F")
    slope, inter = header.get_slope_inter()
    if slope is not None and (slope != 1 or (inter or 0) != 0):
        data = data.astype(np.float32) * np.float32(slope) + np.float32(inter or 0)
    data = data.reshape(shape[:expect_ndim] if len(shape) > expect_ndim else shape, order="F")
    if data.ndim < expect_ndim:
        data = data.reshape(data.shape + (1,) * (expect_ndim - data.ndim), order="F")
    if data.dtype.kind == "f":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise CaseError(path, f"{bad} NaN/Inf voxels")
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CaseError(path, "degenerate affine (singular or non-finite)")
    return Volume(data=data, affine=affine, path=path, nbytes_file=size)


def _read_checked(path, stream, size, compressed, expect_ndim, max_voxels=None):
    head = stream.read(540)
    header = _read_header(path, head)
    shape = _check_shape(path, header, expect_ndim)
    voxels = int(np.prod(shape, dtype=np.int64))
    if max_voxels is not None and voxels > max_voxels:
        raise CaseError(path, f"header dims {shape} hold {voxels} voxels, over the limit of {max_voxels}")
    try:
        dtype = header.get_data_dtype()
    except Exception:
        raise CaseError(path, f"unsupported datatype code {int(header['datatype'])}") from None
    if dtype.kind not in _SUPPORTED_KINDS or dtype.fields is not None:
        raise CaseError(path, f"unsupported data type {dtype}")
    offset = int(header.get_data_offset())
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    # Check the claim against what the file can hold *before* allocating it.
    capacity = size * MAX_DEFLATE_RATIO + 4096 if compressed else size
    if needed > capacity or (not compressed and needed != size):
        have = "at most " + _fmt_bytes(capacity) if compressed else _fmt_bytes(size)
        raise CaseError(path, f"header dims {shape} of {dtype} need {_fmt_bytes(needed)} but the file holds {have}")
    buf = bytearray(needed)
    view = memoryview(buf)
    got = min(len(head), needed)
    view[:got] = head[:got]
    while got < needed:
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    if got < needed:
        raise CaseError(path, f"header dims {shape} of {dtype} need {_fmt_bytes(needed)} but the data holds {_fmt_bytes(got)}")
    if compressed:
        # Reading to the end makes gzip verify its CRC and length trailer.
        if len(head) > needed or stream.read(1 << 16):
            raise CaseError(path, f"data is larger than header dims {shape} of {dtype} describe")
    return header, shape, buf


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def write_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *, dtype=None) -> None:
    """Write a NIfTI-1 file atomically: a temporary file in the same folder, then rename.

    Args:
        path: destination ending in .nii or .nii.gz.
        data: (X, Y, Z) array.
        affine: (4, 4) voxel-to-world matrix; written as both sform and qform.
        dtype: on-disk data type (default: the array's).
    """
    path = Path(path)
    if not is_nifti_name(path):
        raise ValueError(f"{path}: NIfTI output needs a .nii or .nii.gz suffix")
    arr = np.asarray(data if dtype is None else data.astype(dtype, copy=False))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    save_atomic(img, path)


def save_atomic(img, path: str | os.PathLike) -> None:
    """Save a nibabel image to ``path`` through a temp file in the same folder, then rename.

    A crash or a full disk leaves either the old file or none, never a truncated one.
    The temp name keeps the .nii/.nii.gz suffix because nibabel picks compression by it.
    """
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with write_atomic(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
