"""Runs at the same time on one workspace and one store: the same pipeline twice (a lock per stage key
makes one compute and the other wait, then reuse), and two different pipelines (both complete), on a
SQLite store and on a real `mlflow server` on loopback. Nothing is computed twice, no manifest, store
or registry entry is corrupt, and no run is left RUNNING."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.common import STAGES, env_for, make_pipeline, record, running_runs

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _together(pipelines: list[Path], env: dict) -> list[tuple[int, str]]:
    """Start ``medflow run`` on each pipeline at once; (exit code, stderr) of each."""
    procs = [subprocess.Popen([sys.executable, "-m", "medflow", "run", str(p)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for p in pipelines]
    return [(p.wait(timeout=900), p.stderr.read()) for p in procs]


def _check_store(store: str, workspace: Path, names: list[str]) -> list[str]:
    from mlflow import MlflowClient

    problems = [f"runs left RUNNING: {r}" for r in running_runs(store)]
    client = MlflowClient(store)
    for name in names:
        versions = client.search_model_versions(f"name = '{name}'")
        if len(versions) != 1:
            problems.append(f"{name}: {len(versions)} registered versions")
    for manifest in workspace.rglob("manifest.json"):
        try:
            json.loads(manifest.read_text())
        except ValueError as err:
            problems.append(f"{manifest}: {err}")
    return problems


def _same_pipeline_twice(tmp: Path, store: str) -> tuple[list[str], str]:
    pipeline = make_pipeline(tmp)
    ws = tmp / "ws"
    (a, err_a), (b, err_b) = _together([pipeline, pipeline], env_for(ws, store))
    problems = [f"exit {code}: {err[-1500:]}" for code, err in ((a, err_a), (b, err_b)) if code != 0]
    both = err_a + err_b
    computed = {s: both.count(f"[{s}] running ->") for s in STAGES}
    problems += [f"{s} computed {n} times" for s, n in computed.items() if n != 1]
    problems += _check_store(store, ws, ["test"])
    waits = both.count("waiting:")
    return problems, f"each of {len(STAGES)} stages computed once; {waits} wait(s) for the other run, then reuse"


def _two_pipelines(tmp: Path, store: str) -> tuple[list[str], str]:
    first, second = make_pipeline(tmp, "alpha"), make_pipeline(tmp, "beta", cases=5)
    ws = tmp / "ws2"
    results = _together([first, second], env_for(ws, store))
    problems = [f"exit {code}: {err[-1500:]}" for code, err in results if code != 0]
    problems += _check_store(store, ws, ["alpha", "beta"])
    return problems, "both complete; one registry version each"


def test_concurrent_runs_on_a_sqlite_store(tmp_path):
    store = f"sqlite:///{tmp_path / 'store.db'}"
    for label, check in (("same pipeline x2 at once, one workspace, SQLite store", _same_pipeline_twice),
                         ("two pipelines at once, one workspace, SQLite store", _two_pipelines)):
        problems, figures = check(tmp_path, store)
        record("concurrency", label, 1, int(not problems), figures)
        assert not problems, problems


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    import os
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_concurrent_runs_on_a_loopback_mlflow_server(tmp_path, mlflow_server):
    problems, figures = _same_pipeline_twice(tmp_path, mlflow_server)
    record("concurrency", "same pipeline x2 at once, mlflow server on 127.0.0.1", 1, int(not problems), figures)
    assert not problems, problems
