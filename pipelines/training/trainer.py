"""One small trainer for every task (big_vision style): what varies comes from config by name.

Checkpoints live in the train stage's folder. Each epoch writes a new
``ckpt-<epoch>/`` (model with optimizer state, plus the trainer state) and then
atomically replaces ``last.json``, the pointer to it; the previous checkpoint
is kept until the next one is safe. A restarted stage resumes from the pointer
and, because every sample's seed derives from (run seed, epoch, case), sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from medflow.data import faults
from medflow.data.atomic import write_atomic
from medflow.models.registry import PROBABILITIES, build_model
from medflow.models.runtimes import load_keras

POINTER = "last.json"


def _write_json(path: Path, obj) -> None:
    with write_atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))


def compile_model(cfg, input_shape, n_classes: int, task: str, total_steps: int, facts: dict | None = None):
    """Build and compile the configured model; loss and metrics follow the task.

    ``facts``: builder parameters that come from the data, not the config (a sinogram model's geometry).
    """
    tc = cfg.train
    model = build_model(cfg.model.name, input_shape, n_classes, {**cfg.model.params, **(facts or {})})
    lr = tc.learning_rate
    if tc.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(tc.learning_rate, decay_steps=max(total_steps, 1),
                                                    alpha=tc.cosine_floor)
    opt = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD}[tc.optimizer]
    kwargs = {"weight_decay": tc.weight_decay} if tc.optimizer == "adamw" and tc.weight_decay else {}
    if tc.optimizer == "sgd":
        kwargs["momentum"] = tc.momentum
        kwargs["nesterov"] = True
    else:
        kwargs["beta_2"] = tc.beta_2
    if tc.clip_norm:
        kwargs["global_clipnorm"] = tc.clip_norm
    loss, metrics = loss_and_metrics(tc, task, n_classes, model.output_names)
    model.compile(optimizer=opt(learning_rate=lr, **kwargs), loss=loss, metrics=metrics)
    return model


def loss_and_metrics(tc, task: str, n_classes: int, outputs: list[str] | None = None) -> tuple:
    """Fresh (loss, metrics) of a task family for a model with ``outputs`` (names; one output if None);
    ``tc`` is the train config section. Several outputs get a loss and metrics per output name."""
    from medflow.tasks import task_for

    return task_for(task).loss_and_metrics(tc, n_classes, outputs)


MAIN_OUTPUT = PROBABILITIES  # the output whose metrics keep single-output names in logs and monitors


def flat_logs(logs: dict) -> dict:
    """Epoch logs of a model with several outputs, named as a one-output model's where they are the main
    output's: ``probabilities_accuracy`` is ``accuracy`` (so ``train.monitor: val_accuracy`` means the same for
    every classifier), ``probabilities_loss`` is ``class_loss``; other outputs keep their prefixed names."""
    out = {}
    for key, value in logs.items():
        prefix = "val_" if key.startswith("val_") else ""
        name = key[len(prefix):]
        if name.startswith(MAIN_OUTPUT + "_"):
            rest = name[len(MAIN_OUTPUT) + 1:]
            name = "class_loss" if rest == "loss" else rest
        out[prefix + name] = value
    return out


def prune_checkpoints(folder: Path) -> None:
    """Keep the pointer's checkpoint and the epoch before it; remove the others."""
    pointer = json.loads((folder / POINTER).read_text())
    keep = {pointer["dir"], f"ckpt-{pointer['epoch'] - 1:04d}"}
    for stale in folder.glob("ckpt-*"):
        if stale.name not in keep:
            shutil.rmtree(stale, ignore_errors=True)


def load_resume(folder: Path, prune: bool = True):
    """(model, state) of the last checkpoint in ``folder``, or (None, None) to start fresh. ``prune``: also
    remove checkpoints a kill left beyond the two kept (the writer's job: not a multi-worker non-chief)."""
    pointer = folder / POINTER
    if not pointer.exists():
        return None, None
    ckpt = folder / json.loads(pointer.read_text())["dir"]
    if prune:  # a kill between the pointer's switch and the pruning left one more
        prune_checkpoints(folder)
    state = json.loads((ckpt / "state.json").read_text())
    model = load_keras(ckpt / "model.keras", compile=True)
    return model, state


