"""Reconstruction train stage: an image-to-image network on FBP inputs (FBPConvNet by default), or a
network on the sinograms themselves (learned primal-dual).

Reads:  simulate (train and validation triples, geometry)
Writes: <workspace>/stages/train_recon/<key>/train_plan.json, ckpt-<epoch>/ + last.json (resume points), best.keras,
        model.keras (FBP image -> image, the best epoch), reconstructor.keras (sinogram -> image: the
        FBP layer of the training geometry, then model.keras; for a sinogram model, model.keras
        itself), plan.json (the inference plan: the geometry), geometry.json, history.csv, train.json,
        then manifest.json (last)

The trainer is the one every task uses (pipelines/trainer.py); only the data differ.
Each epoch's order is a seeded permutation of (seed, epoch), so a resumed run
sees the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import numpy as np

from medflow.core.engine import StageDir, StageFailed
from medflow.data.atomic import write_atomic
from medflow.models.registry import check_model
from medflow.models.runtimes import load_keras


def family_consumes(cfg) -> str:
    """What the configured model reads: "sinogram" (lpd) or "image", the FBP (fbpconvnet, fbpunet)."""
    return check_model(cfg.model.name, cfg.model.params).consumes


def epoch_batches(n: int, batch: int, seed: int, epochs: range, steps: int | None = None):
    """Index batches for ``epochs``: each epoch the first ``steps`` (default: all n // batch) full batches of a
    permutation of range(n) drawn from (seed, epoch)."""
    steps = n // batch if steps is None else steps
    for epoch in epochs:
        order = np.random.default_rng([seed, epoch]).permutation(n)
        for start in range(0, min(n - batch + 1, steps * batch), batch):  # full batches: steady batch norm
            yield order[start:start + batch]


def dihedral_draw(seed: int, epoch: int, batch_index: int, batch: int) -> np.ndarray:
    """(batch,) element of the dihedral group D4 per sample (0-3: rotations, 4-7: then a flip), seeded."""
    return np.random.default_rng([seed, epoch, batch_index, 4]).integers(0, 8, batch)


def dihedral(image: np.ndarray, element: int) -> np.ndarray:
    """Apply D4 ``element`` to a (H, W, ...) array: rot90 ``element % 4`` times, then flip axis 0 if >= 4.

    Flips and quarter turns are symmetries of the measurement: the angle set (k + 1/2) * 180 / A
    maps onto itself (A even), so a turned (FBP, truth) pair is one the scanner could have made, up
    to the half-pixel offset between the array centre and the rotation centre (S // 2), which moves
    the FBP by about a tenth of its own error (tests/pipelines/test_reconstruction.py).
    """
    out = np.rot90(image, element % 4, axes=(0, 1))
    return np.ascontiguousarray(out[::-1] if element >= 4 else out)


def _datasets(inputs, gt, val, batch: int, seed: int, epochs: range, augment: bool, steps: int, name: str,
              remeasure=None):
    """(train, validation) tf.data of (input, truth) batches; ``name`` is the input's key in ``val``: "fbp"
    gives (B, S, S, 1) images, "sinogram" (B, D, A) sinograms (no channel axis, as exported models take).
    ``remeasure(indices, epoch, batch_index)``, if given, makes the batch's inputs from re-measured sinograms."""
    import tensorflow as tf

    channel = (lambda a: a[..., None]) if name == "fbp" else (lambda a: a)  # noqa: E731

    def gen():
        for i, idx in enumerate(epoch_batches(len(inputs), batch, seed, epochs, steps)):
            x = remeasure(idx, epochs.start + i // steps, i % steps) if remeasure else inputs[idx]
            y = gt[idx]
            if augment:
                draw = dihedral_draw(seed, epochs.start + i // steps, i % steps, batch)
                x = np.stack([dihedral(a, e) for a, e in zip(x, draw)])
                y = np.stack([dihedral(a, e) for a, e in zip(y, draw)])
            yield channel(x), y[..., None]

    size = gt.shape[1]
    x_spec = tf.TensorSpec((batch, *channel(inputs[:1]).shape[1:]), tf.float32)
    spec = tf.TensorSpec((batch, size, size, 1), tf.float32)
    train = tf.data.Dataset.from_generator(gen, output_signature=(x_spec, spec)).prefetch(2)
    val_ds = tf.data.Dataset.from_tensor_slices((channel(val[name]), val["gt"][..., None])).batch(batch).cache()
    return train, val_ds


def remeasurer(cfg, sinograms: np.ndarray, geometry: dict, name: str):
    """``train.measurement_augment``: (indices, epoch, batch_index) -> the batch's inputs, each sinogram
    re-measured by a seeded draw (data/ct/measurement.py), then its FBP for an image model."""
    from medflow.data.ct.measurement import draw_measurement, perturb_sinogram
    from medflow.data.ct.physics import fbp_geometry

    tc, seed = cfg.train, cfg.simulate.seed

    def remeasure(indices, epoch: int, batch_index: int) -> np.ndarray:
        out = []
        for j, i in enumerate(indices):
            draw = draw_measurement(np.random.default_rng([seed, epoch, batch_index, 6, j]),
                                    tc.augment_detector_px, tc.augment_noise_max)
            sino = perturb_sinogram(sinograms[i], draw, cfg.simulate.noise)
            out.append(sino if name == "sinogram" else fbp_geometry(sino, geometry))
        return np.stack(out)

    return remeasure


def sinogram_facts(geometry: dict) -> dict:
    """Builder parameters of a sinogram-input model: the geometry and ||A|| (power iteration, once)."""
    from medflow.data.ct.projector import operator_norm, ray_transform

    matrix = ray_transform(geometry["image_size"], tuple(geometry["angles_deg"]), geometry["detectors"])
    return {"geometry": geometry, "opnorm": operator_norm(matrix)}


def run(cfg, upstream, out: StageDir, ctx):
    """Train (or resume training) the configured reconstruction model."""
    import time

    import keras

    from medflow.data.ct.ellipses import load_split
    from medflow.models.reconstruction import sinogram_model
    from medflow.tasks import task_for
    from medflow.training import budget, precise_bn, trainer

    started = time.perf_counter()  # a budget counts from here
    sim = upstream["simulate"]
    task = cfg.model.family
    family = task_for(task, cfg.model.name)
    if family.trained_by != out.name:  # this stage trains on simulated (sinogram, FBP, truth) triples
        raise StageFailed(f"model {cfg.model.name!r} is a {task} model; train_recon needs a reconstruction model")
    data = sim.file(sim.manifest["data"])
    geometry = sim.manifest["geometry"]
    name = "sinogram" if family_consumes(cfg) == "sinogram" else "fbp"
    if name == "sinogram" and cfg.train.dihedral_augment:
        raise StageFailed(f"train.dihedral_augment: {cfg.model.name} reads sinograms, and a quarter turn about the "
                          "rotation centre (pixel S // 2) is not one of the even grid's; set it false")
    augment_measurement = cfg.train.measurement_augment
    extra = ("sinogram",) if augment_measurement and name != "sinogram" else ()
    train = load_split(data, "train", names=(name, "gt", *extra))
    val = load_split(data, "validation", names=(name, "gt"))
    batch = cfg.loader.batch_size
    if len(train[name]) < batch:
        raise StageFailed(f"{data}: {len(train[name])} training images, fewer than one batch of {batch}")
    out.prepare()
    size = train["gt"].shape[1]
    natural = len(train[name]) // batch
    model, state = trainer.load_resume(out.path)
    shape, facts = ((size, size, 1), None) if name == "fbp" else (train[name].shape[1:], sinogram_facts(geometry))
    build = lambda total: trainer.compile_model(cfg, shape, 1, task, total, facts)  # noqa: E731
    remeasure = remeasurer(cfg, train["sinogram"], geometry, name) if augment_measurement else None
    data = lambda epochs, steps: _datasets(train[name], train["gt"], val, batch, cfg.simulate.seed,  # noqa: E731
                                           epochs, cfg.train.dihedral_augment, steps, name, remeasure)
    _, val_ds = data(range(0), natural)

    def probe():
        return budget.run_probe(build(1), lambda: iter(data(budget.probe_epochs(natural), natural)[0]), val_ds)

    try:
        run_plan = budget.resolve_plan(cfg.train, out.path, natural, started, probe)
    except budget.BudgetTooSmall as err:
        raise StageFailed(str(err)) from None
    print(f"[train_recon] {budget.describe(run_plan)}", flush=True)
    ctx.log_artifact(out.path / budget.PLAN_FILE, "stage")
    if model is None:
        keras.utils.set_random_seed(cfg.simulate.seed)
        model = build(run_plan.total_steps)
    start = trainer.resume_epoch(run_plan.epochs, cfg.train.early_stopping_patience, state)
    if start is not None:
        train_ds, _ = data(range(start, run_plan.epochs), run_plan.steps)
        state = trainer.fit(cfg, model, train_ds, val_ds, steps=run_plan.steps, epochs=run_plan.epochs,
                            start_epoch=start, folder=out.path, state=state, log_metrics=ctx.log_metrics)
    fit_end = time.perf_counter()
    trainer.publish_model(out, state)
    precise = precise_bn.recalibration_change(cfg.train, run_plan.epochs, lambda epochs, n: data(epochs, n)[0])
    finished = trainer.finish_model(out, precise, stage=out.name) if precise else None
    net = load_keras(out.path / "model.keras")
    with write_atomic(out.path / "reconstructor.keras", suffix=".keras") as tmp:
        (net if name == "sinogram" else sinogram_model(net, geometry)).save(tmp)
    out.write_json("geometry.json", geometry)
    # The plan says what the exported model reads, for its card: a sinogram model has no FBP in its graph.
    family.inference_plan(cfg, {"geometry": {**geometry, "model_reads": name}}).save(out.path, out.write_json)
    out.write_json("train.json", {
        "task": task, "input_shape": list(shape), "geometry": geometry, "consumes": name,
        "model": cfg.model.model_dump(mode="json"),
        "train_images": len(train[name]), "val_images": len(val[name]), "best_epoch": state["best_epoch"],
        "monitor": cfg.train.monitor, **(finished["record"] if finished else {}),
    })
    return out.finish(cfg, upstream, {
        "cases": {}, "quarantine": [], "model": "model.keras", "reconstructor": "reconstructor.keras",
        "inference_model": "reconstructor.keras",
        "artifacts": ["history.csv", "train.json", "geometry.json", "plan.json"],
        "figures": {"training_curves.png": "training_curves.png"},
        "metrics": {**trainer.training_metrics(state), **trainer.plan_metrics(run_plan, started, fit_end),
                    **(finished["metrics"] if finished else {})},
        "params": run_plan.params(),
    })
