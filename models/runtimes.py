"""One Keras model, three runtimes: ``.keras``, TensorFlow SavedModel and ONNX.

:func:`export_formats` writes all three next to each other; :func:`load_runtime`
gives back a plain ``predict(x) -> y`` callable for any of them, so inference
code is written once and runs on whichever runtime a deployment has;
:func:`parity` measures how far the exported runtimes drift from Keras.

Layout of an export folder (the files this module owns):
    model.keras     the Keras model (custom layers registered, loads with safe_mode=True)
    saved_model/    ``model.export(...)``: a ``serve`` signature taking the model's input
    model.onnx      ``model.export(..., format="onnx")`` (tf2onnx under the hood)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medflow.data.atomic import write_atomic

KERAS, SAVED_MODEL, ONNX = "model.keras", "saved_model", "model.onnx"
RUNTIMES = ("keras", "saved_model", "onnx")


def load_custom_objects() -> None:
    """Import the modules that register custom layers, so a .keras file names resolve."""
    from medflow.models import ct_ops, layers, losses, mil, pooling, reconstruction, segcls, unet  # noqa: F401


def load_keras(path, compile: bool = False):
    """A ``.keras`` file with medflow's custom objects registered, loaded with ``safe_mode=True``."""
    import keras

    load_custom_objects()
    return keras.saving.load_model(path, compile=compile, safe_mode=True)


def export_formats(model, folder: Path, formats: tuple[str, ...] = RUNTIMES) -> dict[str, str]:
    """Write ``model`` to ``folder`` in each of ``formats``, each one atomically.

    Args:
        model: a built keras.Model with a fixed input signature except the batch axis.
        folder: the export folder (created if needed).
        formats: a subset of :data:`RUNTIMES`.

    Returns:
        {runtime: file or folder name inside ``folder``}.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt in formats:
        if fmt == "keras":
            with write_atomic(folder / KERAS, suffix=".keras") as tmp:
                model.save(tmp)
            written[fmt] = KERAS
        elif fmt == "saved_model":
            with write_atomic(folder / SAVED_MODEL, folder=True) as tmp:
                tmp.rmdir()  # the exporter makes the folder itself
                model.export(str(tmp), format="tf_saved_model", verbose=False)
            written[fmt] = SAVED_MODEL
        elif fmt == "onnx":
            with write_atomic(folder / ONNX, suffix=".onnx") as tmp, warnings.catch_warnings():
                # Keras's bundled tf2onnx probes np.object on import, which numpy 2 answers with a
                # FutureWarning: noise in every export log, nothing the user can act on.
                warnings.filterwarnings("ignore", message=".*np.object.*", category=FutureWarning)
                # A model loaded from .keras and never called makes Keras's ONNX exporter refuse
                # ("has never called") unless the signature is given; after a SavedModel export it works.
                from keras.src.export.export_utils import get_input_signature

                model.export(str(tmp), format="onnx", verbose=False, input_signature=get_input_signature(model))
            written[fmt] = ONNX
        else:
            raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(RUNTIMES)}")
    return written


def load_runtime(folder: Path, runtime: str = "keras", *, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(x) -> y`` over float32 batches, from the export folder's ``runtime`` file.

    ``y`` is an array for a one-output model, and ``{output name: array}`` for a model with
    several (segcls: ``lesion`` and ``probabilities``), the same from every runtime.

    Args:
        folder: an export folder written by :func:`export_formats`.
        runtime: 'keras', 'saved_model' or 'onnx'.
        threads: intra-op threads for ONNX Runtime (0: its default, one per core).

    Raises:
        FileNotFoundError: the folder has no file for ``runtime``.
    """
    folder = Path(folder)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    path = folder / {"keras": KERAS, "saved_model": SAVED_MODEL, "onnx": ONNX}[runtime]
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no {path.name} for the {runtime} runtime")
    if runtime == "keras":
        from medflow.models.inference import keras_predictor

        return keras_predictor(load_keras(path))
    if runtime == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        serve = loaded.signatures["serving_default"]
        key = next(iter(serve.structured_input_signature[1]))
        out_keys = list(serve.structured_outputs)

        def predict_sm(x):
            y = serve(**{key: tf.constant(np.asarray(x, dtype=np.float32))})
            return {k: y[k].numpy() for k in out_keys} if len(out_keys) > 1 else y[out_keys[0]].numpy()
        predict_sm.keepalive = loaded  # the signature's variables die with the loaded object
        return predict_sm
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out_names = [o.name for o in session.get_outputs()]

    def predict_onnx(x):
        y = session.run(None, {name: np.asarray(x, dtype=np.float32)})
        return dict(zip(out_names, y)) if len(out_names) > 1 else y[0]
    return predict_onnx


def parity(folder: Path, x: np.ndarray, runtimes: tuple[str, ...] = ("saved_model", "onnx")) -> dict:
    """How far each exported runtime is from Keras on the batch ``x``.

    Returns:
        {"max_abs_diff": {runtime: largest |runtime - keras|}, "scale": max(1, largest |keras output|)}.
        Outputs in physical units (CT in HU) are compared relative to ``scale``: float32 keeps about
        7 digits, so 1e-4 absolute is below rounding for values in the thousands.
    """
    reference = load_runtime(folder, "keras")(x)

    def arrays(y) -> list[np.ndarray]:  # a multi-output model's outputs, in name order
        return [np.asarray(y[k]) for k in sorted(y)] if isinstance(y, dict) else [np.asarray(y)]

    def drift(rt: str) -> float:
        return max(float(np.max(np.abs(a - b))) for a, b in zip(arrays(load_runtime(folder, rt)(x)), arrays(reference)))

    return {"max_abs_diff": {rt: drift(rt) for rt in runtimes},
            "scale": max(1.0, max(float(np.max(np.abs(a))) for a in arrays(reference)))}
