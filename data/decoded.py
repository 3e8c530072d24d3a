"""A pipeline run's decoded volumes: ingest decodes each file, preprocess reuses what it decoded.

Ingest must decode every file to validate and fingerprint it, and preprocess
needs the same arrays again. Decoding a ``.nii.gz`` is the largest single cost
of both, so within one ``medflow run`` that runs both stages, ingest leaves each
validated case here for preprocess:

* when the preprocess plan does not wait on ingest's fingerprint, as the finished
  case file (:func:`keep_case`), which the preprocess stage moves into its folder
  (:func:`claim_case`): the case is preprocessed while its volumes are in memory,
  in the same worker, and no volume is written twice;
* else each NIfTI volume as a plain ``.npy`` (:func:`put`), which preprocess reads
  back (a copy from the page cache, not an inflate).

Nothing here is a stage output:

* the folder belongs to one run (``<workspace>/tmp/decoded-<host>-<pid>-<ns>``),
  is private (mode 0700) and is removed when the run ends; a folder left by a
  killed run on this host is removed by the next run;
* an entry is keyed by the source's path, size, mtime and read options (a case
  file by its record, plan and every source file's path, size and mtime), so a
  file rewritten mid-run is decoded again, never served stale;
* a case is kept only within its share of a budget (a quarter of the memory,
  and never the last tenth of the disk), so a large dataset falls back to
  decoding twice rather than filling the disk;
* entries are written atomically (the ``.json`` last) and a missing, partial or
  unreadable entry means "decode it", never an error;
* only NIfTI files are kept; DICOM series and SEG labels are decoded by each
  stage, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np

from medflow.data.atomic import publish
from medflow.data.casefile import file_sha256, write_npz
from medflow.data.nifti import Volume, is_nifti_name
from medflow.data.preprocess import RECORD_FIELDS

_PREFIX = "decoded-"
LABEL = "label"  # a NIfTI label reads the same whatever the image (read_label)
MEMORY_SHARE = 0.25  # of physical memory: the entries should stay in the page cache
DISK_RESERVE = 0.10  # of the filesystem, never used


def image_role(read: dict) -> str:
    """The role of an image read with ``read`` options (a record's ``read``)."""
    return "image:" + json.dumps(read, sort_keys=True)


def _entry(root: Path, path: str, role: str) -> Path | None:
    """The entry name of one source file, or None when it is not a cacheable NIfTI file."""
    if not (is_nifti_name(path) and os.path.isfile(path)):
        return None
    st = os.stat(path)
    key = json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns, role])
    return root / hashlib.sha256(key.encode()).hexdigest()[:32]


def put(root: str | None, vol: Volume, role: str, share: int) -> bool:
    """Keep ``vol`` (decoded from ``vol.path``) for this run when it fits ``share`` bytes; True if kept.

    ``role`` holds everything else its reading depended on (an image's read options; a NIfTI label
    reads alike for any image), so :func:`get` returns it only for the same read.
    """
    if root is None or vol.data.nbytes > share:
        return False
    entry = _entry(Path(root), vol.path, role)
    if entry is None:
        return False
    try:
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.lib.format.write_array(fh, vol.data, allow_pickle=False)  # Fortran order stays Fortran
        os.replace(tmp, entry.with_suffix(".npy"))
        meta = {"affine": np.asarray(vol.affine).tolist(), "nbytes_file": vol.nbytes_file}
        tmp.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp, entry.with_suffix(".json"))  # last: its presence says the entry is whole
        return True
    except OSError:  # a full disk or a removed folder: the other stage decodes the file itself
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False


def get(root: str | None, path: str, role: str) -> Volume | None:
    """The volume :func:`put` kept for this read of ``path``, or None (then decode it)."""
    if root is None:
        return None
    entry = _entry(Path(root), str(path), role)
    if entry is None:
        return None
    try:
        meta = json.loads(entry.with_suffix(".json").read_text(encoding="utf-8"))
        with open(entry.with_suffix(".npy"), "rb") as fh:
            data = np.lib.format.read_array(fh, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return Volume(data=data, affine=np.asarray(meta["affine"], dtype=np.float64), path=str(path),
                  nbytes_file=int(meta["nbytes_file"]))


def ahead_key(record: dict, plan: dict) -> str | None:
    """The name of a case that ingest preprocessed ahead with ``plan`` (a job's plan): the record's fields
    that preprocessing reads, the plan and each source file's path, size and mtime. None unless every
    source is a NIfTI file (a DICOM series is a folder whose files the stat would not cover)."""
    files = [*record["images"], *([record["label"]] if record.get("label") else [])]
    stats = []
    for path in files:
        if not (is_nifti_name(path) and os.path.isfile(path)):
            return None
        st = os.stat(path)
        stats.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    # What preprocess_record copies into the case file, and what reading the sources takes
    fields = {k: record.get(k) for k in (*RECORD_FIELDS, "read", "label_classes")}
    key = json.dumps([fields, plan, stats], sort_keys=True, default=list)
    return "case-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def keep_case(root: str | None, key: str | None, arrays: dict[str, np.ndarray], meta: dict, share: int) -> bool:
    """Keep a preprocessed case (``write_case``'s bytes) under ``key`` when it fits ``share``; True if kept.

    Not through ``write_atomic``: a failure here costs nothing (the preprocess stage
    then does the case itself), so it is no fault point and stops no stage.
    """
    if root is None or key is None or sum(a.nbytes for a in arrays.values()) > share:
        return False
    base = Path(root) / key
    tmp = base.with_name(f"{key}.{os.getpid()}.tmp")
    try:
        write_npz(tmp, arrays, meta)
        digest = file_sha256(tmp)
        publish(tmp, base.with_suffix(".npz"))  # the mode write_case gives: the stage moves the file as it is
        tmp.write_text(json.dumps({"sha256": digest}), encoding="utf-8")
        os.replace(tmp, base.with_suffix(".json"))  # last: its presence says the case file is whole
        return True
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False


def claim_case(root: str | None, key: str | None, dest: str | os.PathLike) -> str | None:
    """Move the case kept under ``key`` to ``dest`` (one rename); its sha256, or None: then preprocess it."""
    if root is None or key is None:
        return None
    base = Path(root) / key
    try:
        digest = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))["sha256"]
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        os.replace(base.with_suffix(".npz"), dest)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return digest


def share(root: str | None, cases: int) -> int:
    """Bytes one case may keep: the budget (a quarter of the memory, at most the disk above its reserve)
    split evenly, so a worker decides alone and the total stays within it."""
    if root is None or cases <= 0:
        return 0
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * MEMORY_SHARE
    disk = shutil.disk_usage(root)
    return int(max(0.0, min(memory, disk.free - DISK_RESERVE * disk.total)) // cases)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def session(parent: str | os.PathLike):
    """A fresh private folder under ``parent`` for one run's entries, removed at the end (yields its path).

    Folders of runs on this host whose process is gone (killed) are removed first. Where the folder
    cannot be made (a read-only or full workspace) it yields None: each stage then decodes for itself,
    and a stage that must write meets the problem itself, with its one-line error.
    """
    parent = Path(parent)
    host = socket.gethostname().replace("-", "_")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for old in parent.glob(f"{_PREFIX}{host}-*"):
            with contextlib.suppress(ValueError, IndexError):
                if not _alive(int(old.name.split("-")[2])):
                    shutil.rmtree(old, ignore_errors=True)
        root = parent / f"{_PREFIX}{host}-{os.getpid()}-{time.time_ns()}"
        root.mkdir(mode=0o700)
    except OSError:
        yield None
        return
    try:
        yield str(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
