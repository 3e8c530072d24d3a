"""``medflow cv`` and ``medflow compare``: experiments of several trainings under one MLflow parent run."""

from __future__ import annotations

import sys


def _common(p) -> None:
    p.add_argument("pipeline", metavar="PIPELINE.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--profile", action="append", help="apply a named profile from the YAML first (repeatable)")
    p.add_argument("--force", action="store_true", help="redo finished stages")
    p.add_argument("--workers", type=int, help="parallel case workers (default: config, 0 = all cores)")


def _run(args, fn, **kwargs) -> int:
    from medflow.cli.exit_codes import EXIT_CONFIG, EXIT_FAILED
    from medflow.core.config import ConfigError
    from medflow.core.engine import StageFailed
    from medflow.core.loading import load_config
    from medflow.tracking.runs import MlflowTracker

    try:
        cfg = load_config(args.pipeline, args.set, args.profile)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    tracker = MlflowTracker()
    try:
        result = fn(cfg, tracker=tracker, force=args.force, workers=args.workers, config_path=args.pipeline,
                    profile=args.profile, **kwargs)
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"\nexperiment {tracker.experiment_name}, parent run {result['parent_run_id']}")
    print(result.get("folds_md") or result.get("table_md"), end="")
    if "best" in result:
        print(f"best on {result['metric'].replace('_', ' ')}: {result['best']}")
    print(f"report: {result['report_dir']}")
    print(f"tracking store: {tracker.uri}\nopen the MLflow UI:  medflow ui")
    return 0


def cmd_cv(args) -> int:
    from medflow.core.experiments import run_cv

    return _run(args, run_cv)


def cmd_compare(args) -> int:
    from medflow.core.experiments import run_compare

    models = [m.strip() for m in args.models.split(",")] if args.models else None
    return _run(args, run_compare, models=models)


def add_parsers(sub, fmt, examples) -> None:
    p = sub.add_parser("cv", help="k-fold cross-validation: every fold a child run, mean +/- sd on the parent",
                       formatter_class=fmt, epilog=examples("""
                           medflow cv pipelines/configs/classification.yaml
                           medflow cv pipelines/configs/classification.yaml --profile demo --set split.folds=3
                       """))
    _common(p)
    p.set_defaults(func=cmd_cv)
    p = sub.add_parser("compare", help="train the config's compare.models on one split under one parent run",
                       formatter_class=fmt, epilog=examples("""
                           medflow compare pipelines/configs/classification.yaml
                           medflow compare pipelines/configs/classification.yaml --models logistic,cnn --profile demo
                       """))
    _common(p)
    p.add_argument("--models", help="comma-separated subset of compare.models (default: all)")
    p.set_defaults(func=cmd_compare)
