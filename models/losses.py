"""Losses and metrics, registered for ``.keras`` serialization (loadable with safe_mode=True)."""

from __future__ import annotations

import keras
from keras import ops


def _replicas():
    """(replica context, count) under tf.distribute with more than one replica, else (None, 1)."""
    if keras.backend.backend() != "tensorflow":
        return None, 1
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None, 1
    return ctx, ctx.num_replicas_in_sync


def _global_batch_sums(ctx, *sums):
    """Each replica's sums plus the other replicas' as constants: the value is the global batch's
    sum, and the gradient reaches only this replica's own samples (the optimizer adds the replicas)."""
    import tensorflow as tf

    total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(sums))
    return tuple(s + tf.stop_gradient(t - s) for s, t in zip(sums, total))


@keras.saving.register_keras_serializable(package="medflow")
class DiceCELoss(keras.losses.Loss):
    """Soft Dice over the foreground classes plus cross-entropy (nnU-Net's default loss).

    y_true: integer labels (B, *S); y_pred: softmax probabilities (B, *S, K).
    Dice is computed per class over the whole batch (as nnU-Net's batch Dice; across replicas
    under tf.distribute), averaged over classes 1..K-1, and ``1 - dice`` is added to the mean CE.
    """

    def __init__(self, n_classes: int, smooth: float = 1e-5, ce_weight: float = 1.0, name="dice_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2. Received: n_classes={n_classes}")
        self.n_classes, self.smooth, self.ce_weight = int(n_classes), float(smooth), float(ce_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        onehot = ops.one_hot(y_true, self.n_classes, dtype=y_pred.dtype)
        axes = tuple(range(len(y_pred.shape) - 1))  # batch and space
        inter = ops.sum(onehot * y_pred, axis=axes)
        denom = ops.sum(onehot, axis=axes) + ops.sum(y_pred, axis=axes)
        ctx, n = _replicas()
        if ctx is not None:  # batch Dice over the global batch, as nnU-Net does across GPUs
            inter, denom = _global_batch_sums(ctx, inter, denom)
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        dice_term = 1.0 - ops.mean(dice[1:])
        ce = self.ce_weight * ops.mean(keras.losses.sparse_categorical_crossentropy(y_true, y_pred))
        if n == 1:
            return ce + dice_term
        # Keras leaves a scalar loss unscaled, and the optimizer adds the replicas' gradients. So each
        # replica returns 1/n of the value (the replicas add up to the global batch's loss), while the
        # global Dice term keeps its whole gradient on each replica's own samples.
        return ce / n + dice_term - ops.stop_gradient(dice_term * (n - 1) / n)

    def get_config(self):
        config = super().get_config()
        config.update({"n_classes": self.n_classes, "smooth": self.smooth, "ce_weight": self.ce_weight})
        return config


@keras.saving.register_keras_serializable(package="medflow")
class ForegroundDice(keras.metrics.Metric):
    """Mean hard Dice over the foreground classes, accumulated over all batches of an epoch."""

    def __init__(self, n_classes: int, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_classes = int(n_classes)
        self.inter = self.add_weight(shape=(n_classes,), initializer="zeros", name="inter")
        self.total = self.add_weight(shape=(n_classes,), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = ops.one_hot(ops.argmax(y_pred, axis=-1), self.n_classes)
        true = ops.one_hot(ops.cast(y_true, "int32"), self.n_classes)
        axes = tuple(range(len(pred.shape) - 1))
        self.inter.assign_add(ops.sum(pred * true, axis=axes))
        self.total.assign_add(ops.sum(pred, axis=axes) + ops.sum(true, axis=axes))

    def result(self):
        dice = 2.0 * self.inter / ops.maximum(self.total, 1e-8)
        return ops.mean(dice[1:])

    def reset_state(self):
        self.inter.assign(ops.zeros_like(self.inter))
        self.total.assign(ops.zeros_like(self.total))

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes}


IGNORE = 255  # a voxel target that says "unknown": no lesion mask for this case


@keras.saving.register_keras_serializable(package="medflow")
class MaskedDiceBCELoss(keras.losses.Loss):
    """Binary soft Dice plus binary cross-entropy over the voxels whose target is known.

    y_true: (B, *S) or (B, *S, 1) uint8 in {0, 1, 255}; 255 (:data:`IGNORE`) marks a voxel
    without a target, e.g. every voxel of a lesion case that has no mask (a weakly labelled
    case adds nothing to this loss). y_pred: (B, *S, 1) lesion probability.

    ``dice="batch"``: the batch Dice (sums over every known voxel of the batch), so a batch of normal
    cases with no lesion anywhere still has a defined value: 1 - smooth / (sum p + smooth),
    which pushes their false positives down. ``dice="case"``: each sample's own Dice over its known
    voxels, so a small or faint lesion missed costs as much as a large bright one found (in a batch
    Dice the large lesion's voxels outweigh it); a weakly labelled sample adds no Dice term.
    The result is one value per sample (the Dice term plus the sample's mean BCE over its known
    voxels), so sample weights apply.
    """

    def __init__(self, smooth: float = 1.0, ce_weight: float = 1.0, pos_weight: float = 20.0, dice: str = "batch",
                 name="lesion_dice_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        if dice not in ("batch", "case"):
            raise ValueError(f"dice must be 'batch' or 'case'. Received: dice={dice!r}")
        self.smooth, self.ce_weight, self.pos_weight = float(smooth), float(ce_weight), float(pos_weight)
        self.dice = dice

    def call(self, y_true, y_pred):
        y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        p = ops.clip(y_pred[..., 0], 1e-6, 1.0 - 1e-6)
        known = ops.cast(ops.not_equal(y_true, IGNORE), p.dtype)
        t = ops.cast(ops.equal(y_true, 1), p.dtype)
        axes = tuple(range(1, len(p.shape)))
        # A lesion is ~1e-3 of the voxels: weighting its voxels keeps their gradient from drowning.
        bce = -(self.pos_weight * t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p)) * known
        n_known = ops.sum(known, axis=axes)
        bce = ops.sum(bce, axis=axes) / ops.maximum(n_known, 1.0)
        over = axes if self.dice == "case" else None  # None: sums over the whole batch
        inter = ops.sum(p * t * known, axis=over)
        denom = ops.sum(p * known, axis=over) + ops.sum(t, axis=over)
        dice_term = 1.0 - (2.0 * inter + self.smooth) / (denom + self.smooth)
        # A sample (case Dice) or batch (batch Dice) with no known voxel, i.e. weakly labelled, has no Dice term.
        dice_term = dice_term * ops.cast((n_known if over else ops.sum(n_known)) > 0, p.dtype)
        return self.ce_weight * bce + dice_term

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "ce_weight": self.ce_weight,
                "pos_weight": self.pos_weight, "dice": self.dice}


@keras.saving.register_keras_serializable(package="medflow")
class LesionDice(keras.metrics.Metric):
    """Hard Dice of the lesion map (p > 0.5) over the known voxels, accumulated over an epoch.

    y_true as :class:`MaskedDiceBCELoss` (255 = unknown); an epoch with no lesion voxel and
    no prediction scores 1.
    """

    def __init__(self, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.inter = self.add_weight(shape=(), initializer="zeros", name="inter")
        self.total = self.add_weight(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        known = ops.cast(ops.not_equal(y_true, IGNORE), "float32")
        pred = ops.cast(y_pred[..., 0] > 0.5, "float32") * known
        true = ops.cast(ops.equal(y_true, 1), "float32")
        self.inter.assign_add(ops.sum(pred * true))
        self.total.assign_add(ops.sum(pred) + ops.sum(true))

    def result(self):
        return ops.where(self.total > 0, 2.0 * self.inter / ops.maximum(self.total, 1e-8), 1.0)

    def reset_state(self):
        self.inter.assign(0.0)
        self.total.assign(0.0)


@keras.saving.register_keras_serializable(package="medflow")
class ImagePSNR(keras.metrics.Mean):
    """Mean over images of 10 log10(range^2 / MSE), range = max(truth) - min(truth) of each image: the PSNR
    DIVal reports (models/metrics.image_quality), per epoch. Inputs (B, H, W, C)."""

    def __init__(self, name: str = "psnr", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        axes = tuple(range(1, len(y_true.shape)))
        span = ops.max(y_true, axis=axes) - ops.min(y_true, axis=axes)
        mse = ops.mean(ops.square(y_true - ops.cast(y_pred, "float32")), axis=axes)
        psnr = 10.0 * ops.log(ops.square(span) / ops.maximum(mse, 1e-12)) / ops.log(10.0)
        return super().update_state(psnr, sample_weight=sample_weight)
