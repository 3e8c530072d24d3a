"""One process at a time per stage key: two runs of one pipeline on one workspace never compute the
same stage folder together. The second waits, then finds the folder finished and reuses it.

The lock is ``flock(2)`` on ``<workspace>/.locks/<stage>-<key>.lock``: the kernel drops it when its
holder exits, however it exits (kill -9 included), so a dead run never leaves a stale lock behind.
The file holds the holder's pid and host, only to say whom a waiting run waits for.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medflow.core.engine import StageFailed
from medflow.core.progress import log
from medflow.data.atomic import WRITE_ERRNOS


def lock_path(stage: str, key: str) -> Path:
    from medflow.core.workspace import workspace_root

    return workspace_root() / ".locks" / f"{stage}-{key[:16]}.lock"


@contextmanager
def stage_lock(stage: str, key: str, path: Path | None = None, finished: bool = False) -> Iterator[float]:
    """Hold the lock of ``stage``'s folder for ``key`` (yields the seconds spent waiting for it).

    ``finished``: the folder is complete, so a workspace where no lock can be taken (read-only) may
    still be read without one; otherwise that is a StageFailed naming the file.
    """
    path = path or lock_path(stage, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:  # a read-only or full workspace: say so in one line, before any work
        if err.errno not in WRITE_ERRNOS:
            raise
        if finished:  # nothing to write: reuse it as it is
            yield 0.0
            return
        raise StageFailed(f"[{stage}] {err.filename or path}: {err.strerror}: cannot take the stage's lock; "
                          f"nothing was written") from None
    start = time.perf_counter()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            log(f"[{stage}] waiting: {holder} is computing this stage ({path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"medflow pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield time.perf_counter() - start
    finally:
        os.close(fd)  # closing the descriptor releases the lock
