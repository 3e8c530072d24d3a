"""Preprocessed case files: a deterministic ``.npz`` plus JSON metadata, written atomically.

``numpy.savez`` stamps each member with the current time, so the same arrays
give different bytes on every run. Here every member gets a fixed timestamp,
so a case file is a pure function of its content: an interrupted and resumed
stage produces byte-identical outputs, and manifests can carry checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

from medflow.data.atomic import write_atomic

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
META_KEY = "meta.json"


def write_case(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict, *, compress: bool = False) -> str:
    """Write arrays and metadata to ``path`` atomically; return the file's sha256.

    Args:
        path: destination ``.npz``.
        arrays: name -> array, e.g. ``image`` (C, X, Y, Z) float32 and ``label`` (X, Y, Z) uint8.
        meta: JSON-serializable metadata (affines, provenance, normalization).
        compress: deflate the members (smaller, slower to write and read).
    """
    with write_atomic(path, suffix=".npz") as tmp:
        write_npz(tmp, arrays, meta, compress=compress)
        digest = file_sha256(tmp)
    return digest


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict, *, compress: bool = False) -> None:
    """The bytes of a case file, written to ``path`` as they are (not atomic: :func:`write_case` is)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method, allowZip64=True) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arrays[name]), allow_pickle=False)
        info = zipfile.ZipInfo(META_KEY, date_time=_EPOCH)
        info.compress_type = method
        info.external_attr = 0o644 << 16
        zf.writestr(info, json.dumps(meta, sort_keys=True, indent=1))


def read_case(path: str | os.PathLike, names: tuple[str, ...] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read a case file. ``names`` limits which arrays are loaded (None: all)."""
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read(META_KEY))
        arrays = {}
        for member in zf.namelist():
            name = member.removesuffix(".npy")
            if member == META_KEY or (names is not None and name not in names):
                continue
            with zf.open(member) as fh:
                arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
    return arrays, meta


def read_meta(path: str | os.PathLike) -> dict:
    """Only the metadata of a case file (cheap: no array is read)."""
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(META_KEY))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
