"""Batch inference: ``medflow predict --model PATH --input FILE_OR_DIR --output DIR``.

Reconstruction models take sinograms saved as ``.npy`` arrays shaped (detectors,
angles), as scikit-image's ``radon`` returns them. The model is a sinogram-input
``.keras`` file (the train_recon stage's ``reconstructor.keras``, FBP in the
graph, the training geometry in its config) or the stage folder holding it.
Each input gives ``<name>.npy`` and ``<name>.nii.gz`` (the image, float32) in
the output folder, each written atomically. A bad input is reported in one
line, listed in ``quarantine.json``, and the other inputs carry on.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

RECONSTRUCTOR = "reconstructor.keras"


class PredictError(ValueError):
    """A problem with the model or the input set as a whole (one line)."""


def resolve_model(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / RECONSTRUCTOR
    if not path.exists():
        raise PredictError(f"{path}: no such model (a .keras file or a train_recon stage folder)")
    return path


def list_inputs(path: Path, suffix: str = ".npy") -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PredictError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(suffix) and not p.name.startswith("."))
    if not files:
        raise PredictError(f"{path}: no {suffix} files")
    return files


def read_sinogram(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A (detectors, angles) float32 sinogram, or ValueError naming the problem."""
    try:
        sino = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same one-line problem)
        raise ValueError(f"not a readable .npy array ({type(err).__name__})") from None
    if sino.shape != shape:
        raise ValueError(f"sinogram shape {sino.shape}, the model expects {shape} (detectors, angles)")
    if not np.issubdtype(sino.dtype, np.number) or not np.all(np.isfinite(sino)):
        raise ValueError("sinogram holds non-numeric or non-finite values")
    return sino.astype(np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def predict_reconstruction(model_path: Path, files: list[Path], output: Path, *, batch_size: int = 16,
                           progress=None) -> dict:
    """Reconstruct every sinogram in ``files`` (see :func:`list_inputs`) into ``output``.

    Returns:
        {"written": [names], "quarantine": [{"path", "problem"}]}.
    """
    import keras

    from data.nifti import write_nifti

    model = keras.saving.load_model(resolve_model(model_path), compile=False, safe_mode=True)
    shape = tuple(int(d) for d in model.input_shape[1:])
    if len(shape) != 2:
        raise PredictError(f"{model_path}: not a sinogram-input model (input shape {model.input_shape})")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written, quarantine = [], []
    for start in range(0, len(files), batch_size):
        good, arrays = [], []
        for path in files[start:start + batch_size]:
            try:
                arrays.append(read_sinogram(path, shape))
                good.append(path)
            except ValueError as err:
                quarantine.append({"path": str(path), "problem": str(err)})
                print(f"{path}: {err}", file=sys.stderr, flush=True)
        if arrays:
            images = np.asarray(model.predict(np.stack(arrays), verbose=0))[..., 0]
            for path, image in zip(good, images):
                name = path.name[: -len(".npy")]
                npy, nii = output / f"{name}.npy", output / f"{name}.nii.gz"
                try:
                    _save_npy(npy, image.astype(np.float32))
                    # Pixel units: the geometry has no physical size, so 1 unit per pixel, centred.
                    affine = np.diag([1.0, 1.0, 1.0, 1.0])
                    affine[:2, 3] = -(np.array(image.shape) - 1) / 2.0
                    write_nifti(nii, image[..., None].astype(np.float32), affine)
                except BaseException:
                    npy.unlink(missing_ok=True)  # never one output without the other
                    raise
                written.append(name)
        if progress is not None:
            progress.update(len(files[start:start + batch_size]))
    report = {"model": str(model_path), "written": written, "quarantine": quarantine}
    tmp = output / ".tmp-quarantine.json"
    tmp.write_text(json.dumps(quarantine, indent=1))
    os.replace(tmp, output / "quarantine.json")
    return report


def cmd_predict(args) -> int:
    from pipelines.cli import EXIT_CONFIG, EXIT_FAILED
    from pipelines.progress import Progress

    try:
        files = list_inputs(args.input)
        with Progress(len(files), "predict", unit="file") as bar:
            report = predict_reconstruction(args.model, files, args.output, batch_size=args.batch, progress=bar)
    except PredictError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"predict: {len(report['written'])} written to {args.output}, {len(report['quarantine'])} quarantined")
    return EXIT_FAILED if report["quarantine"] else 0


def add_parser(sub, fmt, examples) -> None:
    p = sub.add_parser("predict", help="batch inference with a trained model (reconstruction: sinograms -> images)",
                       formatter_class=fmt, epilog=examples("""
                           medflow predict --model workspace/stages/train_recon/<key> --input sinograms/ --output recon/
                           medflow predict --model reconstructor.keras --input case_01.npy --output recon/
                       """))
    p.add_argument("--model", type=Path, required=True, help="a sinogram-input .keras model or its train_recon folder")
    p.add_argument("--input", type=Path, required=True, help=".npy sinogram (detectors, angles) or a folder of them")
    p.add_argument("--output", type=Path, required=True, help="folder for <name>.npy and <name>.nii.gz")
    p.add_argument("--batch", type=int, default=16, help="sinograms per model call")
    p.set_defaults(func=cmd_predict)
