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
from pathlib import Path

import pandas as pd

from medflow.inference.bundle import Bundle, load_bundle
from medflow.tasks.base import cell


def _load_pyfunc(data_path, model_config=None):
    """mlflow's entry point: the bundle copied into the model's artifacts."""
    config = model_config or {}
    return PipelineModel(load_bundle(Path(data_path), config.get("runtime", "keras"),
                                     threads=int(config.get("threads", 0))))


class PipelineModel:
    """Rows of cases in, rows of results out (see the module docstring for the columns)."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        output_dir = (params or {}).get("output_dir") or None
        task, plan, net = self.bundle.task, self.bundle.plan, self.bundle.net
        rows, table = [], []
        for i, row in enumerate(frame.to_dict(orient="records")):
            path = cell(row, "path")
            case = cell(row, "case") or (task.case_name(path) if path is not None else None) or f"case_{i}"
            try:
                inputs = task.case_from_row(plan, row)
                result = task.infer(plan, net, inputs)
                if output_dir:
                    line = task.write_result(plan, result, Path(output_dir), case, inputs)
                    if line is not None:
                        table.append(line)
                rows.append({"case": case, "error": "", **task.answer(plan, result, inputs)})
            except Exception as err:  # noqa: BLE001  (one bad row is reported, the others carry on)
                rows.append({"case": case, "error": " ".join(f"{type(err).__name__}: {err}".split())})
        if output_dir:
            task.finish_outputs(Path(output_dir), table)
        return pd.DataFrame(rows)


def gunzip_b64(text: str) -> bytes:
    """The raw NIfTI bytes of a ``labels_nifti_b64`` answer (for clients and tests)."""
    return gzip.decompress(base64.b64decode(text))
