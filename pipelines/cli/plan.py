"""``medflow plan`` and ``medflow run --plan``: a self-configured plan for a pipeline, on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

from medflow.cli.exit_codes import EXIT_CONFIG

DEFAULT_BUDGET = "30m"


def plan_path(name: str) -> Path:
    """Where ``medflow plan`` writes the plan of pipeline ``name``: ``<workspace>/plans/<name>.yaml``."""
    from medflow.core.workspace import workspace_root

    return workspace_root() / "plans" / f"{name}.yaml"


def make_plan_file(cfg, budget: str | None, out: Path | None = None) -> Path:
    """Measure the machine, plan ``cfg`` for ``budget`` (else its train.budget, else 30m), write and print it."""
    from medflow.planning.machine import measure
    from medflow.planning.plan import make_plan, render, write_plan

    budget = budget or cfg.train.budget or DEFAULT_BUDGET
    machine = measure()
    text = render(cfg.name, budget, machine, make_plan(cfg, budget, machine))
    path = write_plan(out or plan_path(cfg.name), text)
    print(text, end="")
    print(f"plan written to {path}", flush=True)
    return path


def planning_config(path: str, sets: list[str], profile):
    """The config a plan is made for: ``train.epochs`` cleared (a plan trains to a budget), so the packaged
    configs' epochs do not clash with a ``--set train.budget``."""
    from medflow.core.loading import load_config

    return load_config(path, ["train.epochs=null", *sets], profile)


def apply_plan(spec: str, path: str, sets: list[str], profile, budget: str | None = None):
    """``--plan auto|FILE`` for the pipeline at ``path``: (config with the plan applied, the plan file).

    The plan's overrides come after the profile and before ``sets``, so a ``--set`` still wins.
    """
    from medflow.core.loading import load_config
    from medflow.planning.plan import plan_overrides

    if spec == "auto":
        file = make_plan_file(planning_config(path, sets, profile), budget)
    else:
        file = Path(spec)
    return load_config(path, [*plan_overrides(file), *sets], profile), file


def cmd_plan(args) -> int:
    from medflow.core.config import ConfigError
    from medflow.core.engine import StageFailed
    try:
        cfg = planning_config(args.pipeline, args.set, args.profile)
        if args.budget:
            from medflow.training.budget import parse_budget

            parse_budget(args.budget)
        make_plan_file(cfg, args.budget, Path(args.out) if args.out else None)
    except (ConfigError, StageFailed, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def add_parser(sub, fmt, examples) -> None:
    p = sub.add_parser("plan", help="plan spacing, 2D/3D, patch, batch, depth, width and steps for a time budget",
                       formatter_class=fmt, epilog=examples("""
                           medflow plan pipelines/configs/segmentation.yaml --budget 30m
                           medflow plan pipelines/configs/classification.yaml --profile demo --budget 4m --out plan.yaml
                           medflow run pipelines/configs/segmentation.yaml --plan auto --set train.budget=45m
                           medflow run pipelines/configs/segmentation.yaml --plan plan.yaml"""))
    p.add_argument("pipeline", help="pipeline YAML")
    p.add_argument("--budget", help="training wall time to plan for: 90s, 4m, 45m, 2h (default: the config's "
                                    f"train.budget, else {DEFAULT_BUDGET})")
    p.add_argument("--out", help="plan file to write (default: <workspace>/plans/<pipeline>.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--profile", action="append", help="named profile(s) from the YAML (repeatable)")
    p.set_defaults(func=cmd_plan)
