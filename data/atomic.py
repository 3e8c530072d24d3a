"""The last step of every atomic write: give the temporary file normal permissions, then rename it.

``tempfile.mkstemp``/``mkdtemp`` create owner-only files (0600/0700), which is
right while a file is half-written but wrong once it is published: a model
bundle served by another account, or artifacts copied into MLflow, must be
readable like any file the user creates. So the finished file gets the mode
the process umask gives a new file, and only then takes its final name.
"""

from __future__ import annotations

import os
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
