"""Fault injection at counted points, for the fault suite (``make test-faults``).

medflow calls :func:`point` where a crash or a failed write matters: each atomic write, once its
data is in the temporary file and before the rename (``write``), and again after the rename
(``publish``); each training batch (``step``); each step of a registration (``register``). Outside
the suite neither variable below is set and a point is one dictionary lookup.

``MEDFLOW_FAULT=ACTION@STAGE:N`` acts at the N-th point (1-based) that the process passes inside
stage STAGE (see :func:`in_stage`):

- ``kill``: SIGKILL to itself, as abrupt as ``kill -9`` from outside (no cleanup, no ``finally``);
- ``enospc`` / ``erofs``: the N-th ``write`` point raises the OSError a full disk or a read-only
  file system gives, naming the file, so the caller's clean-up runs as it would for a real one.

``MEDFLOW_FAULT_ONCE=FILE`` makes the fault happen once among all processes that share FILE: the
first to reach its point creates FILE and acts, the others (and that process's retried work) pass.
Ray workers count their own points, so this is how one worker, not each, is killed.

``MEDFLOW_FAULT_COUNT=FILE`` appends one line ``STAGE KIND`` per point, so a suite can count a
stage's points on an uninterrupted run and choose seeded ones to fail at. Both act in the process
that reads them: the suite runs with ``workers: 1``, where every case is done in that process.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

FAULT_ENV = "MEDFLOW_FAULT"
COUNT_ENV = "MEDFLOW_FAULT_COUNT"
ONCE_ENV = "MEDFLOW_FAULT_ONCE"
ACTIONS = ("kill", "enospc", "erofs")
_ERRNO = {"enospc": errno.ENOSPC, "erofs": errno.EROFS}

_stage: str | None = None
_seen: dict[str, int] = {}  # stage -> points passed (all kinds for kill, write points for the others)


def parse(spec: str) -> tuple[str, str, int]:
    """``"kill@train:17"`` -> ("kill", "train", 17); a ValueError naming the variable otherwise."""
    try:
        action, rest = spec.split("@", 1)
        stage, n = rest.rsplit(":", 1)
        if action not in ACTIONS or int(n) < 1 or not stage:
            raise ValueError
        return action, stage, int(n)
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected ACTION@STAGE:N with ACTION one of "
                         f"{', '.join(ACTIONS)} and N >= 1") from None


def active() -> bool:
    """Whether this process injects or counts faults (callers skip per-step hooks otherwise)."""
    return bool(os.environ.get(FAULT_ENV) or os.environ.get(COUNT_ENV))


@contextmanager
def in_stage(name: str) -> Iterator[None]:
    """Count the points passed while stage ``name`` runs (the runner wraps each stage in it)."""
    global _stage
    previous, _stage = _stage, name
    try:
        yield
    finally:
        _stage = previous


def point(kind: str, path: str | os.PathLike | None = None) -> None:
    """A place where the suite may kill the process or fail a write (``path``: the file written)."""
    spec, count = os.environ.get(FAULT_ENV), os.environ.get(COUNT_ENV)
    if not (spec or count) or _stage is None:
        return
    if count:
        with open(count, "a", encoding="utf-8") as fh:
            fh.write(f"{_stage} {kind}\n")
    if not spec:
        return
    action, stage, n = parse(spec)
    if stage != _stage or (action != "kill" and kind != "write"):
        return
    _seen[stage] = _seen.get(stage, 0) + 1
    if _seen[stage] != n:
        return
    once = os.environ.get(ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # another process has had this fault already
            return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = _ERRNO[action]
    raise OSError(code, os.strerror(code), os.fspath(path) if path is not None else None)
