"""Runs a killed medflow process left RUNNING are closed as KILLED by the next invocation, and only those."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import mlflow
from medflow.tracking.runs import MlflowTracker
from medflow.tracking.stale import PID, STARTED, close_stale_runs, is_dead, process_start, process_tags
from mlflow import MlflowClient

DIES = textwrap.dedent("""
    import os, signal, sys
    import mlflow
    from medflow.tracking.runs import MlflowTracker
    from medflow.tracking.stale import process_tags
    t = MlflowTracker(sys.argv[1])
    exp = t.experiment_id("stale")
    with mlflow.start_run(experiment_id=exp, tags=process_tags()) as parent:
        with mlflow.start_run(nested=True, experiment_id=exp, tags=process_tags()):
            print(parent.info.run_id, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
""")


def test_runs_of_a_killed_process_are_marked_killed_and_live_ones_are_not(tmp_path):
    store = f"sqlite:///{tmp_path / 's.db'}"
    proc = subprocess.run([sys.executable, "-c", DIES, store], capture_output=True, text=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": store})
    assert proc.returncode == -9, proc.stderr[-2000:]
    parent_id = proc.stdout.split()[0]
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("stale").experiment_id
    assert {r.info.status for r in client.search_runs([exp])} == {"RUNNING"}

    tracker = MlflowTracker(store)
    with mlflow.start_run(experiment_id=exp, tags=process_tags()) as mine:  # alive: must stay RUNNING
        closed = close_stale_runs(tracker.client)
        assert len(closed) == 2 and parent_id in closed and mine.info.run_id not in closed
        assert client.get_run(mine.info.run_id).info.status == "RUNNING"
    runs = {r.info.run_id: r for r in client.search_runs([exp])}
    assert {runs[i].info.status for i in closed} == {"KILLED"}
    assert "ended without closing this run" in runs[parent_id].data.tags["medflow.error"]
    assert close_stale_runs(tracker.client) == []  # nothing left to close


def test_a_reused_pid_is_not_the_old_process():
    tags = process_tags()
    assert not is_dead(tags) and process_start(os.getpid()) == tags[STARTED]
    assert is_dead({**tags, STARTED: str(int(tags[STARTED]) + 1)})  # same pid, another start: a new process
    assert not is_dead({**tags, "medflow.host": "another-host", PID: "999999999"})  # not ours to judge
    assert is_dead({**tags, PID: "999999999"})
