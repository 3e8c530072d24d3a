"""``medflow bench projector``: the ray transform's implementations on the same geometry, in one run.

* simulation: scikit-image's ``radon`` beside the sparse matrix (data/ct/projector.py)
  applied with scipy, per image, on the 3x finer grid that ``simulate`` measures from;
* the Keras layer (models/projector.py): A, A^T and the gradient of A by its row-bucket
  gather, beside ``tf.sparse.sparse_dense_matmul`` on the same matrix, at several batch sizes;
* the float32 matmul rate of the same run, the unit for comparing machines.

Each figure is the median of ``repeats``; the two implementations take turns.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _sparse_ops(matrix):
    """(A x, A^T y) with tf.sparse on (B, pixels) and (B, rays) batches."""
    import tensorflow as tf

    coo = matrix.tocoo()
    st = tf.sparse.reorder(tf.SparseTensor(np.stack([coo.row, coo.col], 1).astype(np.int64),
                                           coo.data.astype(np.float32), coo.shape))
    fwd = tf.function(lambda v: tf.transpose(tf.sparse.sparse_dense_matmul(st, v, adjoint_b=True)))
    adj = tf.function(lambda v: tf.transpose(tf.sparse.sparse_dense_matmul(st, v, adjoint_a=True, adjoint_b=True)))
    return fwd, adj


def _gradient(op):
    """A traced x -> d sum(op(x)^2) / dx (one forward and one backward pass of ``op``)."""
    import tensorflow as tf

    @tf.function
    def grad(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            total = tf.reduce_sum(op(v) ** 2)
        return tape.gradient(total, v)

    return grad


def bench_projector(size: int = 128, angles: int = 30, batches=(1, 5, 16), repeats: int = 5,
                    oversample: int = 3) -> dict:
    import tensorflow as tf
    from skimage.transform import radon

    from medflow.bench.suite import machine
    from medflow.bench.train import matmul_gflops
    from medflow.data.ct.physics import midpoint_angles, n_detectors
    from medflow.data.ct.projector import ray_transform
    from medflow.models.projector import ParallelBeamProjector

    info = machine()
    theta = midpoint_angles(angles)
    rng = np.random.default_rng(0)
    fine = oversample * size + 3  # simulate's padded fine grid (data/ct/physics.simulate_oversampled)
    image = rng.random((fine, fine))
    start = time.perf_counter()
    fine_matrix = ray_transform(fine, tuple(theta))
    build_fine_s = time.perf_counter() - start
    radon_ms = _median_ms(lambda: radon(image, theta=theta, circle=False), repeats)
    matrix_ms = _median_ms(lambda: fine_matrix @ image.ravel(), repeats)

    start = time.perf_counter()
    matrix = ray_transform.__wrapped__(size, tuple(theta))
    build_s = time.perf_counter() - start
    a = ParallelBeamProjector(size, theta)
    at = ParallelBeamProjector(size, theta, adjoint=True)
    sparse_a, sparse_at = _sparse_ops(matrix)
    d = n_detectors(size)
    rows = []
    for b in batches:
        x = tf.constant(rng.random((b, size, size, 1)), tf.float32)
        y = tf.constant(rng.random((b, d, angles, 1)), tf.float32)
        xf, yf = tf.reshape(x, (b, -1)), tf.reshape(y, (b, -1))

        grad, sparse_grad = _gradient(a), _gradient(sparse_a)
        # autograph=False: nothing to convert, and two lambdas on one line make AutoGraph warn at every trace
        fa, fat = tf.function(lambda v: a(v), autograph=False), tf.function(lambda v: at(v), autograph=False)
        rows.append({"batch": b,
                     "gather_A_ms": _median_ms(lambda: fa(x).numpy(), repeats),
                     "sparse_A_ms": _median_ms(lambda: sparse_a(xf).numpy(), repeats),
                     "gather_AT_ms": _median_ms(lambda: fat(y).numpy(), repeats),
                     "sparse_AT_ms": _median_ms(lambda: sparse_at(yf).numpy(), repeats),
                     "gather_grad_ms": _median_ms(lambda: grad(x).numpy(), repeats),
                     "sparse_grad_ms": _median_ms(lambda: sparse_grad(xf).numpy(), repeats)})
    gflops = matmul_gflops()
    print(f"\nmedflow bench projector: parallel beam, {size}x{size} image, {angles} angles, {d} detectors "
          f"({matrix.nnz} non-zeros)")
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, Python {info['python']}, "
          f"TensorFlow {info['tensorflow']}; float32 matmul {gflops:.1f} GFLOP/s")
    print(f"  simulate ({fine}x{fine} fine grid): radon {radon_ms:.1f} ms/image, matrix {matrix_ms:.1f} ms/image "
          f"({radon_ms / matrix_ms:.1f}x), after a one-off build of {build_fine_s:.1f} s")
    print(f"  layer tables built in {build_s:.2f} s; ms per call, row-bucket gather (exports to ONNX) | tf.sparse:")
    print("    batch |      A        |     A^T       |  grad of A")
    for r in rows:
        print(f"    {r['batch']:>5} | {r['gather_A_ms']:6.1f} {r['sparse_A_ms']:6.1f} | {r['gather_AT_ms']:6.1f} "
              f"{r['sparse_AT_ms']:6.1f} | {r['gather_grad_ms']:6.1f} {r['sparse_grad_ms']:6.1f}")
    return {"machine": info, "matmul_gflops": gflops, "radon_ms": radon_ms, "matrix_ms": matrix_ms,
            "build_fine_s": build_fine_s, "build_s": build_s, "rows": rows}
