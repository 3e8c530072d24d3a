"""One worker of the multi-worker test (``python -m tests.pipelines.training.mw_worker CONFIG OUT``).

Trains the config's model on its preprocessed cases with pipelines/distributed.py,
as worker ``TF_CONFIG`` names (or alone without one), then saves the final
weights and the epoch logs to OUT.npz.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(config: str, out: str) -> None:
    import keras
    import numpy as np

    from medflow.core.loading import load_config
    from medflow.core.runner import finished_output
    from medflow.data.augment import Chain
    from medflow.data.loader import SampleSource, make_dataset
    from medflow.training import trainer
    from medflow.training.distributed import cluster, fit_distributed, multi_worker_strategy
    from medflow.training.inputs import build_source

    cfg = load_config(config)
    pre, split = finished_output(cfg, "preprocess"), finished_output(cfg, "split")
    fold = json.loads(split.file("splits.json").read_text())["folds"][0]
    train_ids, val_ids = sorted(fold["train"]), sorted(fold["val"])
    strategy = multi_worker_strategy()  # created before any other TensorFlow op, as TF requires
    keras.utils.set_random_seed(cfg.augment.seed)
    source = build_source(cfg, pre, train_ids + val_ids, cache="memory")
    val_source = SampleSource(source.store, source.sampler, Chain([]), run_seed=cfg.augment.seed + 1,
                              samples_per_case=cfg.train.val_samples_per_case)
    batch, steps = cfg.loader.batch_size, 3
    shape = (*cfg.loader.patch_size, 1)
    with strategy.scope():
        model = trainer.compile_model(cfg, shape, 3, "segmentation", steps * cfg.train.epochs)
    index, count = cluster()
    train_ds = make_dataset(source, train_ids, range(cfg.train.epochs), batch_size=batch,
                            samples_per_epoch=steps * batch, worker=(index, count))
    val_ds = make_dataset(val_source, val_ids, range(1), batch_size=batch, augment=False)
    history = []
    logger = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: history.append(dict(logs)))
    checkpoint = trainer.StageCheckpoint(Path(out).with_suffix(""), cfg.train.monitor, 0, None, lambda m, s: None,
                                         samples_per_epoch=steps * batch)
    Path(out).with_suffix("").mkdir(parents=True, exist_ok=True)
    _, metrics = trainer.loss_and_metrics(cfg.train, "segmentation", 3)
    fit_distributed(strategy, model, train_ds, val_ds, epochs=range(cfg.train.epochs), steps=steps,
                    callbacks=[checkpoint, logger], val_metrics=metrics)
    weights = np.concatenate([np.asarray(v).ravel() for v in model.trainable_variables])
    np.savez(out, weights=weights, history=json.dumps(history), iterations=int(model.optimizer.iterations.numpy()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
