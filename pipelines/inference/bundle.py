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
    """

    folder: Path
    plan: InferencePlan
    runtime: str
    net: object

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
    import json

    from medflow.tasks import task_for

    folder = Path(folder)
    if not (folder / PLAN).is_file():
        raise BundleError(f"{folder}: not an export bundle (no {PLAN})")
    try:
        family = json.loads((folder / PLAN).read_text()).get("family")
        task_for(family, str(folder / PLAN))  # an unknown family says so before any missing key does
        return load_plan(folder)
    except (PlanError, ValueError, AttributeError) as err:
        raise BundleError(str(err) if not isinstance(err, AttributeError) else f"{folder / PLAN}: not a JSON object") from None


def load_bundle(folder: Path, runtime: str = "keras", *, threads: int = 0) -> Bundle:
    """Load the bundle in ``folder`` with the network on ``runtime``."""
    from medflow.models.runtimes import load_runtime

    folder = Path(folder)
    plan = read_plan(folder)
    try:
        net = load_runtime(folder, runtime, threads=threads)
    except FileNotFoundError as err:
        raise BundleError(str(err)) from None
    return Bundle(folder, plan, runtime, net)
