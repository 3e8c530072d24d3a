"""The MLflow pyfunc face of an export bundle (``loader_module`` of the logged model; no mlflow import).

``mlflow.pyfunc.load_model(uri).predict(df)`` and ``mlflow models serve`` both
land in :meth:`PipelineModel.predict`, which runs the bundle's whole inference
path. One request row is one case; columns (all optional, one input per row):

segmentation and classification
    ``path``       a NIfTI file readable by the process that serves the model
    ``nifti_b64``  the bytes of a .nii or .nii.gz file, base64-encoded (for remote clients)
    ``image`` + ``affine``  an (X, Y, Z) or (X, Y, Z, C) array and its (4, 4) voxel-to-world matrix
reconstruction
    ``path``       a .npy sinogram file, or ``sinogram``: the (detectors, angles) array itself
every family
    ``case``       a name for the row's outputs (default: the file's base name, else ``case_<row>``)

Answers, one row per request row, with ``case`` and ``error`` (empty when it
worked; a bad row never stops the others):
- segmentation: ``labels_nifti_b64`` (a gzipped label-map NIfTI on the input's grid, with its affine)
  and ``volume_ml_<class>`` per foreground class;
- classification: ``class`` and ``p_<class>`` per class;
- reconstruction: ``image`` (the (S, S) image as nested lists).
The parameter ``output_dir`` also writes each result as a file there
(``<case>.nii.gz``; ``<case>.npy`` + ``<case>.nii.gz``; one ``predictions.csv``).
"""

from __future__ import annotations

import base64
import gzip
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from medflow.data.nifti import strip_nifti_suffix
from medflow.inference.bundle import Bundle, load_bundle


def _load_pyfunc(data_path, model_config=None):
    """mlflow's entry point: the bundle copied into the model's artifacts."""
    config = model_config or {}
    return PipelineModel(load_bundle(Path(data_path), config.get("runtime", "keras"),
                                     threads=int(config.get("threads", 0))))


def _cell(row: dict, name: str):
    """The row's value for ``name``, treating NaN/None (a column other rows filled) as absent."""
    value = row.get(name)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str) and not value:
        return None
    return value


class PipelineModel:
    """Rows of cases in, rows of results out (see the module docstring for the columns)."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        output_dir = (params or {}).get("output_dir") or None
        rows = []
        for i, row in enumerate(frame.to_dict(orient="records")):
            case = _cell(row, "case") or _case_name(_cell(row, "path")) or f"case_{i}"
            try:
                rows.append({"case": case, "error": "", **self._one(row, case, output_dir)})
            except Exception as err:  # noqa: BLE001  (one bad row is reported, the others carry on)
                rows.append({"case": case, "error": " ".join(f"{type(err).__name__}: {err}".split())})
        out = pd.DataFrame(rows)
        if output_dir and self.bundle.family == "classification":
            from medflow.inference.outputs import write_csv_atomic

            write_csv_atomic(Path(output_dir) / "predictions.csv", out.drop(columns=["error"]))
        return out

    def _one(self, row: dict, case: str, output_dir) -> dict:
        b = self.bundle
        if b.family == "reconstruction":
            sino = _cell(row, "sinogram")
            if sino is None:
                path = _cell(row, "path")
                if path is None:
                    raise ValueError("no input: give path or sinogram")
                from medflow.inference.outputs import read_sinogram

                sino = read_sinogram(path, tuple(b.plan["input_shape"]))
            image = b.reconstruct(np.asarray(sino, dtype=np.float32))[0]
            if output_dir:
                from medflow.inference.outputs import write_reconstruction

                write_reconstruction(Path(output_dir), case, image, b.plan["geometry"])
            return {"image": image.tolist()}
        channels, affine, reference = self._volume(row)
        if b.family == "classification":
            probs = b.classify(channels, affine)
            return {"class": b.classes[int(np.argmax(probs))], **{f"p_{c}": float(p) for c, p in zip(b.classes, probs)}}
        labels, _ = b.segment(channels, affine)
        from medflow.inference.outputs import label_nifti_bytes, write_labels

        if output_dir:
            write_labels(Path(output_dir) / f"{case}.nii.gz", labels, affine, reference)
        voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
        return {"labels_nifti_b64": base64.b64encode(label_nifti_bytes(labels, affine, reference)).decode("ascii"),
                **{f"volume_ml_{c}": float((labels == k).sum() * voxel_ml) for k, c in enumerate(b.classes) if k}}

    def _volume(self, row: dict):
        """(channels, affine, reference NIfTI path or None) of one row."""
        path, blob, image = _cell(row, "path"), _cell(row, "nifti_b64"), _cell(row, "image")
        if path is not None:
            channels, affine = self.bundle.read_volume(path)
            return channels, affine, path
        if blob is not None:
            raw = base64.b64decode(blob)
            suffix = ".nii.gz" if raw[:2] == b"\x1f\x8b" else ".nii"
            fd, tmp = tempfile.mkstemp(suffix=suffix)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(raw)
                channels, affine = self.bundle.read_volume(tmp)
            finally:
                os.unlink(tmp)
            return channels, affine, None
        if image is not None:
            affine = _cell(row, "affine")
            if affine is None:
                raise ValueError("an image array needs its affine")
            arr, affine = np.asarray(image, dtype=np.float32), np.asarray(affine, dtype=np.float64)
            if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
                raise ValueError(f"affine must be a finite, invertible 4x4 matrix, got shape {affine.shape}")
            if arr.ndim == 3:
                arr = arr[..., None]
            if arr.ndim != 4:
                raise ValueError(f"image must be (X, Y, Z) or (X, Y, Z, C), got shape {arr.shape}")
            return [arr[..., c] for c in range(arr.shape[-1])], affine, None
        raise ValueError("no input: give path, nifti_b64, or image and affine")


def _case_name(path) -> str | None:
    if path is None:
        return None
    name = Path(str(path)).name
    return name[: -len(".npy")] if name.endswith(".npy") else strip_nifti_suffix(name)


def gunzip_b64(text: str) -> bytes:
    """The raw NIfTI bytes of a ``labels_nifti_b64`` answer (for clients and tests)."""
    return gzip.decompress(base64.b64decode(text))
