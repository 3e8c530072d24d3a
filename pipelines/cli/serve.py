"""``medflow serve --model models:/NAME@ALIAS``: a registered export over HTTP.

It runs medflow's scoring app (medflow/tracking/scoring.py: MLflow's protocol, the
same pyfunc model, plus a request-size limit and answers without traces) under
uvicorn, one worker, on 127.0.0.1 unless told otherwise, against the project's
tracking store. By default requests carry their data; ``--allow-paths DIR`` lets
``path`` rows and ``output_dir`` name places inside DIR (medflow/inference/serving.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from medflow.cli.exit_codes import EXIT_CONFIG

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_command(model: str, port: int, host: str = "127.0.0.1", allow_paths=(),
                  max_request_mb: float | None = None) -> tuple[list[str], dict]:
    """The command line and environment that serve ``model``."""
    from medflow.tracking.runs import tracking_uri
    from medflow.tracking.scoring import DEFAULT_MAX_REQUEST_MB, ENV_MODEL, ENV_OPTIONS

    options = {"allow_paths": [str(Path(p).resolve()) for p in allow_paths],
               "max_request_bytes": int((max_request_mb or DEFAULT_MAX_REQUEST_MB) * 2**20)}
    env = {**os.environ, ENV_MODEL: model, ENV_OPTIONS: json.dumps(options),
           "MLFLOW_TRACKING_URI": tracking_uri(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "medflow.tracking.scoring:app_from_env",
           "--host", host, "--port", str(port), "--workers", "1", "--no-server-header"]
    return cmd, env


def cmd_serve(args) -> int:
    for folder in args.allow_paths:
        if not Path(folder).is_dir():
            print(f"error: --allow-paths {folder}: no such folder", file=sys.stderr)
            return EXIT_CONFIG
    if args.max_request_mb is not None and args.max_request_mb <= 0:
        print("error: --max-request-mb must be positive", file=sys.stderr)
        return EXIT_CONFIG
    cmd, env = serve_command(args.model, args.port, args.host, args.allow_paths, args.max_request_mb)
    if args.host not in LOOPBACK:
        print(f"warning: serving on {args.host}: this endpoint has no authentication; put it behind an "
              "authenticating proxy (TLS and login) before anyone else can reach it", file=sys.stderr)
    where = ", ".join(str(Path(p).resolve()) for p in args.allow_paths) or "none (requests carry their data)"
    print(f"serving {args.model} on http://{args.host}:{args.port}/invocations; server folders: {where} "
          "(Ctrl+C stops)", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def add_parser(sub, fmt, examples) -> None:
    p = sub.add_parser("serve", help="serve a registered export over HTTP (MLflow's scoring protocol)",
                       formatter_class=fmt, epilog=examples("""
                           medflow serve --model models:/segmentation@champion
                           medflow serve --model models:/reconstruction/3 --port 5002
                           medflow serve --model models:/segmentation@champion --allow-paths /data/incoming
                       """))
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--host", default="127.0.0.1", help="keep 127.0.0.1 unless an authenticating proxy guards "
                                                       "the port")
    p.add_argument("--allow-paths", action="append", default=[], metavar="DIR",
                   help="let path rows and output_dir name files inside DIR (repeatable); off by default")
    p.add_argument("--max-request-mb", type=float, default=None,
                   help="largest request body in MiB (default 1024: one 512x512x1000 CT as raw NIfTI in base64)")
    p.set_defaults(func=cmd_serve)
