"""medflow's scoring server: a registered export's pyfunc model behind the limits a clinic needs.

``medflow serve`` runs :func:`app_from_env` under uvicorn (one worker). It speaks
MLflow's scoring protocol (``POST /invocations`` with ``dataframe_records``,
``dataframe_split`` or ``inputs``, optional ``params``; ``GET /ping``, ``/health``,
``/version``), and the model is the same pyfunc that ``mlflow models serve`` loads,
with its path guard (medflow/inference/serving.py). What it adds:

- a request-size limit, checked on ``Content-Length`` before the body is read and
  again while it streams in: past it, 413;
- answers a client can act on, never a stack trace or a server path:

  ====  ==========================================================================
  200   ``{"predictions": rows}``; at least one row worked (a failed row has ``error``)
  400   malformed JSON, or a body that is not one of the scoring formats
  403   a ``path`` or ``output_dir`` this server does not allow
  413   a body over the limit
  415   not ``application/json``
  422   unknown or missing columns, unknown params, no rows, or every row failed
        (``{"error_code", "message", "predictions"}`` with each row's error)
  500   an internal error: one line; the trace is in the server's log only
  ====  ==========================================================================

One request runs the model at a time (the network already uses every core); the
others wait their turn, so a health check still answers while a volume is scored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pandas as pd

ENV_MODEL, ENV_OPTIONS = "MEDFLOW_SERVE_MODEL", "MEDFLOW_SERVE_OPTIONS"
DEFAULT_MAX_REQUEST_MB = 1024  # a 512 x 512 x 1000 int16 CT is ~700 MB as base64 of the raw .nii
FORMATS = ("dataframe_records", "dataframe_split", "inputs", "instances")
log = logging.getLogger("medflow.serve")


class Reply(Exception):
    """An answer other than 200: ``status`` and a one-line ``message`` (plus extra JSON fields)."""

    def __init__(self, status: int, message: str, code: str = "INVALID_REQUEST", **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


def _records(doc: dict) -> list[dict]:
    """The request's rows, from whichever of MLflow's JSON formats it used (Reply 400 otherwise)."""
    keys = [k for k in doc if k != "params"]
    if len(keys) != 1 or keys[0] not in FORMATS:
        raise Reply(400, f"the body must hold exactly one of {', '.join(FORMATS)} (and optionally params); "
                         f"got {', '.join(map(str, keys)) or 'none'}")
    key, body = keys[0], doc[keys[0]]
    if key == "dataframe_split":
        if not isinstance(body, dict) or not isinstance(body.get("columns"), list) \
                or not isinstance(body.get("data"), list):
            raise Reply(400, "dataframe_split needs a columns list and a data list")
        cols = body["columns"]
        if any(not isinstance(r, list) or len(r) != len(cols) for r in body["data"]):
            raise Reply(400, f"every dataframe_split data row needs {len(cols)} values, one per column")
        return [dict(zip(cols, r)) for r in body["data"]]
    if isinstance(body, dict) and key in ("inputs", "instances"):  # columns of equal-length lists
        lengths = {len(v) if isinstance(v, list) else -1 for v in body.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise Reply(400, f"{key} as columns needs a list of equal length per column")
        return [dict(zip(body, values)) for values in zip(*body.values())]
    if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
        raise Reply(400, f"{key} must be a list of row objects")
    return body


def parse_request(body: bytes, columns: list[str], params_known: list[str]) -> tuple[pd.DataFrame, dict]:
    """The request's frame and params, checked against the model's columns and params (Reply on a problem)."""
    try:
        doc = json.loads(body)
    except UnicodeDecodeError:
        raise Reply(400, "malformed JSON: the body is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise Reply(400, f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(doc, dict):
        raise Reply(400, f"the body must be a JSON object with one of {', '.join(FORMATS)}")
    rows = _records(doc)
    if not rows:
        raise Reply(422, "no rows: each row is one case")
    unknown = sorted({str(k) for r in rows for k in r} - set(columns))
    if unknown:
        raise Reply(422, f"unknown column(s) {', '.join(unknown)}: this model reads {', '.join(columns)}")
    if not any(k != "case" for r in rows for k in r):
        raise Reply(422, f"no input column: give one of {', '.join(c for c in columns if c != 'case')}")
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise Reply(400, "params must be an object")
    odd = sorted(set(params) - set(params_known))
    if odd:
        raise Reply(422, f"unknown param(s) {', '.join(map(str, odd))}: this model takes "
                         f"{', '.join(params_known) or 'none'}")
    return pd.DataFrame(rows), params


async def read_body(request, limit: int) -> bytes:
    """The body, or Reply 413 as soon as it is known to pass ``limit`` bytes (before reading, if declared)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Reply(400, "bad Content-Length header")
        if int(declared) > limit:
            raise Reply(413, f"request body of {int(declared)} bytes is over this server's limit of {limit} "
                             "bytes (medflow serve --max-request-mb)", "REQUEST_TOO_LARGE")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise Reply(413, f"request body is over this server's limit of {limit} bytes "
                             "(medflow serve --max-request-mb)", "REQUEST_TOO_LARGE")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model, max_request_bytes: int):
    """The ASGI app around a loaded ``mlflow.pyfunc`` model of a medflow bundle."""
    from mlflow.exceptions import MlflowException
    from mlflow.version import VERSION
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from medflow.inference.serving import RequestRefused

    schema = model.metadata.get_input_schema()
    columns = schema.input_names() if schema is not None else []
    pschema = model.metadata.get_params_schema()
    params_known = [p.name for p in pschema.params] if pschema is not None else []
    turn = asyncio.Semaphore(1)

    def run(frame, params):
        try:
            return model.predict(frame, params=params or None)
        except RequestRefused as err:
            raise Reply(err.status, " ".join(str(err).split()), "PERMISSION_DENIED" if err.status == 403
                        else "INVALID_PARAMETER_VALUE") from None
        except MlflowException as err:  # MLflow's schema check: the first line, at most 300 characters
            raise Reply(422, f"input does not match the model's signature: {str(err.message).splitlines()[0][:300]}",
                        "INVALID_PARAMETER_VALUE") from None

    async def invocations(request):
        try:
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise Reply(415, f"content type must be application/json, got {ctype or 'none'}",
                            "UNSUPPORTED_MEDIA_TYPE")
            body = await read_body(request, max_request_bytes)
            frame, params = parse_request(body, columns, params_known)
            del body
            async with turn:
                result = await asyncio.to_thread(run, frame, params)
            text = result.to_json(orient="records", double_precision=15)
            if len(result) and (result["error"] != "").all():
                raise Reply(422, "every row failed; each row's error says why", "INVALID_INPUT",
                            predictions=json.loads(text))
            return Response('{"predictions": ' + text + "}", media_type="application/json")
        except Reply as reply:
            return JSONResponse({"error_code": reply.code, "message": reply.message, **reply.extra},
                                status_code=reply.status)
        except Exception:  # noqa: BLE001  (the client gets one line; the trace stays in the server log)
            log.exception("internal error answering /invocations")
            return JSONResponse({"error_code": "INTERNAL_ERROR", "message": "internal error; the server's log "
                                 "has the details"}, status_code=500)

    async def ping(request):
        return Response("\n", media_type="application/json")

    async def version(request):
        return Response(VERSION, media_type="application/json")

    return Starlette(routes=[Route("/invocations", invocations, methods=["POST"]),
                             Route("/ping", ping), Route("/health", ping), Route("/version", version)])


def load_served_model(uri: str, allow_paths: list[str]):
    """The pyfunc model at ``uri`` with its path allowance (ValueError when the version cannot take one)."""
    import mlflow

    from medflow.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    model = mlflow.pyfunc.load_model(uri, model_config={"allow_paths": list(allow_paths)})
    if allow_paths and "allow_paths" not in model.model_config:
        raise ValueError(f"{uri} was registered before medflow could allow paths; re-run its export to serve "
                         "files from disk, or send the data in the request")
    return model


def app_from_env():
    """uvicorn's factory: the model and options ``medflow serve`` put in the environment."""
    options = json.loads(os.environ.get(ENV_OPTIONS) or "{}")
    model = load_served_model(os.environ[ENV_MODEL], options.get("allow_paths", []))
    limit = int(options.get("max_request_bytes", DEFAULT_MAX_REQUEST_MB * 2**20))
    return create_app(model, limit)
