"""Train stage: fit the configured model on one fold's training cases, with augmentation from config.

Reads:  preprocess (case files, plan.json) and split (splits.json)
Writes: <workspace>/stages/train/<key>/preview.png (augmentation preview, logged when training starts),
        training_curves.png,
        train_plan.json (epochs x steps, and with train.budget what they were planned from),
        ckpt-<epoch>/ + last.json (resume points), best.keras, model.keras (the best epoch),
        plan.json (the typed inference plan), history.csv, train.json, then manifest.json (last)

The folder is self-contained for export and inference: model.keras plus plan.json
(preprocessing, windows or crops, class names) and the splits it was trained with.

With ``train.distribute: multi_worker`` every worker named in ``TF_CONFIG`` runs
this stage; each reads its slice of every global batch, and only the chief
(worker 0) writes the folder, the model and the manifest. With ``ray``, Ray
Train's workers do the same (medflow.training.ray_train).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from medflow.core.engine import ShardOutput, StageDir, StageFailed
from medflow.training import distributed


def _fold_cases(split, pre, fold: int) -> tuple[list[str], list[str]]:
    splits = json.loads(split.file("splits.json").read_text())
    if fold >= len(splits["folds"]):
        raise StageFailed(f"train.fold={fold} but the split stage made {len(splits['folds'])} fold(s)")
    pick = lambda ids: sorted(c for c in ids if c in pre.cases)  # noqa: E731  (preprocess may have quarantined some)
    train, val = pick(splits["folds"][fold]["train"]), pick(splits["folds"][fold]["val"])
    if not train or not val:
        raise StageFailed(f"fold {fold} has {len(train)} training and {len(val)} validation cases after preprocessing")
    return train, val



def _family(cfg, pre, stage: str):
    """(task, classes, the preprocess plan) of the dataset, checked against the model and this stage."""
    from medflow.tasks import task_for

    plan = json.loads(pre.file("plan.json").read_text())
    task = plan["task"]
    if cfg.model.family != task:
        raise StageFailed(f"model {cfg.model.name!r} is a {cfg.model.family} model but the dataset is for {task}")
    if task_for(task, str(pre.path)).trained_by != stage:
        raise StageFailed(f"a {task} model trains in the {task_for(task).trained_by} stage, not {stage}")
    return task, [plan["classes"][k] for k in sorted(plan["classes"], key=int)], plan


def _train_dataset(cfg, source, train_ids, epochs: range, steps: int, shard, masks=None):
    """The training dataset for ``epochs`` of ``steps`` batches; ``shard`` = (worker, workers) or None;
    ``masks``: a :class:`MaskTargets` for a model with a lesion output."""
    from medflow.data.loader import make_dataset

    batch = cfg.loader.batch_size
    try:
        return make_dataset(source, train_ids, epochs, batch_size=batch, parallel=cfg.loader.parallel_calls,
                            samples_per_epoch=steps * batch, worker=shard, masks=masks)
    except ValueError as err:
        raise StageFailed(f"loader.batch_size: {err}") from None


def _val_dataset(cfg, source, val_ids, masks=None):
    """The cached, unaugmented validation dataset (lesion targets unweighted)."""
    from dataclasses import replace

    from medflow.data.augment import Chain
    from medflow.data.loader import SampleSource, make_dataset

    val_source = SampleSource(source.store, source.sampler, Chain([]), run_seed=cfg.augment.seed + 1,
                              samples_per_case=cfg.train.val_samples_per_case)
    val_masks = None if masks is None else replace(masks, class_weight={})
    return make_dataset(val_source, val_ids, range(1), batch_size=cfg.loader.batch_size, augment=False,
                        masks=val_masks).cache()


def _build_any_size(cfg, build):
    """``build(1)``; with ``loader.train_patch_size`` a model that needs one fixed input size is a config error."""
    try:
        return build(1)
    except (ValueError, TypeError) as err:
        if cfg.loader.train_patch_size is None:
            raise
        raise StageFailed(f"loader.train_patch_size: {cfg.model.name!r} takes only one input size "
                          f"({str(err).splitlines()[0]})") from None


def _mask_targets(cfg, model, classes: list[str], weights):
    """A :class:`MaskTargets` when the model segments the lesion beside classifying (segcls), else None."""
    from medflow.data.loader import MaskTargets
    from medflow.models.registry import LESION

    if LESION not in model.output_names:
        if cfg.loader.train_patch_size is not None:
            raise StageFailed(f"loader.train_patch_size: patches take their class from the lesion mask, which "
                              f"{cfg.model.name!r} does not segment (segcls does)")
        return None
    if cfg.train.distribute == "multi_worker":
        raise StageFailed(f"train.distribute: multi_worker trains one-output models; {cfg.model.name!r} has "
                          f"outputs {model.output_names}")
    normal = cfg.dataset.normal_class
    if normal is not None and normal not in classes:
        raise StageFailed(f"dataset.normal_class: {normal!r} is not one of {classes}")
    return MaskTargets(None if normal is None else classes.index(normal), weights or {},
                       patches=cfg.loader.train_patch_size is not None)


def run(cfg, upstream, out: StageDir, ctx):
    """Train (or resume training) on ``cfg.train.fold``."""
    if cfg.train.distribute == "ray":  # Ray Train's workers run this stage as multi_worker ones
        from medflow.training.ray_train import train_on_ray

        return train_on_ray(cfg, upstream, out, ctx)
    import time

    import keras

    from medflow.data.preview import preview_figure
    from medflow.tasks import TASKS
    from medflow.tasks.figures import save_figure
    from medflow.training import budget, precise_bn, trainer
    from medflow.training.inputs import build_source

    started = time.perf_counter()  # a budget counts from here: the whole stage ends within it
    pre, split = upstream["preprocess"], upstream["split"]
    task, classes, plan = _family(cfg, pre, out.name)
    family = TASKS[task]
    train_ids, val_ids = _fold_cases(split, pre, cfg.train.fold)
    strategy, worker, workers = distributed.setup(cfg.train.distribute)
    chief, multi = worker == 0, cfg.train.distribute == "multi_worker"
    # Only the chief writes the stage folder; another worker keeps its (identical) checkpoints apart.
    folder = out.path if chief else Path(tempfile.mkdtemp(prefix=f"medflow-worker{worker}-"))
    if chief:
        out.prepare()
    keras.utils.set_random_seed(cfg.augment.seed)
    source = build_source(cfg, pre, train_ids + val_ids, cache_dir=folder / "cache")
    input_shape = (*cfg.loader.patch_size, len(plan["channels"]))  # what inference feeds the network
    # Trained on patches of another size, the network is built for any size (fully convolutional).
    build_shape = input_shape if cfg.loader.train_patch_size is None else (None, None, None, input_shape[-1])
    natural = trainer.steps_per_epoch(len(train_ids) * cfg.loader.samples_per_case, cfg.loader.batch_size)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model, state = trainer.load_resume(out.path, prune=chief)  # every worker resumes from the chief's
    weights = None
    if family.class_targets and cfg.train.class_weights == "balanced":
        weights = trainer.class_weights([source.store.targets[c] for c in train_ids], len(classes))
    build = lambda total: trainer.compile_model(cfg, build_shape, len(classes), task, total)  # noqa: E731
    masks = _mask_targets(cfg, model or _build_any_size(cfg, build), classes, weights) if family.class_targets else None
    if masks is not None:
        weights = None  # they travel as sample weights (Keras refuses class_weight for two outputs)
    val_ds = _val_dataset(cfg, source, val_ids, masks)

    def probe():
        def batches():
            return iter(_train_dataset(cfg, source, train_ids, budget.probe_epochs(natural), natural, None, masks))

        return budget.run_probe(build(1), batches, val_ds)

    try:
        run_plan = budget.resolve_plan(cfg.train, folder, natural, started, probe)
    except budget.BudgetTooSmall as err:
        raise StageFailed(str(err)) from None
    print(f"[train] {budget.describe(run_plan)}", flush=True)
    if model is None:
        keras.utils.set_random_seed(cfg.augment.seed)  # the same initial weights whether or not a probe ran
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = build(run_plan.total_steps)
    start = trainer.resume_epoch(run_plan.epochs, cfg.train.early_stopping_patience, state)
    if chief:
        # Epoch 0's draws, also on a resumed run: a resumed stage ends with the files of an uninterrupted one.
        fig = preview_figure(source, [(c, 0, 0) for c in train_ids[: cfg.train.preview_cases]],
                             classes if family.class_targets else None)
        save_figure(fig, out.path / "preview.png")
        ctx.log_artifact(out.path / "preview.png", "augment")
        ctx.log_artifact(out.path / budget.PLAN_FILE, "stage")
    if start is not None:
        train_ds = _train_dataset(cfg, source, train_ids, range(start, run_plan.epochs), run_plan.steps,
                                  (worker, workers) if multi else None, masks)
        fit = dict(steps=run_plan.steps, epochs=run_plan.epochs, start_epoch=start, folder=folder, state=state,
                   class_weight=weights, log_metrics=ctx.log_metrics if chief else (lambda metrics, step: None))
        if multi:
            state = trainer.fit_multi_worker(cfg, strategy, model, train_ds, val_ds, task=task,
                                             n_classes=len(classes), **fit)
        else:
            state = trainer.fit(cfg, model, train_ds, val_ds, **fit)
    if not chief:  # the chief writes the model and the manifest; this worker's part is done
        shutil.rmtree(folder, ignore_errors=True)
        return ShardOutput(out.name, out.path, {"index": worker, "count": workers, "cases": [], "quarantine": [],
                                                "role": "worker", "epochs": len(state["history"])})
    fit_end = time.perf_counter()
    trainer.publish_model(out, state)
    facts = {"classes": classes, "channels": plan["channels"], "input_shape": list(input_shape),
             "preprocess": {k: v for k, v in plan.items() if k not in ("classes", "channels", "task")}}
    inference_plan = family.inference_plan(cfg, facts)
    changes = [precise_bn.recalibration_change(cfg.train, run_plan.epochs, lambda epochs, n: _train_dataset(
        cfg, source, train_ids, epochs, n, None, masks))]
    if family.finishes_training(cfg):  # after PreciseBN: the family reads features with the final statistics
        changes.append(lambda best: family.finish_training(cfg, inference_plan, best, source.store, train_ids))
    changes = [c for c in changes if c is not None]
    finished = trainer.finish_model(out, *changes) if changes else None
    inference_plan.save(out.path, out.write_json)
    out.write_json("train.json", {
        "task": task, "classes": classes, "channels": plan["channels"], "input_shape": list(input_shape),
        "fold": cfg.train.fold, "train_cases": train_ids, "val_cases": val_ids, "plan": plan,
        "model": cfg.model.model_dump(mode="json"), "best_epoch": state["best_epoch"], "monitor": cfg.train.monitor,
        **(finished["record"] if finished else {}),
    })
    return out.finish(cfg, upstream, {
        "cases": {c: {"role": "train"} for c in train_ids} | {c: {"role": "val"} for c in val_ids},
        "quarantine": [],
        "model": "model.keras", "inference_model": "model.keras",
        "artifacts": ["history.csv", "train.json", "plan.json"],
        "figures": {"training_curves.png": "training_curves.png", "augmentation_preview.png": "preview.png"},
        "metrics": {**trainer.training_metrics(state), **trainer.plan_metrics(run_plan, started, fit_end),
                    **(finished["metrics"] if finished else {})},
        "params": run_plan.params(),
    })
