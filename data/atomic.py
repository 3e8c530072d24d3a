"""Atomic writes: :func:`write_atomic` for every file and folder medflow publishes.

Its last step, :func:`publish`, gives the temporary file normal permissions, then renames it.

``tempfile.mkstemp``/``mkdtemp`` create owner-only files (0600/0700), which is
right while a file is half-written but wrong once it is published: a model
bundle served by another account, or artifacts copied into MLflow, must be
readable like any file the user creates. So the finished file gets the mode
the process umask gives a new file, and only then takes its final name.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medflow.data import faults


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """chmod ``tmp`` (a file or a folder tree) to the umask's default mode, then rename it to ``dest``."""
    tmp, mask = Path(tmp), _umask()
    if tmp.is_dir():
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, dest)


# What a full disk, a quota, a read-only file system or a forbidden folder answer to a write.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


class WriteFailed(OSError):
    """A file medflow publishes could not be written (a full disk, a read-only or forbidden folder).

    Not the case's fault, unlike an unreadable input: stages stop on it, with one line naming the file,
    where a bad input would only be quarantined. ``str()`` is that line: ``PATH: problem``.
    """

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _write_failed(err: OSError, dest: Path, tmp: Path | None) -> WriteFailed | None:
    """``err`` as a WriteFailed naming ``dest`` if it came from writing ``dest`` (no file named, or
    ``dest``, its temporary or its folder); None if it names another file (an input read inside)."""
    if isinstance(err, WriteFailed) or err.errno not in WRITE_ERRNOS:
        return None
    mine = {str(dest), str(dest.parent)} | ({str(tmp)} if tmp is not None else set())
    if err.filename is not None and str(err.filename) not in mine and not str(err.filename).startswith(str(tmp)):
        return None
    return WriteFailed(err.errno, err.strerror or str(err), str(dest))


@contextmanager
def write_atomic(dest: str | os.PathLike, *, folder: bool = False, suffix: str = "") -> Iterator[Path]:
    """Write ``dest`` (a file, or with ``folder`` a folder tree) all at once or not at all.

    Yields a temporary path beside ``dest`` (``.tmp-*``, which stages sweep after a crash) to write
    into; on a clean exit it is published to ``dest`` (normal permissions, then one rename), on an
    error it is removed. ``suffix`` keeps a file extension that writers look at (``.npz``, ``.nii.gz``).
    A failure to write (ENOSPC, EROFS, EACCES) is raised as :class:`WriteFailed` naming ``dest``.

        with write_atomic(out / "metrics.json") as tmp:
            tmp.write_text(text)
    """
    dest, tmp = Path(dest), None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".tmp-{dest.name}-", suffix=suffix, dir=dest.parent)
            os.close(fd)
            tmp = Path(name)
        yield tmp
        faults.point("write", dest)  # the data is in the temporary file, not yet published
        if folder and dest.exists():  # a folder cannot be renamed over another: move the old one aside
            old = dest.with_name(f".trash-{dest.name}-{os.getpid()}")
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        publish(tmp, dest)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        failed = _write_failed(err, dest, tmp) if isinstance(err, OSError) else None
        if failed is not None:
            raise failed from err
        raise
    faults.point("publish", dest)
