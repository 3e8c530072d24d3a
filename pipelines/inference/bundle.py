"""An export bundle: the model in three runtimes plus everything needed around it.

A bundle folder (written by the export stage) holds ``model.keras``,
``saved_model/``, ``model.onnx`` (see medflow/models/runtimes.py), ``plan.json``
(the typed :class:`~medflow.inference.plan.InferencePlan` plus provenance) and
``MODEL_CARD.md``. :class:`Bundle` runs the plan on raw inputs through the
family's task, so a case goes in and its result comes out in the input's own
space, whatever runtime executes the network:

- segmentation: (X, Y, Z[, C]) volume + affine -> (X, Y, Z) label map and (X, Y, Z, K) probabilities
  on the input's grid;
- classification: volume + affine -> (K,) class probabilities;
- reconstruction: (N, detectors, angles) sinograms -> (N, S, S) images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from medflow.inference.plan import PLAN, InferencePlan, PlanError, load_plan

CARD = "MODEL_CARD.md"


class BundleError(ValueError):
    """The bundle folder is missing, incomplete or of an unknown family (one line)."""


@dataclass
class Bundle:
    """A loaded export bundle (or a train folder: it has the same plan).

    Attributes:
        folder: the bundle folder.
        plan: its inference plan.
        runtime: which runtime runs the network ('keras', 'saved_model' or 'onnx').
        net: ``net(x) -> y`` over float32 batches shaped like the model's input.
        source: how another process opens the same bundle (medflow.inference.remote.reopen):
            ("bundle", folder, runtime) or ("train", folder, model file); empty for one made in memory.
    """

    folder: Path
    plan: InferencePlan
    runtime: str
    net: object
    source: tuple = ()

    @property
    def family(self) -> str:
        return self.plan.family

    @property
    def task(self):
        from medflow.tasks import TASKS

        return TASKS[self.plan.family]

    def read_input(self, path):
        """One input file as the task's case (CaseError / ValueError naming the file's problem)."""
        return self.task.read_input(self.plan, path)

    def infer(self, case):
        """The task's result for one case (see :meth:`medflow.tasks.base.Task.infer`)."""
        return self.task.infer(self.plan, self.net, case)


def read_plan(folder: Path) -> InferencePlan:
    """The plan of a bundle folder, of a family medflow knows."""
    from medflow.tasks import TASKS, task_for

    folder = Path(folder)
    if not (folder / PLAN).is_file():
        raise BundleError(f"{folder}: not an export bundle (no {PLAN})")
    try:
        plan = load_plan(folder)
    except PlanError as err:
        family = _declared_family(folder / PLAN)
        if family is not None and family not in TASKS:  # say the family is unknown, not what it lacks
            raise BundleError(f"{folder / PLAN}: unknown model family {family!r}; known: {', '.join(TASKS)}") from None
        raise BundleError(str(err)) from None
    try:
        task_for(plan.family, str(folder / PLAN))
    except ValueError as err:
        raise BundleError(str(err)) from None
    return plan


def _declared_family(path: Path):
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc.get("family") if isinstance(doc, dict) else None


def load_bundle(folder: Path, runtime: str = "keras", *, threads: int = 0) -> Bundle:
    """Load the bundle in ``folder`` with the network on ``runtime``."""
    from medflow.models.runtimes import load_runtime

    folder = Path(folder)
    plan = read_plan(folder)
    try:
        net = load_runtime(folder, runtime, threads=threads)
    except FileNotFoundError as err:
        raise BundleError(str(err)) from None
    return Bundle(folder, plan, runtime, net, ("bundle", str(folder), runtime))
