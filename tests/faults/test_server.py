"""`medflow serve` on loopback under load and against hostile clients, with the model the fault
pipeline exported: N concurrent clients for a fixed count of requests (p50/p99 latency, errors),
malformed and hostile payloads (each a 4xx with a message, the server still serving), and path and
traversal attempts (refused, nothing read or written outside the allowed folder)."""

from __future__ import annotations

import base64
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.faults.common import env_for, make_pipeline, medflow, record, stage_folder
from tests.helpers import make_affine, save
from tests.pipelines.tracking.test_scoring import Served, hostile_cases, save_pyfunc

pytestmark = [pytest.mark.slow, pytest.mark.faults]
CLIENTS, PER_CLIENT = 4, 5
SHAPE = (128, 128, 48)  # one request: a 128x128x48 volume (3.1 MB of float32 before gzip)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    ws, store = tmp / "ws", f"sqlite:///{tmp / 'store.db'}"
    done = medflow("run", make_pipeline(tmp), env=env_for(ws, store))
    assert done.returncode == 0, done.stderr[-3000:]
    model = save_pyfunc(tmp / "pyfunc", stage_folder(ws, "export"))
    allowed, secret = tmp / "allowed", tmp / "secret"
    rng = np.random.default_rng(0)
    for folder in (allowed, secret):
        save(folder / "scan.nii.gz", rng.normal(100, 20, SHAPE).astype(np.float32), make_affine())
    (allowed / "link.nii.gz").symlink_to(secret / "scan.nii.gz")
    import os

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = store
    try:
        plain = Served(model, tmp / "plain.log")
        paths = Served(model, tmp / "paths.log", "--allow-paths", str(allowed))
        plain.ready(), paths.ready()
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = saved or ""
    yield {"plain": plain, "paths": paths, "allowed": allowed, "secret": secret, "tmp": tmp,
           "b64": base64.b64encode((allowed / "scan.nii.gz").read_bytes()).decode()}
    plain.stop()
    paths.stop()


def test_concurrent_clients_get_answers_with_bounded_latency(served):
    srv, body = served["plain"], {"dataframe_records": [{"nifti_b64": served["b64"], "case": "load"}]}

    def client(_):
        times, errors = [], 0
        for _ in range(PER_CLIENT):
            start = time.perf_counter()
            status, doc = srv.invoke(body)
            times.append(time.perf_counter() - start)
            errors += status != 200 or doc["predictions"][0]["error"] != ""
        return times, errors

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))
    wall = time.perf_counter() - start
    times = sorted(t for ts, _ in results for t in ts)
    errors = sum(e for _, e in results)
    p50, p99 = statistics.median(times), times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    record("server load", f"{CLIENTS} clients x {PER_CLIENT} requests, one {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} "
           "volume each", len(times), len(times) - errors,
           f"p50 {p50:.2f} s, p99 {p99:.2f} s, {errors} errors, {len(times) / wall:.2f} requests/s")
    assert errors == 0 and srv.request("GET", "/ping")[0] == 200


def test_hostile_payloads_are_refused_and_the_server_keeps_serving(served):
    srv, refused, failures = served["paths"], 0, []
    cases = hostile_cases(served["b64"])
    cases["oversized (1.1 GiB declared)"] = None
    for name, case in cases.items():
        if case is None:
            import socket

            with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
                sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1181116006\r\n\r\n{")
                got, text = int(sock.recv(4096).decode().split()[1]), "413"
            ok = got == 413
        else:
            doc, status, words = case
            got, answer = srv.invoke(doc)
            text = json.dumps(answer)
            ok = got == status and words in text and "Traceback" not in text and str(served["tmp"]) not in text
        alive = srv.request("GET", "/ping")[0] == 200
        refused += ok and alive
        if not (ok and alive):
            failures.append(f"{name}: {got} {text[:200]} (alive: {alive})")
    got = srv.request("POST", "/invocations", b"a,b\n1,2", "text/csv")[0]
    refused += got == 415
    record("hostile payload", "malformed JSON, wrong or missing columns, bad base64, non-NIfTI, lying header, "
           "decompression bomb, oversized, CSV", len(cases) + 1, refused,
           "each a 4xx with a message, no trace or server path; server still serving")
    assert not failures and got == 415, failures


def test_path_and_traversal_attempts_are_refused(served):
    allowed, secret = served["allowed"], served["secret"]
    attempts = []  # (server, request body, expected status)
    for path in (secret / "scan.nii.gz", allowed / "scan.nii.gz"):  # paths are off on a default server
        attempts.append(("plain", {"dataframe_records": [{"path": str(path)}]}, 403))
    attempts.append(("plain", {"dataframe_records": [{"nifti_b64": served["b64"]}],
                               "params": {"output_dir": str(allowed)}}, 403))
    for path in (secret / "scan.nii.gz", allowed / ".." / "secret" / "scan.nii.gz", allowed / "link.nii.gz",
                 secret / "absent.nii.gz", "/etc/passwd", "/proc/self/environ"):
        attempts.append(("paths", {"dataframe_records": [{"path": str(path)}]}, 403))
    for out in (allowed / ".." / "secret", secret, "/tmp"):
        attempts.append(("paths", {"dataframe_records": [{"nifti_b64": served["b64"]}],
                                   "params": {"output_dir": str(out)}}, 403))
    refused, failures = 0, []
    for server, body, status in attempts:
        got, doc = served[server].invoke(body)
        refused += got == status
        if got != status:
            failures.append(f"{server} {json.dumps(body)[:150]}: {got}")
    names = ["../escaped", "/abs/olute", ".hidden", "a\x00b\nc", "..", "same", "SAME", "same"]
    out = allowed / "out"
    got, doc = served["paths"].invoke({"dataframe_records": [{"nifti_b64": served["b64"], "case": c} for c in names],
                                       "params": {"output_dir": str(out)}})
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    safe = got == 200 and len(written) == len(names) and not (allowed / "escaped.nii.gz").exists()
    safe = safe and sorted(p.name for p in secret.iterdir()) == ["scan.nii.gz"]
    safe = safe and not list(allowed.parent.glob("escaped*"))
    record("paths", "path rows and output_dir off by default, outside --allow-paths, via .. and symlinks",
           len(attempts), refused, "each a 403 that does not say whether the file exists")
    record("paths", "hostile case names (.., /, control characters, leading dot, case-blind duplicates)",
           len(names), len(names) if safe else 0, f"{len(written)} distinct safe files, all inside output_dir")
    assert not failures and safe, (failures, written)
