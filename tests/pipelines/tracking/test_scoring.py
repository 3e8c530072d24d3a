"""`medflow serve` against hostile clients, over HTTP on loopback: it reads and writes only what it may.

A tiny untrained segmentation bundle is saved as the same pyfunc model the export stage
registers; two real servers run it, one with request data only (the default) and one
with ``--allow-paths``.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medflow.inference.serving import gunzip_b64
from tests.helpers import make_affine, save
from tests.pipelines.inference.test_plan import LEGACY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_pyfunc(folder: Path, bundle: Path) -> Path:
    """The bundle as the export stage logs it (loader module, signature, model_config), in a local folder."""
    import mlflow

    from medflow.tracking.signature import export_signature

    plan = json.loads((bundle / "plan.json").read_text())
    mlflow.pyfunc.save_model(str(folder), loader_module="medflow.inference.serving", data_path=str(bundle),
                             signature=export_signature(plan), model_config={"runtime": "keras", "allow_paths": []})
    return folder


def tiny_seg_bundle(folder: Path) -> Path:
    from medflow.models.registry import build_model

    folder.mkdir(parents=True)
    build_model("unet2d", (16, 16, 1), 2, {"depth": 1, "filters": 2}).save(folder / "model.keras")
    (folder / "plan.json").write_text(json.dumps(LEGACY))
    return folder


class Served:
    """``medflow serve`` on 127.0.0.1 in its own process group, stopped on exit."""

    def __init__(self, model: Path, log: Path, *extra: str):
        self.port, self.log = _free_port(), log
        cmd = [sys.executable, "-m", "medflow", "serve", "--model", str(model), "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> "Served":
        """Wait for /ping (servers started together load their models at the same time)."""
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if self.request("GET", "/ping")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"no /ping answer: {self.log.read_text()[-3000:]}")

    def request(self, method: str, url: str, body: bytes | None = None, ctype="application/json"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, url, body, {"Content-Type": ctype} if body is not None else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def invoke(self, doc) -> tuple[int, dict]:
        status, raw = self.request("POST", "/invocations", json.dumps(doc).encode() if not isinstance(doc, bytes)
                                   else doc)
        return status, json.loads(raw)

    def stop(self):
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two servers on one model: ``plain`` (defaults) and ``paths`` (``--allow-paths <root>/allowed``)."""
    root = tmp_path_factory.mktemp("serve")
    model = save_pyfunc(root / "pyfunc", tiny_seg_bundle(root / "bundle"))
    allowed, secret = root / "allowed", root / "secret"
    allowed.mkdir()
    secret.mkdir()
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (20, 18, 6)).astype(np.float32)
    for folder in (allowed, secret):
        save(folder / "scan.nii.gz", image, make_affine())
    (allowed / "link.nii.gz").symlink_to(secret / "scan.nii.gz")
    env_store = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        plain = Served(model, root / "plain.log")
        paths = Served(model, root / "paths.log", "--allow-paths", str(allowed), "--max-request-mb", "2")
        plain.ready(), paths.ready()
    finally:
        if env_store is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env_store
    yield {"plain": plain, "paths": paths, "allowed": allowed, "secret": secret, "root": root,
           "b64": base64.b64encode((allowed / "scan.nii.gz").read_bytes()).decode()}
    plain.stop()
    paths.stop()


def _no_leak(text: str, root: Path):
    """No trace and no server path in an answer."""
    assert "Traceback" not in text and 'File "' not in text and "site-packages" not in text
    assert str(root) not in text


