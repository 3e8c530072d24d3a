"""The MLflow pyfunc face of an export bundle (``loader_module`` of the logged model; no mlflow import).

``mlflow.pyfunc.load_model(uri).predict(df)``, ``medflow serve`` and a hand-started
``mlflow models serve`` all land in :meth:`PipelineModel.predict`, which runs the
bundle's whole inference path. One request row is one case; columns (one input per row):

segmentation and classification
    ``nifti_b64``  the bytes of a .nii or .nii.gz file, base64-encoded
    ``dicom_zip_b64``  a zip of one DICOM series (its files at any depth), base64-encoded
    ``image`` + ``affine``  an (X, Y, Z) or (X, Y, Z, C) array and its (4, 4) voxel-to-world matrix
    ``path``       a NIfTI file on the server (only with ``allow_paths``, below)
reconstruction
    ``sinogram``   the (detectors, angles) array, or ``path``: a .npy sinogram on the server (``allow_paths``)
every family
    ``case``       a name for the row's outputs (default: the file's base name, else ``case_<row>``), reduced
                   to a safe file name and made distinct (medflow/inference/names.py); answers carry that name

Answers, one row per request row, with ``case`` and ``error`` (empty when it
worked; a bad row never stops the others):
- segmentation: ``labels_nifti_b64`` (a gzipped label-map NIfTI on the input's grid, with its affine)
  and ``volume_ml_<class>`` per foreground class;
- classification: ``class`` and ``p_<class>`` per class;
- reconstruction: ``image`` (the (S, S) image as nested lists).
The parameter ``output_dir`` also writes each result as a file there
(``<case>.nii.gz``; ``<case>.npy`` + ``<case>.nii.gz``; one ``predictions.csv``).

What a request may touch on the server is fixed when the model is loaded, never by a request
(MLflow passes a request's ``params`` straight through from HTTP): ``model_config={"allow_paths":
[DIR, ...]}`` (``medflow serve --allow-paths DIR``) lets ``path`` rows and ``output_dir`` name places
inside those folders, after symlinks and ``..`` are resolved. Without it both are refused, so the
guard holds however the model is served. A refusal is a :class:`RequestRefused` (an HTTP 4xx).
"""

from __future__ import annotations

import base64
import gzip
import os
import sys
import traceback
from pathlib import Path

import pandas as pd

from medflow.data.nifti import CaseError
from medflow.inference.bundle import Bundle, load_bundle
from medflow.inference.names import unique_names
from medflow.tasks.base import cell

# A request's volume may hold at most this many voxels (all channels): 512 x 512 x 1024 CT fits, and a
# small gzip that claims gigabytes is refused before it is inflated.
MAX_VOXELS = 512 * 512 * 1024
PATH_OPTION = "medflow serve --allow-paths DIR (Python: model_config={'allow_paths': [DIR]})"


class RequestRefused(ValueError):
    """A request the model will not run at all; ``status`` is its HTTP code (403 forbidden, 422 unusable)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


def _load_pyfunc(data_path, model_config=None):
    """mlflow's entry point: the bundle copied into the model's artifacts."""
    config = model_config or {}
    allow = config.get("allow_paths") or []
    if isinstance(allow, str) or not all(isinstance(a, str) and a for a in allow):
        raise ValueError(f"model_config allow_paths must be a list of folder paths, got {allow!r}")
    return PipelineModel(load_bundle(Path(data_path), config.get("runtime", "keras"),
                                     threads=int(config.get("threads", 0))), allow_paths=allow)


class PathPolicy:
    """The server folders that ``path`` rows and ``output_dir`` may name (none by default)."""

    def __init__(self, roots=()):
        self.roots = tuple(os.path.realpath(r) for r in roots)

    def resolve(self, value, what: str) -> str:
        """The real path of ``value`` if it lies inside an allowed folder, else RequestRefused.

        The refusal reads the same whether the file exists or not.
        """
        if not self.roots:
            raise RequestRefused(f"{what} is off on this server: send the data itself (nifti_b64, image + affine, "
                                 f"sinogram); server files need {PATH_OPTION}")
        if not isinstance(value, str) or "\x00" in value:
            raise RequestRefused(f"{what} must be a path string", 422)
        real = os.path.realpath(value)
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots):
            raise RequestRefused(f"{what} {value!r} is outside the folders this server may use")
        return real


class PipelineModel:
    """Rows of cases in, rows of results out (see the module docstring for the columns)."""

    def __init__(self, bundle: Bundle, allow_paths=()):
        self.bundle = bundle
        self.paths = PathPolicy(allow_paths)

    @property
    def input_columns(self) -> list[str]:
        """The request columns this model reads."""
        return ["case", *(name for name, _, _ in self.bundle.task.signature(self.bundle.plan)[0])]

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        unknown = sorted(set(map(str, frame.columns)) - set(self.input_columns))
        if unknown:
            raise RequestRefused(f"unknown column(s) {', '.join(unknown)}: this model reads "
                                 f"{', '.join(self.input_columns)}", 422)
        records = frame.to_dict(orient="records")
        if not records:
            raise RequestRefused("no rows: each row is one case", 422)
        output_dir = (params or {}).get("output_dir") or None
        if output_dir is not None:
            output_dir = Path(self.paths.resolve(output_dir, "output_dir"))
        # Every path is checked before any work, so a refused request has done nothing.
        given = [cell(row, "path") for row in records]
        real = [None if p is None else self.paths.resolve(p, "path") for p in given]
        task, plan, net = self.bundle.task, self.bundle.plan, self.bundle.net
        names = unique_names([cell(row, "case") or (task.case_name(p) if p is not None else None) for row, p in
                              zip(records, given)], [f"case_{i}" for i in range(len(records))])
        rows, table = [], []
        for row, path, case in zip(records, real, names):
            try:
                inputs = task.case_from_row(plan, {**row, "path": path}, MAX_VOXELS)
                result = task.infer(plan, net, inputs)
                if output_dir:
                    line = task.write_result(plan, result, output_dir, case, inputs)
                    if line is not None:
                        table.append(line)
                rows.append({"case": case, "error": "", **task.answer(plan, result, inputs)})
            except Exception as err:  # noqa: BLE001  (one bad row is reported, the others carry on)
                rows.append({"case": case, "error": row_error(err, path, cell(row, "path"))})
        if output_dir:
            task.finish_outputs(output_dir, table)
        return pd.DataFrame(rows)


def row_error(err: Exception, real: str | None, given: str | None) -> str:
    """One line for a failed row that names no server path but the client's own input.

    Problems medflow describes (CaseError, ValueError) keep their words; anything else is an
    internal error whose trace goes to the server's log, not to the client.
    """
    if isinstance(err, CaseError):
        label = given if real is not None and err.path == real else err.path
        return f"{label}: {err.problem}"
    if isinstance(err, ValueError):
        text = " ".join(str(err).split())
        return text.replace(real, given) if real and given else text
    if isinstance(err, OSError):  # a write into output_dir failed: the reason, not the server's path
        return f"could not write the result: {err.strerror or type(err).__name__}"
    traceback.print_exception(err, file=sys.stderr)
    return f"internal error ({type(err).__name__}); the server's log has the details"


def gunzip_b64(text: str) -> bytes:
    """The raw NIfTI bytes of a ``labels_nifti_b64`` answer (for clients and tests)."""
    return gzip.decompress(base64.b64decode(text))
