"""``medflow serve --model models:/NAME@ALIAS``: a registered export behind MLflow's scoring server.

It runs ``mlflow models serve --env-manager local`` from this environment (the
bundle's code and pins are already here), on 127.0.0.1 with one worker, against
the project's tracking store. ``POST /invocations`` then takes the request rows
documented in pipelines/serving.py and the README.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def serve_command(model: str, port: int, host: str = "127.0.0.1") -> tuple[list[str], dict]:
    """The command line and environment that serve ``model``."""
    from medflow.tracking.runs import tracking_uri

    bindir = str(Path(sys.executable).parent)
    # The scoring server starts `uvicorn` by name: this environment's bin folder must come first.
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "MLFLOW_TRACKING_URI": tracking_uri(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [str(Path(bindir) / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
           "-h", host, "-p", str(port), "-w", "1"]
    return cmd, env


def cmd_serve(args) -> int:
    cmd, env = serve_command(args.model, args.port, args.host)
    print(f"serving {args.model} on http://{args.host}:{args.port}/invocations (Ctrl+C stops)", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def add_parser(sub, fmt, examples) -> None:
    p = sub.add_parser("serve", help="serve a registered export over HTTP (MLflow scoring server)",
                       formatter_class=fmt, epilog=examples("""
                           medflow serve --model models:/segmentation@champion
                           medflow serve --model models:/reconstruction/3 --port 5002
                       """))
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/model")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--host", default="127.0.0.1", help="keep 127.0.0.1 unless a proxy guards the port")
    p.set_defaults(func=cmd_serve)