class StageCheckpoint(keras.callbacks.Callback):
    """Per-epoch atomic checkpoint, best-model copy, history and early stopping that survive restarts."""

    def __init__(self, folder: Path, monitor: str, patience: int, state: dict | None, log_metrics,
                 samples_per_epoch: int = 0):
        super().__init__()
        self.folder, self.monitor, self.patience, self.log_metrics = Path(folder), monitor, patience, log_metrics
        self.samples_per_epoch, self._epoch_start = samples_per_epoch, None
        self.mode = "max" if any(k in monitor for k in ("dice", "accuracy", "auc", "psnr")) else "min"
        self.state = state or {"epoch": -1, "best": None, "best_epoch": -1, "history": []}

    def _better(self, value: float) -> bool:
        best = self.state["best"]
        return best is None or (value > best if self.mode == "max" else value < best)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = flat_logs({k: float(v) for k, v in (logs or {}).items()})
        if self._epoch_start is not None:  # wall time includes validation; samples/s counts training samples
            logs["epoch_seconds"] = time.perf_counter() - self._epoch_start
            if self.samples_per_epoch:
                logs["train_samples_per_s"] = self.samples_per_epoch / logs["epoch_seconds"]
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
        value = logs.get(self.monitor)
        if value is None:
            raise KeyError(f"train.monitor {self.monitor!r} is not among the epoch's metrics {sorted(logs)}")
        improved = self._better(value)
        self.state["history"].append({"epoch": epoch, **logs})
        self.state["epoch"] = epoch
        if improved:
            self.state.update(best=value, best_epoch=epoch)
            with write_atomic(self.folder / "best.keras", suffix=".keras") as tmp:
                self.model.save(tmp)
        ckpt = self.folder / f"ckpt-{epoch:04d}"
        with write_atomic(ckpt, folder=True) as tmp_dir:
            self.model.save(tmp_dir / "model.keras")
            _write_json(tmp_dir / "state.json", self.state)
        _write_json(self.folder / POINTER, {"dir": ckpt.name, "epoch": epoch})  # the switch to the new checkpoint
        prune_checkpoints(self.folder)
        self.log_metrics(logs, epoch)
        if self.patience and epoch - self.state["best_epoch"] >= self.patience:
            self.model.stop_training = True


def class_weights(targets: list[int], n_classes: int) -> dict[int, float]:
    """'balanced' weights n / (k * count_c), as scikit-learn computes them (absent classes get 1)."""
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=n_classes)
    n = counts.sum()
    return {c: (float(n / (n_classes * counts[c])) if counts[c] else 1.0) for c in range(n_classes)}


def _callbacks(cfg, folder: Path, state, log_metrics, steps: int) -> list:
    tc = cfg.train
    callbacks = [StageCheckpoint(folder, tc.monitor, tc.early_stopping_patience, state, log_metrics,
                                 samples_per_epoch=steps * cfg.loader.batch_size)]
    if tc.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=tc.monitor, factor=0.5, patience=3))
    if faults.active():  # the fault suite kills training mid-epoch too (a batch hook only when asked)
        callbacks.append(keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: faults.point("step")))
    return callbacks


def fit_multi_worker(cfg, strategy, model, train_ds, val_ds, *, steps: int, epochs: int, start_epoch: int,
                     folder: Path, state, log_metrics, task: str, n_classes: int, class_weight=None):
    """:func:`fit` for MultiWorkerMirroredStrategy: the same callbacks around pipelines/distributed.py's step."""
    from medflow.training.distributed import fit_distributed

    callbacks = _callbacks(cfg, folder, state, log_metrics, steps)
    _, metrics = loss_and_metrics(cfg.train, task, n_classes)
    fit_distributed(strategy, model, train_ds, val_ds, epochs=range(start_epoch, epochs), steps=steps,
                    callbacks=callbacks, val_metrics=metrics, class_weight=class_weight)
    return callbacks[0].state


