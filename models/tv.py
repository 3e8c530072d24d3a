"""Total-variation reconstruction by PDHG (Chambolle & Pock 2011): the classical iterative baseline.

Solves, for each sinogram y of the geometry, with B = A / ||A|| (A: the ray transform
of models/projector.py) and b = y / ||A||::

    min_x  1/2 ||B x - b||^2 + weight * TV(x)   subject to x >= 0

TV is isotropic, with forward differences and zero flux at the far edge. K = [B; grad]
has ||K||^2 <= 1 + 8, so steps tau = sigma = 0.99 / 3 converge. In A's own units the
regularization is lambda = weight * ||A||^2. Images are batched: all of them iterate
together in one TensorFlow graph. ``weight`` and the iteration count are chosen on
validation images (:func:`tune`), as DIVal tunes its TV baseline.
"""

from __future__ import annotations

import itertools

import numpy as np

GRAD_SCALE = 1.0 / np.sqrt(8.0)  # K = [B; c grad] with ||c grad|| <= 1 too: balanced blocks, larger steps
STEP = 0.99 / np.sqrt(2.0)  # tau = sigma, tau * sigma * ||K||^2 < 1 with ||K||^2 <= 2
WEIGHTS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # the first, coarse grid (x sqrt(10) apart), then refined
CHECKPOINTS = (100, 250, 500, 1000)  # iteration counts scored while tuning (ellipses: still rising at 800)
# A ray transform with at most this many entries is applied as a dense matrix: one BLAS product each way beats
# the projector layer's gathers there (64², 30 angles, 64 images: A 7.3 against 11.5 ms, Aᵀ 8.1 against 8.8).
# 16M entries are 64 MB per direction; a 128² geometry (90M entries) keeps the gathers.
DENSE_MAX_ENTRIES = 1 << 24


