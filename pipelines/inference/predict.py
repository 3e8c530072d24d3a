"""Batch inference: ``medflow predict --model MODEL --input FILE_OR_DIR --output DIR``.

MODEL is an export bundle folder (``workspace/exports/<pipeline>/<version>``), a
registered model (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, fetched
from the tracking store once and cached), or a train stage's folder (its
``plan.json`` and model; Keras only). The plan's task runs its own pre- and
post-processing, so the outputs are:

- segmentation: ``<name>.nii.gz`` label maps with each input's affine and header; for a DICOM series
  also ``<name>_seg.dcm``, a DICOM SEG that references the series' instances;
- classification: ``predictions.csv`` (case, the SeriesInstanceUID of a DICOM input, class, one probability
  per class); with ``--explain``
  also ``<name>_explanation.nii.gz`` (Grad-CAM or occlusion) and, for segcls, ``<name>_lesion.nii.gz``;
- reconstruction: ``<name>.npy`` and ``<name>.nii.gz`` images.

Every file is written atomically. A bad input is reported in one line naming
the file, listed in ``quarantine.json``, and the other inputs carry on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from medflow.data.atomic import write_atomic
from medflow.data.images import split_ref
from medflow.data.nifti import CaseError
from medflow.inference.bundle import Bundle, load_bundle, read_plan
from medflow.inference.names import unique_names


class PredictError(ValueError):
    """A problem with the model or the input set as a whole (one line)."""


def _trained_model(folder: Path, runtime: str, model_file: str) -> Bundle:
    """A bundle around a train stage's folder (``model_file`` with plan.json beside it), on Keras."""
    from medflow.models.inference import keras_predictor
    from medflow.models.runtimes import load_keras

    if runtime != "keras":
        raise PredictError(f"{folder}: a train folder runs on the keras runtime only; export it for {runtime}")
    plan = read_plan(folder)
    return Bundle(folder, plan, "keras", keras_predictor(load_keras(folder / model_file)),
                  ("train", str(folder), model_file))


def locate_model(spec: str) -> tuple[Path, str | None]:
    """(folder, model file of a train folder or None for an export bundle) behind ``--model``: an export
    folder, models:/ or runs:/ (fetched and cached), a train folder or its .keras. Loads nothing."""
    if str(spec).startswith(("models:/", "runs:/")):
        from medflow.tracking.registry import fetch_bundle

        try:
            return Path(fetch_bundle(str(spec))), None
        except Exception as err:  # noqa: BLE001  (registry errors are many; the user needs one line)
            raise PredictError(f"{spec}: {' '.join(str(err).split())[:300]}") from None
    path = Path(spec)
    if path.is_dir() and (path / "plan.json").exists():
        manifest = path / "manifest.json"
        return path, json.loads(manifest.read_text()).get("inference_model") if manifest.exists() else None
    if path.is_file() and path.suffix == ".keras":
        if not (path.parent / "plan.json").exists():
            raise PredictError(f"{path}: no plan.json beside it (a train folder's model, or an export bundle)")
        return path.parent, path.name
    raise PredictError(f"{path}: no such model (an export folder, models:/NAME@ALIAS, or a train folder)")


def resolve_runtime(where: tuple[Path, str | None], runtime: str, *, gradients: bool = False) -> str:
    """The runtime ``auto`` means for a located model: ONNX Runtime for an export bundle that holds
    ``model.onnx``, unless the explanation needs gradients (Grad-CAM runs on Keras); Keras otherwise.

    ONNX Runtime starts without TensorFlow (4.5-9 s of every ``medflow predict`` on 2 cores); per volume
    the two ran the default U-Net level, within run-to-run noise (``medflow bench peers``).
    """
    if runtime != "auto":
        return runtime
    import importlib.util

    folder, trained = where
    if trained or gradients or not (folder / "model.onnx").exists() or not importlib.util.find_spec("onnxruntime"):
        return "keras"
    return "onnx"


def open_model(spec: str, runtime: str = "keras", *, where: tuple[Path, str | None] | None = None) -> Bundle:
    """The bundle behind ``--model`` (see :func:`locate_model`, or ``where`` it already gave) on ``runtime``
    (``auto``: :func:`resolve_runtime` without gradients)."""
    folder, trained = where or locate_model(spec)
    runtime = resolve_runtime((folder, trained), runtime)
    return _trained_model(folder, runtime, trained) if trained else load_bundle(folder, runtime)


def _predict_on_ray(bundle: Bundle, files, names, output: Path, bad, progress, suffix, explain, address) -> list:
    """Each input a Ray task (medflow.inference.remote.predict_one); the table is written here, in input order."""
    from medflow.core.engine import StageFailed
    from medflow.core.ray_exec import ray_map
    from medflow.inference.remote import predict_one
    from medflow.tasks.base import Task

    task = bundle.task
    if type(task).predict_files is not Task.predict_files or not bundle.source:
        raise PredictError(f"{bundle.folder}: --executor ray runs volume models case by case; a {bundle.family} "
                           f"model predicts in batches in one process (use --shard to split it over machines)")
    rows, written = {}, []
    jobs = [(name, str(path), {"source": bundle.source, "path": str(path), "name": name, "output": str(output),
                               "explain": explain}) for path, name in zip(files, names)]

    def settle(name, source, fn):
        try:
            row = fn()
            written.append(name)
            if row is not None:
                rows[name] = row
        except (CaseError, ValueError) as err:
            bad(source, err)
        finally:
            if progress is not None:
                progress.update(1)

    try:
        ray_map(jobs, predict_one, settle, address, "predict")
    except StageFailed as err:
        raise PredictError(str(err)) from None
    task.finish_outputs(output, [rows[n] for n in names if n in rows], suffix)
    return [n for n in names if n in written]


