"""Batch inference: ``medflow predict --model MODEL --input FILE_OR_DIR --output DIR``.

MODEL is an export bundle folder (``workspace/exports/<pipeline>/<version>``), a
registered model (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, fetched
from the tracking store once and cached), or, for reconstruction, a
sinogram-input ``.keras`` file or its train_recon folder. The bundle runs its
own pre- and post-processing, so the outputs are:

- segmentation: ``<name>.nii.gz`` label maps with each input's affine and header;
- classification: ``predictions.csv`` (case, class, one probability per class);
- reconstruction: ``<name>.npy`` and ``<name>.nii.gz`` images.

Every file is written atomically. A bad input is reported in one line naming
the file, listed in ``quarantine.json``, and the other inputs carry on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from medflow.data.atomic import publish
from medflow.data.nifti import CaseError, is_nifti_name, strip_nifti_suffix
from medflow.inference.bundle import Bundle, BundleError, load_bundle
from medflow.inference.outputs import read_sinogram, write_csv_atomic, write_labels, write_reconstruction

RECONSTRUCTOR = "reconstructor.keras"


class PredictError(ValueError):
    """A problem with the model or the input set as a whole (one line)."""


def _legacy_reconstructor(path: Path, runtime: str) -> Bundle:
    """A bundle around a bare sinogram-input .keras file (the train_recon stage's reconstructor)."""
    from medflow.models.runtimes import load_keras

    if runtime != "keras":
        raise PredictError(f"{path}: a bare .keras file runs on the keras runtime only; export it for {runtime}")
    model = load_keras(path)
    shape = [int(d) for d in model.input_shape[1:]]
    if len(shape) != 2:
        raise PredictError(f"{path}: not a sinogram-input model (input shape {model.input_shape})")
    geometry_file = path.parent / "geometry.json"
    geometry = json.loads(geometry_file.read_text()) if geometry_file.exists() else {}
    plan = {"family": "reconstruction", "input_shape": shape, "geometry": geometry, "channels": [], "classes": []}
    return Bundle(path.parent, plan, "keras", lambda x: np.asarray(model.predict_on_batch(x)))


def open_model(spec: str, runtime: str = "keras") -> Bundle:
    """The bundle behind ``--model``."""
    if str(spec).startswith(("models:/", "runs:/")):
        from medflow.tracking.runs import fetch_bundle

        try:
            folder = fetch_bundle(str(spec))
        except Exception as err:  # noqa: BLE001  (registry errors are many; the user needs one line)
            raise PredictError(f"{spec}: {' '.join(str(err).split())[:300]}") from None
        return load_bundle(folder, runtime)
    path = Path(spec)
    if path.is_dir() and (path / "plan.json").exists():
        return load_bundle(path, runtime)
    if path.is_dir() and (path / RECONSTRUCTOR).exists():
        path = path / RECONSTRUCTOR
    if path.is_file() and path.suffix == ".keras":
        return _legacy_reconstructor(path, runtime)
    raise PredictError(f"{path}: no such model (an export folder, models:/NAME@ALIAS, or a sinogram .keras file)")


def list_inputs(path: Path, family: str) -> list[Path]:
    """The input files: one file, or a folder's .npy (reconstruction) or NIfTI files (the others)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PredictError(f"{path}: no such file or folder")
    wanted = (lambda p: p.name.endswith(".npy")) if family == "reconstruction" else is_nifti_name
    files = sorted(p for p in path.iterdir() if p.is_file() and wanted(p) and not p.name.startswith("."))
    if not files:
        raise PredictError(f"{path}: no {'.npy' if family == 'reconstruction' else 'NIfTI'} files")
    return files


def _name(path: Path) -> str:
    return path.name[: -len(".npy")] if path.name.endswith(".npy") else strip_nifti_suffix(path.name)


def predict_files(bundle: Bundle, files: list[Path], output: Path, *, batch_size: int = 16, progress=None,
                  shard: tuple[int, int] | None = None) -> dict:
    """Run the bundle on every file into ``output``.

    With ``shard`` (index, count) only that share of the files is done, and the shard's table and
    quarantine list get their own names (``predictions-<i>-of-<n>.csv``), so N processes can write
    into one folder.

    Returns:
        {"written": [names], "quarantine": [{"path", "problem"}]}.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written, quarantine, rows = [], [], []
    suffix = ""
    if shard is not None:
        from medflow.core.engine import shard_ids

        mine = set(shard_ids([str(f) for f in files], *shard))
        files = [f for f in files if str(f) in mine]
        suffix = f"-{shard[0]}-of-{shard[1]}"

    def bad(path, err):
        problem = err.problem if isinstance(err, CaseError) else " ".join(str(err).split())
        quarantine.append({"path": str(path), "problem": problem})
        print(f"{path}: {problem}", file=sys.stderr, flush=True)

    if bundle.family == "reconstruction":
        shape = tuple(bundle.plan["input_shape"])
        for start in range(0, len(files), batch_size):
            good, arrays = [], []
            for path in files[start:start + batch_size]:
                try:
                    arrays.append(read_sinogram(path, shape))
                    good.append(path)
                except ValueError as err:
                    bad(path, err)
            if arrays:
                for path, image in zip(good, bundle.reconstruct(np.stack(arrays), batch_size)):
                    write_reconstruction(output, _name(path), image, bundle.plan.get("geometry", {}))
                    written.append(_name(path))
            if progress is not None:
                progress.update(len(files[start:start + batch_size]))
    else:
        for path in files:
            try:
                channels, affine = bundle.read_volume(path)
                if bundle.family == "segmentation":
                    labels, _ = bundle.segment(channels, affine)
                    write_labels(output / f"{_name(path)}.nii.gz", labels, affine, path)
                else:
                    probs = bundle.classify(channels, affine)
                    rows.append({"case": _name(path), "class": bundle.classes[int(np.argmax(probs))],
                                 **{f"p_{c}": float(p) for c, p in zip(bundle.classes, probs)}})
                written.append(_name(path))
            except (CaseError, ValueError) as err:
                bad(path, err)
            if progress is not None:
                progress.update(1)
        if bundle.family == "classification" and rows:
            import pandas as pd

            write_csv_atomic(output / f"predictions{suffix}.csv", pd.DataFrame(rows))
    tmp = output / f".tmp-quarantine{suffix}.json"
    tmp.write_text(json.dumps(quarantine, indent=1))
    publish(tmp, output / f"quarantine{suffix}.json")
    return {"model": str(bundle.folder), "family": bundle.family, "written": written, "quarantine": quarantine}


def cmd_predict(args) -> int:
    from medflow.cli.main import EXIT_CONFIG, EXIT_FAILED
    from medflow.core.engine import parse_shard
    from medflow.core.progress import Progress

    try:
        shard = parse_shard(args.shard) if args.shard else None
        bundle = open_model(args.model, args.runtime)
        files = list_inputs(args.input, bundle.family)
        total = len(files) if shard is None else len(files[shard[0]::shard[1]])
        with Progress(total, "predict", unit="file") as bar:
            report = predict_files(bundle, files, args.output, batch_size=args.batch, progress=bar, shard=shard)
    except (PredictError, BundleError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"predict ({report['family']}, {args.runtime}): {len(report['written'])} written to {args.output}, "
          f"{len(report['quarantine'])} quarantined")
    return EXIT_FAILED if report["quarantine"] else 0


def add_parser(sub, fmt, examples) -> None:
    p = sub.add_parser("predict", help="batch inference with an exported or registered model",
                       formatter_class=fmt, epilog=examples("""
                           medflow predict --model models:/segmentation@champion --input scans/ --output labels/
                           medflow predict --model workspace/exports/classification/<version> --input scans/ --output cls/
                           medflow predict --model models:/reconstruction@champion --input sinograms/ --output recon/ \\
                               --runtime onnx
                       """))
    p.add_argument("--model", required=True,
                   help="export folder, models:/NAME@ALIAS or models:/NAME/VERSION, or a sinogram .keras file")
    p.add_argument("--input", type=Path, required=True, help="a file, or a folder of NIfTI volumes / .npy sinograms")
    p.add_argument("--output", type=Path, required=True, help="output folder")
    p.add_argument("--runtime", choices=("keras", "saved_model", "onnx"), default="keras",
                   help="what runs the network (the bundle holds all three)")
    p.add_argument("--batch", type=int, default=16, help="sinograms per model call (reconstruction)")
    p.add_argument("--shard", metavar="INDEX/COUNT", help="do only this share of the inputs (N machines, one "
                                                           "output folder)")
    p.set_defaults(func=cmd_predict)
