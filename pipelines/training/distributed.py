"""Training across worker processes with TensorFlow's MultiWorkerMirroredStrategy, without Keras ``fit``.

Keras 3 ``fit`` (and ``evaluate``) fail under MultiWorkerMirroredStrategy
(keras-team/keras issue 20585: PerReplica inputs reach the model). This module
runs the same model, loss, optimizer and callbacks through a distributed step of
its own:

- each worker reads its own slice of every global batch (data/loader.py
  ``make_dataset(worker=...)``), fed through ``distribute_datasets_from_function``
  so tf.distribute does not re-batch it;
- inside ``strategy.run`` the model's own ``compute_loss`` (Keras scales it by
  1/replicas) and ``optimizer.apply_gradients`` (Keras sums the gradients over
  replicas and updates once) make one step of the global batch;
- every worker computes the validation metrics on the whole validation set, so
  callbacks (checkpoints, early stopping, LR on plateau) decide the same everywhere.

With the same global batch and seed, two workers end where one worker ends, up
to float round-off, for models without batch normalization (batch norm keeps
per-replica statistics).
"""

from __future__ import annotations

import json
import os

import numpy as np


def cluster() -> tuple[int, int]:
    """(this worker's index, number of workers) from ``TF_CONFIG``; (0, 1) without one.

    A ``chief`` task, when the cluster names one, is worker 0 and the ``worker`` tasks follow it.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0, 1
    spec = json.loads(raw)
    chiefs, workers = spec["cluster"].get("chief", []), spec["cluster"].get("worker", [])
    task = spec.get("task", {})
    index = 0 if task.get("type") == "chief" else int(task.get("index", 0)) + len(chiefs)
    return index, len(chiefs) + len(workers)


def is_chief() -> bool:
    """Only the chief writes the stage folder and talks to MLflow."""
    return cluster()[0] == 0


def multi_worker_strategy():
    """MultiWorkerMirroredStrategy with ring all-reduce (CPU machines have no NCCL)."""
    import tensorflow as tf

    # A collective that waits longer than this fails the step instead of hanging on a dead worker.
    comm = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=float(os.environ.get("MEDFLOW_COLLECTIVE_TIMEOUT_S", 1800)))
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=comm)


def setup(kind: str):
    """(strategy or None, worker index, worker count) for ``train.distribute``.

    Call it before any other TensorFlow work in the process: collective ops are configured at start-up.
    """
    if kind == "multi_worker":
        index, count = cluster()
        return multi_worker_strategy(), index, count
    if kind == "mirrored":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(), 0, 1
    return None, 0, 1


def validate(model, val_ds, metrics) -> dict[str, float]:
    """``val_loss`` (the compiled loss plus regularization, as ``fit`` reports it) and ``val_<metric>``."""
    total, count = 0.0, 0
    for m in metrics:
        m.reset_state()
    for x, y in val_ds:
        pred = model(x, training=False)
        n = int(x.shape[0])
        total += float(model.compute_loss(x=x, y=y, y_pred=pred, training=False)) * n
        count += n
        for m in metrics:
            m.update_state(y, pred)
    return {"val_loss": total / max(count, 1), **{f"val_{m.name}": float(m.result()) for m in metrics}}


def fit_distributed(strategy, model, train_ds, val_ds, *, epochs: range, steps: int, callbacks,
                    val_metrics, class_weight: dict | None = None) -> None:
    """Train ``model`` (built and compiled under ``strategy.scope()``) for ``epochs``.

    Args:
        strategy: a tf.distribute strategy (MultiWorkerMirroredStrategy across processes).
        train_ds: this worker's batches over all of ``epochs`` (``steps`` per epoch).
        val_ds: the whole validation set, plain (not distributed).
        callbacks: Keras callbacks, driven per epoch as ``fit`` would (epoch begin and end).
        val_metrics: fresh metric objects for validation (created outside the strategy scope).
        class_weight: {class: weight} for classification, as ``fit`` takes it.
    """
    import tensorflow as tf

    with strategy.scope():
        model.optimizer.build(model.trainable_variables)  # optimizer state mirrored before the first step
    weights = None
    if class_weight:
        weights = tf.constant([class_weight.get(c, 1.0) for c in range(max(class_weight) + 1)], tf.float32)

    def replica_step(x, y):
        sample_weight = tf.gather(weights, tf.cast(y, tf.int32)) if weights is not None else None
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=pred, sample_weight=sample_weight, training=True)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def step(x, y):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(x, y)), axis=None)

    batches = iter(strategy.distribute_datasets_from_function(lambda ctx: train_ds))
    for cb in callbacks:
        cb.set_model(model)
    model.stop_training = False
    for epoch in epochs:
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        losses = [float(step(*next(batches))) for _ in range(steps)]
        logs = {"loss": float(np.mean(losses)), **validate(model, val_ds, val_metrics)}
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
