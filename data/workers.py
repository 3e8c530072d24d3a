"""Worker processes for per-case work (ingest, preprocess, evaluation, sample data).

Workers start from a forkserver, never by forking the parent, because the parent
may hold TensorFlow or MLflow threads. A bare forkserver child imports the case
readers itself: about 0.9 s per worker (nibabel, pydicom and its decoders, scipy),
paid again by every pool, which on a demo set of 20 cases is a third of a stage.
The forkserver imports them once instead, and every worker forks from it with
them loaded. Only modules without TensorFlow, Keras or MLflow belong here: what
the forkserver holds, every worker inherits.
"""

from __future__ import annotations

PRELOAD = (
    "numpy",
    "scipy.ndimage",
    "medflow.data.images",      # nibabel, pydicom and the DICOM decoders
    "medflow.data.preprocess",  # geometry, intensity, skimage's filters
    "medflow.data.fingerprint",
)


def process_context():
    """The multiprocessing context for case workers: forkserver, with :data:`PRELOAD` imported in it.

    The preload list takes effect when the forkserver starts (the first pool of
    the process); later calls leave a running server as it is.
    """
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx
