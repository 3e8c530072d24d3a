"""kill -9 at seeded points of every stage, then a re-run: the results equal an uninterrupted run's,
no temporary file survives, no MLflow run stays RUNNING, and the registry holds one complete version.

Points are counted on an uninterrupted run (``MEDFLOW_FAULT_COUNT``, see medflow.data.faults): every
atomic write before and after its rename, every training batch, every registration step. Each stage
gets 10 of them, drawn with a seed and covering every kind it has (mid-write, mid-checkpoint,
mid-epoch, mid-registration); a stage with 10 or fewer points gets all of them.
"""

from __future__ import annotations

import random
import shutil
import zlib
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.common import (STAGES, env_for, fingerprint, leftovers, medflow, record, reference_run,
                                 running_runs, stage_folder)

pytestmark = [pytest.mark.slow, pytest.mark.faults]
KILLS = 10


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = reference_run(tmp_path_factory.mktemp("kill"))
    from medflow.tracking.runs import MlflowTracker

    MlflowTracker(f"sqlite:///{ref['tmp'] / 'empty.db'}")  # a fresh store for each export kill (empty registry)
    return {**ref, "template": ref["tmp"] / "empty.db"}


def choose(kinds: list[str], n: int, seed: int) -> list[int]:
    """``n`` 1-based point numbers out of ``kinds``: one of each kind first, then seeded draws; all if few."""
    if len(kinds) <= n:
        return list(range(1, len(kinds) + 1))
    rng = random.Random(seed)
    picked = {rng.choice([i for i, k in enumerate(kinds, 1) if k == kind]) for kind in sorted(set(kinds))}
    rest = [i for i in range(1, len(kinds) + 1) if i not in picked]
    return sorted(picked | set(rng.sample(rest, n - len(picked))))


def where(stage: str, kind: str) -> str:
    return {"write": "mid-write", "publish": "after a write", "step": "mid-epoch",
            "register": "mid-registration"}[kind] if not (stage == "train" and kind == "write") else "mid-checkpoint"


@pytest.mark.parametrize("stage", STAGES)
def test_kill_anywhere_in_a_stage_then_rerun_gives_identical_results(reference, stage, tmp_path):
    kinds = reference["points"][stage]
    assert kinds, f"no fault points counted in {stage}"
    chosen = choose(kinds, KILLS, zlib.crc32(stage.encode()))
    folder = stage_folder(reference["ws"], stage)
    failures, covered = [], Counter()
    for n in chosen:
        store = reference["store"]
        if stage == "export":
            shutil.copyfile(reference["template"], tmp_path / f"s{n}.db")
            store = f"sqlite:///{tmp_path / f's{n}.db'}"
        shutil.rmtree(folder)
        env = env_for(reference["ws"], store)
        killed = medflow("run", reference["pipeline"], "--stage", stage,
                         env={**env, "MEDFLOW_FAULT": f"kill@{stage}:{n}"})
        rerun = medflow("run", reference["pipeline"], "--stage", stage, env=env)
        problems = []
        if killed.returncode != -9:
            problems.append(f"the kill did not happen (exit {killed.returncode})")
        if rerun.returncode != 0:
            problems.append(f"re-run failed: {rerun.stderr[-1500:]}")
        elif fingerprint(folder) != reference["prints"][stage]:
            a, b = fingerprint(folder), reference["prints"][stage]
            problems.append(f"differs: {sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))}")
        if leftovers(folder):
            problems.append(f"left behind: {leftovers(folder)}")
        if running_runs(store):
            problems.append(f"runs left RUNNING: {running_runs(store)}")
        if stage == "export" and not problems:
            problems += registry_problems(store, folder)
        covered[where(stage, kinds[n - 1])] += 1
        if problems:
            failures.append(f"kill@{stage}:{n} ({kinds[n - 1]}): {'; '.join(problems)}")
    kinds_text = ", ".join(f"{v} {k}" for k, v in sorted(covered.items()))
    record("kill -9", f"{stage}: kill, then re-run", len(chosen), len(chosen) - len(failures),
           f"{len(chosen)} of {len(kinds)} points ({kinds_text}); results identical after re-run")
    assert not failures, "\n".join(failures)


def registry_problems(store: str, folder: Path) -> list[str]:
    """One version, complete (identity and selection tags, champion decision), the champion."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    versions = client.search_model_versions("name = 'test'")
    if len(versions) != 1:
        return [f"{len(versions)} registered versions"]
    (mv,) = versions
    missing = {"medflow.bundle", "medflow.selection_metric", "medflow.selection_value",
               "medflow.champion_comparison", "medflow.champion_decision"} - set(mv.tags)
    problems = [f"version 1 lacks tags {sorted(missing)}"] if missing else []
    if mv.tags.get("medflow.bundle") != str(folder):
        problems.append(f"version 1 is of bundle {mv.tags.get('medflow.bundle')}")
    if str(client.get_model_version_by_alias("test", "champion").version) != str(mv.version):
        problems.append("champion alias not on the one version")
    return problems