def test_request_data_is_served_and_paths_are_off_by_default(site):
    srv, root = site["plain"], site["root"]
    status, doc = srv.invoke({"dataframe_records": [{"nifti_b64": site["b64"], "case": "a"}]})
    assert status == 200 and doc["predictions"][0]["error"] == ""
    labels = nib.Nifti1Image.from_bytes(gunzip_b64(doc["predictions"][0]["labels_nifti_b64"]))
    assert labels.shape == (20, 18, 6)
    for rows, params in (([{"path": str(site["secret"] / "scan.nii.gz")}], None),
                         ([{"nifti_b64": site["b64"]}], {"output_dir": str(site["allowed"])})):
        status, doc = srv.invoke({"dataframe_records": rows, **({"params": params} if params else {})})
        assert status == 403 and "--allow-paths" in doc["message"], doc
        _no_leak(json.dumps(doc), root)
    assert not list(site["allowed"].glob("case_0*"))  # nothing was written


def test_allowed_paths_resolve_symlinks_and_dotdot_and_never_say_if_a_file_exists(site):
    srv, allowed, root = site["paths"], site["allowed"], site["root"]
    status, doc = srv.invoke({"dataframe_records": [{"path": str(allowed / "scan.nii.gz")}]})
    assert status == 200 and doc["predictions"][0]["case"] == "scan" and doc["predictions"][0]["error"] == ""
    outside = [str(site["secret"] / "scan.nii.gz"), str(allowed / ".." / "secret" / "scan.nii.gz"),
               str(allowed / "link.nii.gz"), str(site["secret"] / "absent.nii.gz"), "/etc/passwd"]
    answers = []
    for path in outside:
        status, doc = srv.invoke({"dataframe_records": [{"path": path}]})
        assert status == 403, (path, doc)
        answers.append(doc["message"].replace(repr(path), "P"))
    assert len(set(answers)) == 1  # an existing and an absent file read the same
    status, doc = srv.invoke({"dataframe_records": [{"nifti_b64": site["b64"]}],
                              "params": {"output_dir": str(allowed / ".." / "secret")}})
    assert status == 403 and "outside the folders" in doc["message"]
    assert sorted(p.name for p in site["secret"].iterdir()) == ["scan.nii.gz"]


def test_case_names_never_become_paths_and_never_collide(site):
    srv, allowed = site["paths"], site["allowed"]
    out = allowed / "out"
    hostile = ["../escaped", "/abs/olute", ".hidden", "a\x00b\nc", "..", "same", "SAME", "same"]
    rows = [{"nifti_b64": site["b64"], "case": c} for c in hostile]
    status, doc = srv.invoke({"dataframe_records": rows, "params": {"output_dir": str(out)}})
    assert status == 200, doc
    names = [r["case"] for r in doc["predictions"]]
    assert names == ["_escaped", "_abs_olute", "hidden", "a_b_c", "case_4", "same", "SAME-2", "same-3"]
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{n}.nii.gz" for n in names)
    assert not (allowed / "escaped.nii.gz").exists() and not any(allowed.parent.glob("escaped*"))


def hostile_cases(b64: str) -> dict:
    """name -> (request body, expected status, words the message holds); ``b64`` is a good NIfTI."""
    lying = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    raw = bytearray(lying.to_bytes())
    raw[42:44] = np.array([64], "<i2").tobytes()  # dim[1] claims 64 voxels where the data holds 8
    bomb = nib.Nifti1Image(np.zeros((1024, 1024, 300), np.uint8), np.eye(4))  # 315 M voxels of zeros: ~300 KB
    cases = {
        "malformed JSON": (b'{"dataframe_records": [', 400, "malformed JSON"),
        "not a scoring format": ({"rows": []}, 400, "exactly one of"),
        "wrong columns": ({"dataframe_records": [{"file": "x"}]}, 422, "unknown column(s) file"),
        "no rows": ({"dataframe_records": []}, 422, "no rows"),
        "only a case name": ({"dataframe_records": [{"case": "x"}]}, 422, "no input column"),
        "unknown param": ({"dataframe_records": [{"nifti_b64": b64}], "params": {"allow_paths": ["/"]}},
                          422, "unknown param(s) allow_paths"),
        "invalid base64": ({"dataframe_records": [{"nifti_b64": "not*base64!"}]}, 422, "not valid base64"),
        "not NIfTI": ({"dataframe_records": [{"nifti_b64": base64.b64encode(b"hello" * 100).decode()}]}, 422,
                      "not NIfTI"),
        "lying header": ({"dataframe_records": [{"nifti_b64": base64.b64encode(bytes(raw)).decode()}]}, 422,
                         "header dims"),
        "decompression bomb": ({"dataframe_records": [{"nifti_b64": base64.b64encode(
            gzip.compress(bomb.to_bytes(), 9)).decode()}]}, 422, "over the limit"),
        "image without affine": ({"dataframe_records": [{"image": [[[1.0]]]}]}, 422, "needs its affine"),
    }
    return cases


def test_hostile_payloads_get_a_4xx_with_a_message_and_the_server_keeps_serving(site):
    srv, root = site["paths"], site["root"]
    cases = hostile_cases(site["b64"])
    for name, (doc, status, words) in cases.items():
        got, answer = srv.invoke(doc)
        text = json.dumps(answer)
        assert got == status and words in text, (name, got, text[:500])
        _no_leak(text, root)
    assert srv.request("POST", "/invocations", b"a,b\n1,2", "text/csv")[0] == 415
    # one good row among bad ones: 200, the bad row's error names only the client's input
    status, doc = srv.invoke({"dataframe_records": [{"nifti_b64": site["b64"]}, {"nifti_b64": "@@"}]})
    assert status == 200 and doc["predictions"][0]["error"] == "" and "nifti_b64" in doc["predictions"][1]["error"]
    assert srv.request("GET", "/ping")[0] == 200


def test_oversized_requests_get_413_before_the_body_is_read(site):
    srv = site["paths"]  # --max-request-mb 2
    status, doc = srv.invoke({"dataframe_records": [{"nifti_b64": "A" * (3 * 2**20)}]})
    assert status == 413 and "limit of 2097152 bytes" in doc["message"]
    # a client that declares 300 MB gets its answer after the headers alone
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 314572800\r\n\r\n" + b"{" * 1000)
        head = sock.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413")
    assert srv.request("GET", "/ping")[0] == 200


def test_a_hand_loaded_model_keeps_the_guard_and_the_allowance_is_load_time_only(site, tmp_path):
    import mlflow

    from medflow.inference.serving import RequestRefused

    model = mlflow.pyfunc.load_model(str(site["root"] / "pyfunc"))
    with pytest.raises(RequestRefused, match="path is off"):
        model.predict(pd.DataFrame({"path": [str(site["allowed"] / "scan.nii.gz")]}))
    allowed = mlflow.pyfunc.load_model(str(site["root"] / "pyfunc"),
                                       model_config={"allow_paths": [str(site["allowed"])]})
    frame = allowed.predict(pd.DataFrame({"path": [str(site["allowed"] / "scan.nii.gz")]}))
    assert frame["error"].tolist() == [""]
    with pytest.raises(RequestRefused, match="outside the folders"):
        allowed.predict(pd.DataFrame({"path": [str(site["secret"] / "scan.nii.gz")]}))


def test_binding_beyond_loopback_warns_that_there_is_no_authentication(capsys, monkeypatch, tmp_path):
    from medflow.cli import serve

    calls = []
    monkeypatch.setattr(serve.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)

    def args(host, allow=()):
        return type("A", (), {"model": "models:/x@champion", "port": 1, "host": host, "allow_paths": list(allow),
                              "max_request_mb": None})

    assert serve.cmd_serve(args("127.0.0.1")) == 0 and "no authentication" not in capsys.readouterr().err
    assert serve.cmd_serve(args("0.0.0.0", [tmp_path])) == 0
    assert "no authentication" in capsys.readouterr().err
    options = json.loads(calls[1][1]["MEDFLOW_SERVE_OPTIONS"])
    assert options["allow_paths"] == [str(tmp_path.resolve())] and options["max_request_bytes"] == 2**30
    assert serve.cmd_serve(args("127.0.0.1", [tmp_path / "absent"])) != 0
    assert "no such folder" in capsys.readouterr().err and len(calls) == 2