def dicom_series(folder: Path) -> list[Path]:
    """``folder#SeriesInstanceUID`` of each DICOM image series under ``folder`` (none when it holds NIfTI
    files at its top level, which are listed as before)."""
    from medflow.data.dicom.scan import holds_dicom, scan_folder
    from medflow.data.nifti import is_nifti_name

    if any(is_nifti_name(p) for p in folder.iterdir()) or not holds_dicom(folder):
        return []
    return [Path(f"{folder}#{s.uid}") for s in scan_folder(folder)[0]]


def list_inputs(paths, bundle: Bundle) -> list[Path]:
    """The input files: files, or folders' files of the kind the model reads, each file once. A folder of
    DICOM files gives one input per image series under it (``folder#SeriesInstanceUID``).

    ``paths`` is one path or several (``--input a.nii.gz scans/``); a file reached twice (the same
    path, a link, or a file also inside a folder given) is a PredictError naming both.
    """
    files, seen = [], {}
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = Path(path)
        if path.is_file():
            found = [path]
        elif split_ref(str(path))[1] is not None and bundle.task.reads_dicom:
            found = [path]  # folder#SeriesInstanceUID: one series
        elif path.is_dir() and bundle.task.reads_dicom and (series := dicom_series(path)):
            found = series
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and bundle.task.is_input(p)
                           and not p.name.startswith("."))
            if not found:
                raise PredictError(f"{path}: no {bundle.task.input_kind} files")
        else:
            raise PredictError(f"{path}: no such file or folder")
        for file in found:
            key = os.path.realpath(file)
            if key in seen:
                raise PredictError(f"{file}: given twice (also as {seen[key]})")
            seen[key] = file
            files.append(file)
    return files


def output_names(bundle: Bundle, files: list[Path]) -> list[str]:
    """Each input's output name: its case name made safe and distinct (a renamed one is said on stderr)."""
    raw = [bundle.task.case_name(f) for f in files]
    names = unique_names(raw, [f"case_{i}" for i in range(len(files))])
    for file, before, after in zip(files, raw, names):
        if before != after:
            print(f"{file}: its outputs are named {after!r} ({before!r} is taken or not a safe file name)",
                  file=sys.stderr, flush=True)
    return names


def check_output(bundle: Bundle, files: list[Path], names: list[str], output: Path, *, suffix: str = "",
                 explain: bool = False, overwrite: bool = False) -> None:
    """PredictError when an input lies inside ``output``, or, without ``overwrite``, when a file the run
    would write is already there: nothing is written in either case."""
    out = os.path.realpath(output)
    for file in files:
        if os.path.commonpath([os.path.realpath(file), out]) == out:
            raise PredictError(f"{file}: this input lies inside the output folder {output}; choose another --output")
    if overwrite:
        return
    task = bundle.task
    planned = [f for n in names for f in task.output_files(n, explain)] + task.table_files(suffix) \
        + [f"quarantine{suffix}.json"]
    there = [f for f in planned if (Path(output) / f).exists()]
    if there:
        more = f" (and {len(there) - 1} more)" if len(there) > 1 else ""
        raise PredictError(f"{Path(output) / there[0]}: exists{more}; pass --overwrite to replace, or choose "
                           "another --output")


def predict_files(bundle: Bundle, files: list[Path], output: Path, *, batch_size: int = 16, progress=None,
                  shard: tuple[int, int] | None = None, explain=None, overwrite: bool = False,
                  executor: str = "local", ray_address: str | None = None) -> dict:
    """Run the bundle on every file into ``output``.

    ``explain`` (an ExplainSettings, classifiers only) also writes ``<name>_explanation.nii.gz`` (and, for a
    model that segments the lesion, ``<name>_lesion.nii.gz``) on each input's own grid.

    With ``shard`` (index, count) only that share of the files is done, and the shard's table and
    quarantine list get their own names (``predictions-<i>-of-<n>.csv``), so N processes can write
    into one folder. Without ``overwrite`` existing outputs stop the run
    before it starts (:func:`check_output`).

    Returns:
        {"model", "family", "written": [names], "quarantine": [{"path", "problem"}]}.
    """
    if explain is not None and not bundle.task.explains:
        raise PredictError(f"{bundle.folder}: --explain is for classifiers; this is a {bundle.family} model")
    output = Path(output)
    quarantine = []
    suffix = ""
    names = output_names(bundle, files)  # over all files, so every shard names a case alike
    if shard is not None:
        from medflow.core.cases import shard_ids

        mine = set(shard_ids([str(f) for f in files], *shard))
        pairs = [(f, n) for f, n in zip(files, names) if str(f) in mine]
        files, names = [f for f, _ in pairs], [n for _, n in pairs]
        suffix = f"-{shard[0]}-of-{shard[1]}"
    check_output(bundle, files, names, output, suffix=suffix, explain=explain is not None, overwrite=overwrite)
    output.mkdir(parents=True, exist_ok=True)

    def bad(path, err):
        problem = err.problem if isinstance(err, CaseError) else " ".join(str(err).split())
        quarantine.append({"path": str(path), "problem": problem})
        print(f"{path}: {problem}", file=sys.stderr, flush=True)

    if executor == "ray":
        written = _predict_on_ray(bundle, files, names, output, bad, progress, suffix, explain, ray_address)
    else:
        written = bundle.task.predict_files(bundle.plan, bundle.net, files, output, names=names, bad=bad,
                                            progress=progress, batch_size=batch_size, suffix=suffix,
                                            explain=explain)
    with write_atomic(output / f"quarantine{suffix}.json") as tmp:
        tmp.write_text(json.dumps(quarantine, indent=1))
    return {"model": str(bundle.folder), "family": bundle.family, "written": written, "quarantine": quarantine}
