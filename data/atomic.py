"""Atomic writes: :func:`write_atomic` for every file and folder medflow publishes.

Its last step, :func:`publish`, gives the temporary file normal permissions, then renames it.

``tempfile.mkstemp``/``mkdtemp`` create owner-only files (0600/0700), which is
right while a file is half-written but wrong once it is published: a model
bundle served by another account, or artifacts copied into MLflow, must be
readable like any file the user creates. So the finished file gets the mode
the process umask gives a new file, and only then takes its final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


@contextmanager
def write_atomic(dest: str | os.PathLike, *, folder: bool = False, suffix: str = "") -> Iterator[Path]:
    """Write ``dest`` (a file, or with ``folder`` a folder tree) all at once or not at all.

    Yields a temporary path beside ``dest`` (``.tmp-*``, which stages sweep after a crash) to write
    into; on a clean exit it is published to ``dest`` (normal permissions, then one rename), on an
    error it is removed. ``suffix`` keeps a file extension that writers look at (``.npz``, ``.nii.gz``).

        with write_atomic(out / "metrics.json") as tmp:
            tmp.write_text(text)
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".tmp-{dest.name}-", suffix=suffix, dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if folder and dest.exists():  # a folder cannot be renamed over another: move the old one aside
            old = dest.with_name(f".trash-{dest.name}-{os.getpid()}")
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
