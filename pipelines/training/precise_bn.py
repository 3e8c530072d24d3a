"""PreciseBN: BatchNorm statistics re-estimated once training is over.

Inference normalizes with the moving averages, an exponential average (Keras
momentum 0.99: about the last hundred steps) of batch statistics taken while the
weights were still moving. A run of a few hundred steps, which is what a time
budget on 2 cores buys, ends with averages that still mix in early weights, and
the network then scores well below its own training metrics. With the weights
frozen, the statistics of N training batches estimate the population figures
that inference should use (Wu & Johnson 2021, "Rethinking 'Batch' in
BatchNorm", section 3; detectron2's ``update_bn_stats``).

Per layer, over N batches with batch means m_i and (biased) variances v_i::

    mean = avg(m_i)        var = avg(v_i) + avg(m_i^2) - avg(m_i)^2

which is the variance over all N batches' samples when the batches are equal in
size. Every layer sees its inputs with the layers before it in training mode,
as in training and in detectron2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def batchnorm_layers(model) -> list:
    """The trainable BatchNormalization layers of ``model`` and its nested models, each once."""
    import keras

    found, seen = [], set()

    def walk(layer):
        for sub in getattr(layer, "layers", []):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if isinstance(sub, keras.layers.BatchNormalization):
                if sub.trainable:  # a frozen layer keeps its statistics (Keras runs it in inference mode)
                    found.append(sub)
            else:
                walk(sub)

    walk(model)
    return found


def _inputs(batch):
    """A dataset element -> the model's inputs: (x, y[, w]) tuples give x."""
    return batch[0] if isinstance(batch, tuple) else batch


def recalibrate(model, batches: Iterable, max_batches: int) -> int:
    """Set every trainable BN layer's moving mean and variance to their estimate over ``batches``.

    Args:
        model: a built Keras model; only its BN layers' moving statistics change.
        batches: dataset elements, (x, y[, w]) or x, with x what ``model`` takes (B, ...).
        max_batches: at most this many batches are used.

    Returns:
        The number of batches used (0: no trainable BN layer or no batch, and nothing changed).
    """
    layers = batchnorm_layers(model)
    if not layers or max_batches < 1:
        return 0
    before = [(bn.moving_mean.numpy(), bn.moving_variance.numpy(), bn.momentum) for bn in layers]
    sums = [[0.0, 0.0, 0.0] for _ in layers]  # sum of m_i, of m_i^2, of v_i
    used = 0
    finished = False
    try:
        for bn in layers:
            bn.momentum = 0.0  # the moving statistics become exactly this batch's (read back below)
        import tensorflow as tf

        # Traced after the momentum is set (the graph holds it); about twice as fast as eager calls.
        forward = tf.function(lambda x: model(x, training=True), reduce_retracing=True)
        for batch in batches:
            forward(_inputs(batch))
            for bn, acc in zip(layers, sums):
                m = bn.moving_mean.numpy().astype(np.float64)
                acc[0] = acc[0] + m
                acc[1] = acc[1] + m * m
                acc[2] = acc[2] + bn.moving_variance.numpy().astype(np.float64)
            used += 1
            if used >= max_batches:
                break
        finished = used > 0
    finally:
        for bn, (mean, var, momentum) in zip(layers, before):
            bn.momentum = momentum
            if not finished:  # an error or no batch: the model leaves as it came
                bn.moving_mean.assign(mean)
                bn.moving_variance.assign(var)
    if not finished:
        return 0
    for bn, (s_m, s_m2, s_v) in zip(layers, sums):
        mean = s_m / used
        var = np.maximum(s_v / used + s_m2 / used - mean * mean, 0.0)
        bn.moving_mean.assign(mean.astype(bn.moving_mean.dtype))
        bn.moving_variance.assign(var.astype(bn.moving_variance.dtype))
    return used


def recalibration_change(tc, epochs: int, batches: Callable[[range, int], Iterable]):
    """The ``trainer.finish_model`` change that the train section ``tc`` asks for, or None (``precise_bn``
    resolved to 0): PreciseBN over ``batches(range(epochs, epochs + 1), n)``, n training batches of the
    epoch after the last one trained (fresh draws, augmented as in training)."""
    n = tc.precise_bn_batches
    if not n:
        return None

    def change(model):
        import time

        n_layers = len(batchnorm_layers(model))
        start = time.perf_counter()
        used = recalibrate(model, batches(range(epochs, epochs + 1), n), n)
        if not used:
            return None
        seconds = time.perf_counter() - start
        return {"record": {"precise_bn": {"batches": used, "layers": n_layers, "seconds": round(seconds, 2)}},
                "metrics": {"precise_bn_batches": used},
                "line": f"BatchNorm statistics of {n_layers} layers re-estimated on {used} training batches "
                        f"in {seconds:.1f}s (PreciseBN)"}

    return change
