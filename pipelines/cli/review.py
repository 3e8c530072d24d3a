"""``medflow ui`` and ``medflow report``: experiment review."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from medflow.cli.exit_codes import EXIT_CONFIG, EXIT_FAILED

# What a local imaging team does not use, off where MLflow 3.17 has a switch: the AI gateway
# (LLM endpoints and its pages) and the job runner (GenAI scorers). The assistant panel has no
# switch; it answers only on localhost, which is where `medflow ui` listens.
UI_ENV = {"MLFLOW_ENABLE_AI_GATEWAY": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def ui_command(uri: str, port: int, host: str = "127.0.0.1") -> tuple[list[str], dict]:
    """(argv, environment) of the MLflow UI for the store at ``uri``."""
    from medflow.tracking.runs import default_artifact_root

    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", default_artifact_root(uri)]
    return cmd, {**os.environ, **UI_ENV}


def cmd_ui(args) -> int:
    from medflow.tracking.runs import tracking_uri, ui_url

    uri = tracking_uri()
    cmd, env = ui_command(uri, args.port)
    print(f"MLflow UI for {uri} at {ui_url(f'http://127.0.0.1:{args.port}')} (Ctrl-C to stop)", flush=True)
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


def cmd_report(args) -> int:
    """Write ``report.html`` for a pipeline run (its MLflow run id) or a pipeline's finished stages."""
    from medflow.data.atomic import write_atomic
    from medflow.review.report import build_report

    source = args.source
    if source.endswith((".yaml", ".yml")) or Path(source).is_file():
        from medflow.core.config import ConfigError
        from medflow.core.loading import dump_yaml, load_config
        from medflow.core.runner import finished_outputs
        from medflow.review.spec import run_label

        try:
            cfg = load_config(source, args.set, args.profile)
        except ConfigError as err:
            print(err, file=sys.stderr)
            return EXIT_CONFIG
        outputs = finished_outputs(cfg)  # a stage not run (yet) for this config: the page leaves it out
        if not outputs:
            print(f"error: {source}: no stage of this pipeline has finished; run it first", file=sys.stderr)
            return EXIT_FAILED
        page = build_report(run_label(cfg), outputs, description=cfg.description, config_yaml=dump_yaml(cfg.resolved()))
    else:
        from medflow.tracking.review import run_outputs

        try:
            title, outputs, config, description = run_outputs(source)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILED
        page = build_report(title, outputs, description=description, config_yaml=config, run_id=source)
    dest = Path(args.out) / "report.html"
    with write_atomic(dest) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(dest)
    return 0


def add_parsers(sub, fmt, examples) -> None:
    p = sub.add_parser("ui", help="open the MLflow UI on 127.0.0.1 for the project's store", formatter_class=fmt,
                       epilog=examples("""
                           medflow ui
                           medflow ui --port 5001
                           MLFLOW_TRACKING_URI=sqlite:////data/other.db medflow ui
                       """))
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("report", help="write a run's report.html (figures, metrics vs baseline, per-case table)",
                       formatter_class=fmt, epilog=examples("""
                           medflow report 3f2a9c0d1e6b4f5a8c7d6e5f4a3b2c1d --out /tmp/review
                           medflow report pipelines/configs/segmentation.yaml --profile demo --out /tmp/review
                       """))
    p.add_argument("source", metavar="RUN_ID|PIPELINE.yaml", help="an MLflow pipeline (or fold/model) run id, "
                                                                    "or a pipeline whose stages have finished")
    p.add_argument("--out", required=True, help="folder for report.html")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--profile", action="append", help="named profile(s) from the YAML (repeatable)")
    p.set_defaults(func=cmd_report)
