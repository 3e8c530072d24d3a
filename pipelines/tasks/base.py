"""What a model family is: one :class:`Task` per family, looked up as ``TASKS[plan.family]``.

A task owns everything that differs between families: the loss and metrics,
the inference plan that train writes, ``infer(plan, net, case)``, reading
inputs and writing outputs, evaluation, the served columns, the model card's
section and the run summary's lines. The engine, stages, export, predict,
serving and benchmarks ask the task and never compare family names.

``net`` is any ``net(x) -> y`` over float32 batches shaped like the model's
input (Keras, SavedModel or ONNX Runtime; see ``medflow.models.runtimes``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medflow.data.dicom.series import DicomVolume
from medflow.data.images import read_image, split_ref
from medflow.data.nifti import CaseError, is_nifti_name, strip_nifti_suffix
from medflow.inference.plan import InferencePlan

Net = Callable[[np.ndarray], Any]


@dataclass
class VolumeCase:
    """One volume to run a volume model on.

    Attributes:
        channels: one (X, Y, Z) float32 array per input channel, on the grid of ``affine``.
        affine: (4, 4) voxel-to-world matrix.
        reference: the NIfTI file it came from, whose header outputs keep (None for arrays and DICOM).
        series_uid: a DICOM input's SeriesInstanceUID.
        source_files: a DICOM input's slice files in the order of axis 2 (a DICOM SEG references them).
    """

    channels: list[np.ndarray]
    affine: np.ndarray
    reference: str | None = None
    series_uid: str | None = None
    source_files: list[str] | None = None


class Task:
    """The base of every family; subclasses set ``family`` and override what differs.

    Column specs (:meth:`signature`) are (name, type, required) with type 'string', 'double' or
    ('array', depth) for nested lists of doubles: the tracking package turns them into MLflow's
    schema, so no task imports mlflow.
    """

    family: str = ""
    input_kind: str = "NIfTI"  # what `medflow predict --input DIR` lists
    reads_dicom: bool = True  # `medflow predict --input DIR` also takes DICOM series (volume models)
    selection: dict = {}  # champion rule: metric, stage, greater_is_better
    class_targets: bool = False  # cases carry a class target (stratified splits, class weights)
    trained_by: str = "train"  # the stage that trains this family's models
    voxel_targets: bool = False  # the target is a map per voxel (a label map), not one value per sample
    explains: bool = False  # :meth:`explain` gives maps of why (`medflow predict --explain`)
    planned_from_ingest: bool = True  # `medflow plan` reads the ingest stage's fingerprint

    # -- training ------------------------------------------------------------------------------
    def loss_and_metrics(self, tc, n_classes: int, outputs: list[str] | None = None) -> tuple:
        raise NotImplementedError

    def sgd_momentum(self, tc) -> float:
        return tc.momentum

    def finishes_training(self, cfg) -> bool:
        """Whether :meth:`finish_training` changes a model trained with ``cfg`` (else it is not even loaded)."""
        return False

    def finish_training(self, cfg, plan: InferencePlan, model, store, train_ids: list[str]) -> dict | None:
        """After training, before ``model.keras`` is final: change ``model`` in place where the family needs
        it (``store``: the preprocessed cases). Returns {"record": keys for train.json, "metrics": for the
        manifest, "line": one line to print}, or None: nothing was changed."""
        return None

    # -- the plan ------------------------------------------------------------------------------
    def experiment_plan(self, cfg, fingerprint: dict | None, machine, budget_s: float) -> dict:
        """``medflow plan``: {"choices": [rules.Choice, ...], "samples": affordable training samples,
        "data": one line saying what the plan was made from} for ``cfg``'s data (``fingerprint``: the
        ingest stage's, when :attr:`planned_from_ingest`), ``machine`` and the budget."""
        raise NotImplementedError(f"{self.family}: no experiment planner")

    def inference_plan(self, cfg, facts: dict) -> InferencePlan:
        """The plan of a model trained with ``cfg``; ``facts`` are the train stage's (classes, shape, ...)."""
        raise NotImplementedError

    def export_data(self, cfg, train_info: dict, scored) -> dict:
        """What the model card says about the data: the train stage's train.json, the evaluate output."""
        raise NotImplementedError

    # -- inference -----------------------------------------------------------------------------
    def is_input(self, path: Path) -> bool:
        return is_nifti_name(path)

    def case_name(self, path) -> str:
        folder, uid = split_ref(str(path))
        if uid is not None:  # a DICOM series: de-identified, as ingest names it with the default salt
            from medflow.data.dicom.ids import case_id

            return case_id(uid)
        return strip_nifti_suffix(Path(str(path)).name)

    def read_input(self, plan: InferencePlan, path, max_voxels: int | None = None) -> VolumeCase:
        """The channels and affine of one input: a NIfTI file (a 4D one holds the channels on its last axis)
        or a DICOM series (``folder`` or ``folder#SeriesInstanceUID``, one channel).

        ``max_voxels`` refuses a larger header before decoding (untrusted bytes from a request).

        Raises:
            CaseError: unreadable file, or a channel count the model was not trained on.
        """
        n = len(plan.channels)
        vol = read_image(path, expect_ndim=3 if n == 1 else 4, max_voxels=max_voxels)
        if isinstance(vol, DicomVolume):
            return VolumeCase([vol.data], vol.affine, None, series_uid=vol.series_uid, source_files=vol.files)
        data = vol.data if vol.data.ndim == 4 else vol.data[..., None]
        if data.shape[-1] != n:
            raise CaseError(path, f"{data.shape[-1]} channel(s), the model expects {n} ({', '.join(plan.channels)})")
        return VolumeCase([data[..., c] for c in range(n)], vol.affine, str(path))

    def infer(self, plan: InferencePlan, net: Net, case) -> Any:
        raise NotImplementedError

    def explain(self, plan: InferencePlan, net: Net, case, settings) -> Any:
        """:meth:`infer` plus maps of why (classifiers); ``settings`` an ExplainSettings."""
        raise ValueError(f"{self.family} models have no explanations (--explain is for classifiers)")

    def predict_files(self, plan: InferencePlan, net: Net, files: list[Path], output: Path, *, names: list[str],
                      bad, progress=None, batch_size: int = 16, suffix: str = "", explain=None) -> list[str]:
        """Run every file into ``output`` under its name in ``names``; ``bad(path, err)`` records a file that
        failed. Returns the names written.

        ``explain``: ExplainSettings to write explanation maps beside the results (:meth:`explain`).
        """
        written, rows = [], []
        for path, name in zip(files, names):
            try:
                case = self.read_input(plan, path)
                result = self.infer(plan, net, case) if explain is None else self.explain(plan, net, case, explain)
                row = self.write_result(plan, result, output, name, case)
                if row is not None:
                    rows.append(row)
                written.append(name)
            except (CaseError, ValueError) as err:
                bad(path, err)
            if progress is not None:
                progress.update(1)
        self.finish_outputs(output, rows, suffix)
        return written

    def write_result(self, plan: InferencePlan, result, output: Path, name: str, case) -> dict | None:
        """Write one case's output files into ``output``; return its row of the run's table, if any."""
        raise NotImplementedError

    def output_files(self, name: str, explain: bool = False) -> list[str]:
        """The files :meth:`write_result` writes for case ``name`` (so predict can refuse to overwrite them)."""
        return [f"{name}.nii.gz"]

    def table_files(self, suffix: str = "") -> list[str]:
        """The files :meth:`finish_outputs` writes (a classifier's table)."""
        return []

    def finish_outputs(self, output: Path, rows: list[dict], suffix: str = "") -> None:
        """Write what spans all cases from the rows :meth:`write_result` returned (a classifier's table)."""

    # -- serving -------------------------------------------------------------------------------
    def case_from_row(self, plan: InferencePlan, row: dict, max_voxels: int | None = None) -> VolumeCase:
        """A request row's volume: ``path``, ``nifti_b64``, or ``image`` + ``affine``.

        A ``nifti_b64`` problem is a CaseError naming ``nifti_b64`` (never the server's temporary file).
        """
        path, blob, image = cell(row, "path"), cell(row, "nifti_b64"), cell(row, "image")
        if path is not None:
            return self.read_input(plan, path, max_voxels)
        if cell(row, "dicom_zip_b64") is not None:
            from medflow.inference.dicom_zip import read_zipped_series

            case = read_zipped_series(cell(row, "dicom_zip_b64"), lambda folder: self.read_input(
                plan, folder, max_voxels), max_voxels)
            case.source_files = None  # the files are gone with the request's temporary folder
            return case
        if blob is not None:
            if not isinstance(blob, str):
                raise CaseError("nifti_b64", "must be a base64 string")
            try:  # validate: a lenient decode would drop stray characters and read a different file
                raw = base64.b64decode("".join(blob.split()), validate=True)
            except (binascii.Error, ValueError):
                raise CaseError("nifti_b64", "not valid base64") from None
            suffix = ".nii.gz" if raw[:2] == b"\x1f\x8b" else ".nii"
            fd, tmp = tempfile.mkstemp(suffix=suffix)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(raw)
                case = self.read_input(plan, tmp, max_voxels)
            except CaseError as err:
                raise CaseError("nifti_b64", err.problem) from None
            finally:
                os.unlink(tmp)
            case.reference = None
            return case
        if image is not None:
            affine = cell(row, "affine")
            if affine is None:
                raise ValueError("an image array needs its affine")
            arr, affine = np.asarray(image, dtype=np.float32), np.asarray(affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
                raise ValueError(f"affine must be a finite, invertible 4x4 matrix, got shape {affine.shape}")
            if arr.ndim == 3:
                arr = arr[..., None]
            if arr.ndim != 4:
                raise ValueError(f"image must be (X, Y, Z) or (X, Y, Z, C), got shape {arr.shape}")
            if max_voxels is not None and arr.size > max_voxels:
                raise ValueError(f"image holds {arr.size} values, over the limit of {max_voxels}")
            if not np.all(np.isfinite(arr)):
                raise ValueError("image holds NaN or infinite values")
            return VolumeCase([arr[..., c] for c in range(arr.shape[-1])], affine, None)
        raise ValueError("no input: give path, nifti_b64, dicom_zip_b64, or image and affine")

    def answer(self, plan: InferencePlan, result, case) -> dict:
        """The served columns of one result."""
        raise NotImplementedError

    def signature(self, plan: InferencePlan) -> tuple[list, list]:
        """(input column specs, output column specs) beyond ``case`` and ``error``."""
        voxels = ("array", 3 if len(plan.channels) == 1 else 4)  # (X, Y, Z) or (X, Y, Z, C)
        return ([("path", "string", False), ("nifti_b64", "string", False), ("dicom_zip_b64", "string", False),
                 ("image", voxels, False), ("affine", ("array", 2), False)], [])

    # -- review --------------------------------------------------------------------------------
    def card(self, plan: dict) -> dict:
        """The model card's family parts of a bundle plan (JSON): input, output, carried (preprocessing
        lines), predict_input (what `--input` takes) and limits (automatic limitations)."""
        raise NotImplementedError

    def summary_lines(self, stage_folder: Path) -> list[str]:
        """The run summary's lines for a finished evaluate stage folder (its summary.json)."""
        path = Path(stage_folder) / "summary.json"
        return self.summary_text(json.loads(path.read_text())) if path.exists() else []

    def summary_text(self, summary: dict) -> list[str]:
        """The run summary's lines for an evaluate stage's summary.json document."""
        return []

    def evaluate(self, cfg, upstream: dict, out, ctx, plan: InferencePlan, train):
        """The evaluate stage body for this family: score held-out cases through :meth:`infer`."""
        raise NotImplementedError

    # -- comparison (`medflow compare`) ------------------------------------------------------------
    compare_metric: str = ""  # the comparison row's column that picks the best model (greater is better)

    def compare_scores(self, summary: dict, split: str) -> tuple[dict, list[tuple[str, dict]]]:
        """(the network's row figures, [(baseline name, its row figures)...]) of an evaluate summary.json."""
        raise ValueError(f"medflow compare does not aggregate {self.family} evaluations")

    def compare_figure(self, upstream: dict, evaluated: dict[str, Path]):
        """A figure of every compared model on the same cases (``evaluated``: model name -> its evaluate
        folder; ``upstream``: the shared stages' outputs), or None."""
        return None


def cell(row: dict, name: str):
    """The row's value for ``name``, treating NaN/None/'' (a column other rows filled) as absent."""
    value = row.get(name)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str) and not value:
        return None
    return value


def as_channels(plan: InferencePlan, channels) -> list[np.ndarray]:
    n = len(plan.channels)
    if len(channels) != n:
        raise ValueError(f"{len(channels)} channel(s), the model expects {n}")
    return [np.asarray(c, dtype=np.float32) for c in channels]
