"""Runs left RUNNING by a medflow process that died (kill -9, power loss, OOM killer).

MLflow ends a run only when the process that started it says so; a process killed outright leaves
its runs RUNNING forever, and the UI shows a pipeline that never ends. Every run medflow starts
carries its process's identity (:func:`process_tags`: host, pid and the pid's start time, so a
reused pid is not mistaken for the old process). The next medflow invocation on the same host
closes, as KILLED, each RUNNING run whose process no longer exists (:func:`close_stale_runs`).
Runs of other hosts are left alone: from here nobody can tell whether that process is alive.
"""

from __future__ import annotations

import os
import socket
import time

HOST, PID, STARTED = "medflow.host", "medflow.pid", "medflow.pid_started"


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), or None if it does not
    exist. Off Linux, "0" for a live pid: liveness only."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat(5); the first two (pid, comm) were split off
    except FileNotFoundError:
        return None
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, someone else's
        pass
    return "0"


def process_tags() -> dict[str, str]:
    """Tags that identify this process on this host (put on every run it starts)."""
    pid = os.getpid()
    return {HOST: socket.gethostname(), PID: str(pid), STARTED: process_start(pid) or "0"}


def is_dead(tags: dict) -> bool:
    """True if the run's tags name a process of this host that no longer runs."""
    if tags.get(HOST) != socket.gethostname() or not str(tags.get(PID, "")).isdigit():
        return False
    started = process_start(int(tags[PID]))
    return started is None or (started != "0" and tags.get(STARTED) not in (None, "0", started))


def close_stale_runs(client) -> list[str]:
    """Mark KILLED the RUNNING runs left by dead medflow processes of this host; returns their ids."""
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    host = socket.gethostname().replace("'", "")
    closed = []
    for run in client.search_runs(ids, filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST}` = '{host}'",
                                  max_results=1000):
        if run.info.run_id in closed or not is_dead(run.data.tags):
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        client.set_tag(run.info.run_id, "medflow.error",
                       f"process {run.data.tags[PID]} on {run.data.tags[HOST]} ended without closing this run "
                       f"(killed or crashed); marked KILLED by the next medflow invocation at {when}")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed
