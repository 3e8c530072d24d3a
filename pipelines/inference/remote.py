"""Inference in another process (a Ray worker): reopen a bundle once per process, then run cases on it.

A loaded network does not travel between processes; how to open it does
(:attr:`Bundle.source`). Each worker opens it on its first case and keeps it for
the rest, so a cluster of N workers loads the model N times, not once per case.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=2)
def reopen(source: tuple):
    """The Bundle that ``source`` describes: ("bundle", folder, runtime) or ("train", folder, model file)."""
    from medflow.inference.bundle import Bundle, load_bundle, read_plan

    kind, folder, what = source
    if kind == "bundle":
        return load_bundle(Path(folder), what)
    # A train folder's model on Keras, as medflow.inference.predict opens it (not imported: its imports
    # reach the tracking package, and this module's code version keys the evaluate stage).
    from medflow.models.inference import keras_predictor
    from medflow.models.runtimes import load_keras

    return Bundle(Path(folder), read_plan(Path(folder)), "keras", keras_predictor(load_keras(Path(folder) / what)),
                  tuple(source))


def predict_one(job: dict) -> dict | None:
    """One input of ``medflow predict``: read, infer (or explain), write its files; its table row (or None).

    ``job``: source (Bundle.source), path, name, output, explain (ExplainSettings or None).
    Raises the task's CaseError / ValueError for a bad input, as the local loop does.
    """
    bundle = reopen(tuple(job["source"]))
    task, plan = bundle.task, bundle.plan
    case = task.read_input(plan, job["path"])
    explain = job["explain"]
    result = task.infer(plan, bundle.net, case) if explain is None else task.explain(plan, bundle.net, case, explain)
    return task.write_result(plan, result, Path(job["output"]), job["name"], case)