def dense_pair(matrix, scale: float, angles: int):
    """(forward, adjoint) of ``scale * matrix`` as dense products: (N, S, S, 1) <-> (N, D, A, 1).

    ``matrix`` is data/ct/projector's (D * A, S * S) ray transform (rows d * A + a, columns in the
    image's row-major order) for ``angles`` = A, so the reshapes are the projector layer's layout.
    """
    import tensorflow as tf

    side = int(round(np.sqrt(matrix.shape[1])))
    image, sinogram = (side, side), (matrix.shape[0] // angles, angles)

    dense = matrix.toarray() * scale
    forward_t = tf.constant(np.ascontiguousarray(dense.T, dtype=np.float32))  # (S*S, D*A): no transpose per call
    adjoint_t = tf.constant(dense.astype(np.float32))  # (D*A, S*S)

    def forward(x):
        return tf.reshape(tf.matmul(tf.reshape(x, (-1, image[0] * image[1])), forward_t), (-1, *sinogram, 1))

    def adjoint(y):
        return tf.reshape(tf.matmul(tf.reshape(y, (-1, sinogram[0] * sinogram[1])), adjoint_t), (-1, *image, 1))

    return forward, adjoint


def checkpoints_up_to(most: int) -> tuple[int, ...]:
    """The tuning's iteration counts for at most ``most`` iterations: CHECKPOINTS below it, then ``most``."""
    return tuple(c for c in CHECKPOINTS if c < most) + (int(most),)


def _grad(x):
    """(N, S, S, 1) -> (N, S, S, 2) forward differences, zero past the last row and column."""
    import tensorflow as tf

    dx = tf.concat([x[:, 1:] - x[:, :-1], tf.zeros_like(x[:, :1])], axis=1)
    dy = tf.concat([x[:, :, 1:] - x[:, :, :-1], tf.zeros_like(x[:, :, :1])], axis=2)
    return tf.concat([dx, dy], axis=-1)


def _grad_adjoint(q):
    """(N, S, S, 2) -> (N, S, S, 1), the exact adjoint of :func:`_grad` (minus the divergence)."""
    import tensorflow as tf

    def back(p, axis):
        p = tf.concat([tf.gather(p, tf.range(tf.shape(p)[axis] - 1), axis=axis),
                       tf.zeros_like(tf.gather(p, [0], axis=axis))], axis=axis)  # the last difference is 0
        shifted = tf.concat([tf.zeros_like(tf.gather(p, [0], axis=axis)),
                             tf.gather(p, tf.range(tf.shape(p)[axis] - 1), axis=axis)], axis=axis)
        return shifted - p

    return back(q[..., :1], 1) + back(q[..., 1:], 2)


class TVSolver:
    """PDHG iterations for a geometry, resumable: :meth:`iterate` continues from the current state.

    Args:
        geometry: image_size, angles_deg, detectors (data/ct/ellipses or data/ct/volumes).
    """

    def __init__(self, geometry: dict):
        from medflow.data.ct.projector import operator_norm, ray_transform
        from medflow.models.projector import ParallelBeamProjector

        size, angles, detectors = geometry["image_size"], list(geometry["angles_deg"]), geometry["detectors"]
        matrix = ray_transform(size, tuple(float(a) for a in angles), detectors)
        self.opnorm = operator_norm(matrix)
        scale = 1.0 / self.opnorm
        if matrix.shape[0] * matrix.shape[1] <= DENSE_MAX_ENTRIES:
            self.forward, self.adjoint = dense_pair(matrix, scale, len(angles))
        else:
            self.forward = ParallelBeamProjector(size, angles, detectors, scale=scale)
            self.adjoint = ParallelBeamProjector(size, angles, detectors, adjoint=True, scale=scale)
        self.size = size
        self._step = None

    def start(self, sinograms: np.ndarray, weight, init: np.ndarray | None = None) -> dict:
        """The state before iteration 1 for (N, D, A) sinograms: the data scaled by 1 / ||A||, x at
        ``init`` (N, S, S) clipped at 0 (an FBP: the same optimum, reached in fewer steps) or zeros.
        ``weight`` is one float, or (N,) floats: one per image."""
        import tensorflow as tf

        n = len(sinograms)
        weight = np.broadcast_to(np.asarray(weight, np.float32), (n,)).reshape(n, 1, 1, 1)
        b = tf.constant(np.asarray(sinograms, np.float32)[..., None] / np.float32(self.opnorm))
        x = tf.zeros((n, self.size, self.size, 1)) if init is None else \
            tf.constant(np.maximum(np.asarray(init, np.float32), 0.0)[..., None])
        return {"x": x, "bar": x, "p": tf.zeros_like(b), "q": tf.zeros((n, self.size, self.size, 2)),
                "b": b, "weight": tf.constant(weight), "done": 0}

    def iterate(self, state: dict, iterations: int) -> dict:
        """Run ``iterations`` more PDHG steps on ``state``; returns the new state."""
        import tensorflow as tf

        if self._step is None:
            forward, adjoint = self.forward, self.adjoint

            @tf.function(reduce_retracing=True)
            def run(x, bar, p, q, b, weight, n):
                for _ in tf.range(n):
                    p = (p + STEP * (forward(bar) - b)) / (1.0 + STEP)  # prox of the data term's conjugate
                    q = q + (STEP * GRAD_SCALE) * _grad(bar)  # dual of weight |grad x| = (weight / c) |c grad x|
                    q = q / tf.maximum(1.0, tf.norm(q, axis=-1, keepdims=True) * (GRAD_SCALE / weight))
                    new = tf.maximum(x - STEP * (adjoint(p) + GRAD_SCALE * _grad_adjoint(q)), 0.0)
                    bar = 2.0 * new - x
                    x = new
                return x, bar, p, q

            self._step = run
        x, bar, p, q = self._step(state["x"], state["bar"], state["p"], state["q"], state["b"], state["weight"],
                                  tf.constant(iterations))
        return {**state, "x": x, "bar": bar, "p": p, "q": q, "done": state["done"] + iterations}

    def reconstruct(self, sinograms: np.ndarray, weight: float, iterations: int, init: np.ndarray | None = None,
                    batch: int = 64) -> np.ndarray:
        """(N, D, A) sinograms -> (N, S, S) float32 TV reconstructions in the units of A's domain."""
        out = []
        for i in range(0, len(sinograms), batch):
            start = self.start(sinograms[i:i + batch], weight, None if init is None else init[i:i + batch])
            state = self.iterate(start, iterations)
            out.append(state["x"].numpy()[..., 0])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.size, self.size), np.float32)


def tune(solver: TVSolver, sinograms: np.ndarray, truths: np.ndarray, score, init: np.ndarray | None = None,
         weights=WEIGHTS, checkpoints=CHECKPOINTS) -> dict:
    """The (weight, iterations) with the best mean ``score(truth, image)`` on these (validation) images.

    A coarse grid of ``weights``, then the best one's neighbours at half and double; each weight is
    scored after every count of ``checkpoints``. Returns {weight, iterations, score, grid:
    [[weight, iterations, score], ...]}.
    """
    grid: dict[tuple[float, int], float] = {}
    k = len(sinograms)

    def scan(scanned: list[float]):
        # All weights in one batch, the images repeated per weight: the projector's time per image
        # falls with the batch (128², 30 angles: 16.8 ms for 16 images against 12.8 ms for 5).
        state = solver.start(np.tile(sinograms, (len(scanned), 1, 1)), np.repeat(scanned, k),
                             None if init is None else np.tile(init, (len(scanned), 1, 1)))
        for count in checkpoints:
            state = solver.iterate(state, count - state["done"])
            images = state["x"].numpy()[..., 0]
            for j, weight in enumerate(scanned):
                grid[(weight, count)] = float(np.mean([score(t, im) for t, im in zip(truths, images[j * k:])]))

    scan([float(w) for w in weights])
    best_weight = max(grid, key=grid.get)[0]
    scan([best_weight / 2.0, best_weight * 2.0])
    (weight, iterations), value = max(grid.items(), key=lambda kv: kv[1])
    rows = [[w, c, grid[(w, c)]] for w, c in itertools.product(sorted({k[0] for k in grid}), checkpoints)]
    return {"weight": weight, "iterations": iterations, "score": value, "grid": rows}
