"""``medflow plan``: the plan file, a YAML of ``--set`` overrides with a reason on every line.

A plan is made for one pipeline config (its profile and ``--set`` applied), the data it names (the
ingest stage's fingerprint, or the simulate section) and this machine (:mod:`medflow.planning.machine`).
It is written to ``<workspace>/plans/<pipeline>.yaml``, a file a person can read and edit::

    # medflow plan for segmentation, budget 30m
    # machine: 2 cores, 23 GiB, U-Net training at 61.2 GFLOP/s (2D) and 41.0 GFLOP/s (3D), measured
    # data: 20 cases, median spacing 1 x 1 x 1 mm, median foreground 139 x 176 x 151 mm (RAS)
    preprocess.spacing: [1.0, 1.0, 1.0]   # the median spacing of 20 cases
    ...

``medflow run --plan auto`` makes the plan and applies it; ``--plan FILE`` applies a plan file. Either
way the plan comes after the profile and before ``--set``, so a ``--set`` still has the last word.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from medflow.data.atomic import write_atomic

HEADER = "# medflow plan"


def dataset_fingerprint(cfg) -> dict:
    """The ingest stage's fingerprint for ``cfg`` (the stage runs first if it has not, untracked).

    Raises:
        ValueError: when no case passed ingest.
    """
    from medflow.core.runner import finished_output, run_pipeline

    run_pipeline(cfg, target="ingest")
    fp = json.loads(finished_output(cfg, "ingest").file("fingerprint.json").read_text())
    if not fp.get("n_cases"):
        raise ValueError(f"{cfg.dataset.root}: no valid case to plan from (see the ingest quarantine)")
    return fp


def make_plan(cfg, budget: str, machine) -> dict:
    """The plan for ``cfg`` with ``budget`` (``30m``) on ``machine``: ``{"choices", "data", "samples"}``."""
    from medflow.planning.rules import budget_choices
    from medflow.tasks import TASKS
    from medflow.training.budget import parse_budget

    task = TASKS[cfg.model.family]
    fingerprint = dataset_fingerprint(cfg) if task.planned_from_ingest else None
    out = task.experiment_plan(cfg, fingerprint, machine, parse_budget(budget))
    batch = next(c.value for c in out["choices"] if c.key == "loader.batch_size")
    return {**out, "choices": out["choices"] + budget_choices(budget, out["samples"], batch)}


def render(name: str, budget: str, machine, plan: dict) -> str:
    """The plan file's text: a header (pipeline, budget, machine, data), then one ``key: value  # reason``
    line per choice. Loading it with YAML gives the overrides."""
    lines = [f"{HEADER} for {name}, budget {budget}", f"# machine: {machine.line()}", f"# data: {plan['data']}",
             "# Edit freely; apply with: medflow run PIPELINE --plan THIS_FILE (a --set still wins)."]
    rows = [(f"{c.key}: {json.dumps(c.value)}", c.reason) for c in plan["choices"]]
    width = max(len(r[0]) for r in rows)
    lines += [f"{kv.ljust(width)}   # {why}" for kv, why in rows]
    return "\n".join(lines) + "\n"


def write_plan(path: Path, text: str) -> Path:
    with write_atomic(Path(path)) as tmp:
        tmp.write_text(text)
    return Path(path)


def _plan_doc(path: Path) -> dict:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not a readable plan file ({' '.join(str(err).split())})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a plan file is a mapping of --set keys to values")
    return doc


def plan_overrides(path: Path) -> list[str]:
    """A plan file as ``--set`` strings, in file order.

    Raises:
        ValueError: naming the file, when it is not a mapping of dotted keys to values.
    """
    return [f"{key}={json.dumps(value)}" for key, value in _plan_doc(path).items()]


def plan_params(path: Path) -> dict[str, str]:
    """The plan's choices as MLflow parameters ``plan/<key>`` (values as JSON)."""
    return {f"plan/{key}": json.dumps(value) for key, value in _plan_doc(path).items()}