def fit(cfg, model, train_ds, val_ds, *, steps: int, epochs: int, start_epoch: int, folder: Path, state,
        log_metrics, class_weight=None):
    """Run Keras fit from ``start_epoch`` to ``epochs`` (the run's plan) with the stage's checkpointing."""
    callbacks = _callbacks(cfg, folder, state, log_metrics, steps)
    with warnings.catch_warnings():
        # The dataset holds exactly steps x epochs batches (one plan per epoch, so seeds line up with
        # epochs); Keras warns when it probes past the last one.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=start_epoch,
                  steps_per_epoch=steps, callbacks=callbacks, class_weight=class_weight, shuffle=False,
                  verbose=1 if sys.stdout.isatty() else 2)
    return callbacks[0].state


def resume_epoch(epochs: int, patience: int, state: dict | None) -> int | None:
    """The epoch training starts or resumes at, or None when it has finished (all ``epochs``, or stopped early
    after ``patience`` epochs without improvement)."""
    if state is None:
        return 0 if epochs > 0 else None
    if patience and state["epoch"] - state["best_epoch"] >= patience:
        return None
    start = state["epoch"] + 1
    return start if start < epochs else None


def plan_metrics(plan, started: float, fit_end: float | None = None) -> dict:
    """The train manifest's figures of the run's plan: planned epochs and steps, and with a budget the measured
    step and validation times and the stage's wall time so far against the budget (``started``: perf_counter).
    ``fit_end`` (perf_counter when training returned) adds ``fit_end_seconds``: what the stage spent after it
    (publishing, PreciseBN, a refit) is the difference to ``stage_seconds``."""
    out = {"planned_epochs": plan.epochs, "planned_steps_per_epoch": plan.steps}
    if plan.budget_seconds is not None:
        out.update(budget_seconds=plan.budget_seconds, measured_step_seconds=plan.step_seconds,
                   measured_val_seconds=plan.val_seconds, stage_seconds=time.perf_counter() - started)
        if fit_end is not None:
            out["fit_end_seconds"] = fit_end - started
    return out


def publish_model(out, state: dict) -> None:
    """End of training: the best epoch's model becomes ``model.keras``; ``history.csv`` and
    ``training_curves.png`` beside it."""
    from medflow.review.figures import training_curves_figure
    from medflow.tasks.figures import save_figure

    with write_atomic(out.path / "model.keras", suffix=".keras") as tmp:
        shutil.copyfile(out.path / "best.keras", tmp)
    out.write_text("history.csv", history_csv(state["history"]))
    with write_atomic(out.path / "training_curves.png") as tmp:
        save_figure(training_curves_figure(state["history"], f"training curves (best epoch {state['best_epoch']})"),
                    tmp)


def finish_model(out, *changes, stage: str = "train") -> dict | None:
    """Each ``change(model)`` in turn on the published ``model.keras`` (e.g. BatchNorm statistics re-estimated,
    then the family's class layer refitted). A change reports {"record": for train.json, "metrics": for the
    manifest, "line": to print}, or None when it changed nothing; the model is then written back atomically.
    Returns the reports merged, or None."""
    model = load_keras(out.path / "model.keras")
    merged = {"record": {}, "metrics": {}}
    for change in changes:
        done = change(model)
        if done:
            merged["record"].update(done["record"])
            merged["metrics"].update(done["metrics"])
            print(f"[{stage}] {done['line']}", flush=True)
    if not merged["metrics"] and not merged["record"]:
        return None
    with write_atomic(out.path / "model.keras", suffix=".keras") as tmp:
        model.save(tmp)
    return merged


def training_metrics(state: dict) -> dict:
    """The train manifest's metrics: epochs run, the best epoch and its logs as ``best_<name>``."""
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    return {"epochs_run": len(state["history"]), "best_epoch": state["best_epoch"],
            **{f"best_{k}": v for k, v in best.items() if k != "epoch"}}


def history_csv(history: list[dict]) -> str:
    keys = sorted({k for row in history for k in row} - {"epoch"})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for row in history:
        writer.writerow([row["epoch"], *(f"{row.get(k, float('nan')):.6g}" for k in keys)])
    return buf.getvalue()


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_samples / batch_size))
