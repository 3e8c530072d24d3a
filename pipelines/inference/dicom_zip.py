"""A DICOM series sent to the scoring server as a base64 zip (the ``dicom_zip_b64`` column).

The zip is untrusted: it is unpacked into a private temporary folder with every
member checked first (no absolute paths, no ``..``, no links, a bounded number
of members and of bytes, each member read with a cap so a lying header cannot
inflate further), then read like any series folder and removed.
"""

from __future__ import annotations

import base64
import binascii
import io
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from medflow.data.nifti import CaseError

COLUMN = "dicom_zip_b64"
MAX_MEMBERS = 20000
HEADER_BYTES = 64 << 10  # allowed per file beyond the pixels: DICOM headers are small


def _unpack(raw: bytes, folder: Path, max_bytes: int) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise CaseError(COLUMN, "not a zip archive") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    if not members:
        raise CaseError(COLUMN, "empty zip archive")
    if len(members) > MAX_MEMBERS:
        raise CaseError(COLUMN, f"{len(members)} files in the zip, over the limit of {MAX_MEMBERS}")
    max_bytes += len(members) * HEADER_BYTES
    total = 0
    for i, member in enumerate(members):
        name = PurePosixPath(member.filename)
        if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
            raise CaseError(COLUMN, f"zip member {member.filename!r} points outside the archive")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise CaseError(COLUMN, f"zip member {member.filename!r} is a link")
        total += member.file_size
        if total > max_bytes:
            raise CaseError(COLUMN, f"the zip unpacks to more than {max_bytes} bytes, over the limit")
        dest = folder / f"{i:05d}.dcm"  # member names are not trusted as file names at all
        with archive.open(member) as src, open(dest, "wb") as out:
            left = member.file_size
            while True:
                block = src.read(min(1 << 20, left + 1))
                if not block:
                    break
                left -= len(block)
                if left < 0:  # the data is longer than its header said
                    raise CaseError(COLUMN, f"zip member {member.filename!r} is larger than its header says")
                out.write(block)


def read_zipped_series(blob, read, max_voxels: int | None):
    """Unpack a base64 zip of one series and ``read(folder)`` it (a task's ``read_input``).

    Raises:
        CaseError: naming ``dicom_zip_b64``: not base64, not a zip, unsafe members, too large, or the
            series' own problem.
    """
    if not isinstance(blob, str):
        raise CaseError(COLUMN, "must be a base64 string")
    try:
        raw = base64.b64decode("".join(blob.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CaseError(COLUMN, "not valid base64") from None
    max_bytes = (max_voxels or 512 * 512 * 1024) * 4  # 4 bytes a voxel at most (float32 pixels)
    folder = Path(tempfile.mkdtemp(prefix="medflow-dicom-"))
    try:
        _unpack(raw, folder, max_bytes)
        try:
            return read(str(folder))
        except CaseError as err:
            raise CaseError(COLUMN, err.problem.replace(str(folder), "the zip")) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
