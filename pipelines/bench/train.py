"""``medflow bench train``: training throughput of a model beside the machine's float32 matmul rate.

The model's arithmetic rate is its training FLOPs per sample times samples/s.
FLOPs are counted from the layers (2 per multiply-add in convolutions, transposed
convolutions and dense layers; a training step is counted as 3x the forward
pass: forward, gradient to the inputs, gradient to the weights). Normalization,
activations and the loss are not counted, so the figure is a lower bound on the
work done. The matmul reference runs in the same process, on the same threads.
Synthetic batches are used: input cost is measured by ``medflow bench augment``.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Median float32 GFLOP/s of an n x n matrix product (TensorFlow, default threads)."""
    import tensorflow as tf

    a = tf.random.uniform((n, n), dtype=tf.float32)
    b = tf.random.uniform((n, n), dtype=tf.float32)
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.linalg.matmul(x, y)))
    mm(a, b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e9


def forward_flops(model) -> float:
    """Multiply-add FLOPs (x2) of one sample's forward pass through conv, transposed-conv and dense layers."""
    from keras import layers

    total = 0.0
    for layer in leaf_layers(model):
        if isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)):
            kernel = np.prod(layer.kernel.shape)  # (*k, out, in)
            total += 2.0 * np.prod(layer.input.shape[1:-1]) * kernel
        elif isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
            kernel = np.prod(layer.kernel.shape)  # (*k, in, out)
            total += 2.0 * np.prod(layer.output.shape[1:-1]) * kernel
        elif isinstance(layer, layers.Dense):
            total += 2.0 * np.prod(layer.kernel.shape) * np.prod(layer.input.shape[1:-1] or (1,))
    return float(total)


def leaf_layers(model):
    """The model's layers with nested models unpacked, in order."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from leaf_layers(layer)
        else:
            yield layer


def synthetic_batches(batch: int, input_shape, n_classes: int, task: str):
    """One fixed random (image, label) batch, repeated: (B, *S, C) float32 and (B, *S) or (B,) int32."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    from medflow.tasks import TASKS

    shape = (batch, *input_shape[:-1]) if TASKS[task].voxel_targets else (batch,)
    y = rng.integers(0, n_classes, shape).astype(np.int32)
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def _step_timer(seconds: list):
    import keras

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    return StepTimer()


def step_rounds(entries, steps: int = 5, repeats: int = 3) -> list[list[float]]:
    """Per-round median seconds per training step of each (model, dataset), the models taking turns.

    Steps are timed one by one inside ``fit`` (batch begin to batch end), so the
    call's own setup and teardown do not count: tearing down a fit's dataset
    iterator sometimes takes seconds, which per-call timing wrongly spread over the steps.
    With several models, each round times ``steps`` steps of each in turn, so
    drift of a shared or throttled machine reaches all of them alike.

    Returns:
        ``repeats`` lists of one median per entry.
    """
    for model, ds in entries:  # tracing, oneDNN primitive caches
        model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    rounds = []
    for _ in range(repeats):
        medians = []
        for model, ds in entries:
            seconds = []
            model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[_step_timer(seconds)])
            medians.append(float(np.median(seconds)))
        rounds.append(medians)
    return rounds


def _setup(model_name: str, pipeline, profiles, sets, batch: int | None):
    """(cfg, task, batch, n_classes, input_shape, compiled model) for ``model_name`` under the overrides."""
    from medflow.core.loading import load_config, packaged_config
    from medflow.models.registry import check_model
    from medflow.training import trainer

    profiles, sets = list(profiles), list(sets)
    task = check_model(model_name, {}).task
    if pipeline is None:  # the family's shipped pipeline (they are named after the families)
        pipeline = packaged_config(task)
        if model_name == "unet3d" and not profiles:
            profiles = ["3d"]
    base = load_config(pipeline, sets, profile=profiles)
    if base.model.name != model_name:  # another model: its parameters from compare.models, else its defaults
        params = next((m.params for m in base.compare.models if m.name == model_name), {})
        sets = [f"model.params={json.dumps(params)}", *sets]
    cfg = load_config(pipeline, [*sets, f"model.name={model_name}"], profile=profiles)
    batch = batch or cfg.loader.batch_size
    from medflow.data.sample.build import TISSUE_CLASSES

    n_classes = len(cfg.dataset.classes) if cfg.dataset and cfg.dataset.classes else len(TISSUE_CLASSES)
    input_shape = (*cfg.loader.patch_size, 1)
    return cfg, task, batch, n_classes, input_shape, trainer.compile_model(cfg, input_shape, n_classes, task, 1000)


def bench_train(model_name: str = "unet2d", pipeline: str | None = None, profiles=(), sets=(),
                batch: int | None = None, steps: int = 5, trace: bool = False, versus=(), repeats: int = 3) -> dict:
    """Print train samples/s and model GFLOP/s of ``model_name`` beside the matmul GFLOP/s; return them.

    With ``trace``, a few more steps run under the TensorFlow profiler and the
    step's kernel time is printed by phase, layer type and op (pipelines/bench_trace.py).
    With ``versus`` (config overrides, e.g. ``["loader.batch_size=32"]``), a second
    model built with them takes turns with the first, round by round, and the
    paired ratio of samples/s is printed: the way to tell a 5 % change from noise.
    """
    cfg, task, batch_a, n_classes, input_shape, model = _setup(model_name, pipeline, profiles, sets, batch)
    entries = [(model, synthetic_batches(batch_a, input_shape, n_classes, task))]
    if versus:
        cfg_b, _, batch_b, _, shape_b, model_b = _setup(model_name, pipeline, profiles, [*sets, *versus], batch)
        entries.append((model_b, synthetic_batches(batch_b, shape_b, n_classes, task)))
    fwd = forward_flops(model)
    matmul = matmul_gflops()
    rounds = step_rounds(entries, steps=steps, repeats=repeats)
    matmul_after = matmul_gflops()  # the machine may drift (thermal, neighbours): bracket the run
    step_s = float(np.median([r[0] for r in rounds]))
    rate = batch_a / step_s
    model_gflops = 3 * fwd * rate / 1e9
    reference = float(np.median([matmul, matmul_after]))
    params = ", ".join(f"{k}={v}" for k, v in cfg.model.params.items())
    print(f"\nmedflow bench train: {model_name} ({params}), input {'x'.join(map(str, input_shape[:-1]))}, "
          f"batch {batch_a} ({platform.machine()}, {os.cpu_count()} cores, float32)")
    print(f"  forward pass: {fwd / 1e9:.2f} GFLOP/sample, training step counted as 3x forward")
    print(f"  train: {step_s:.3f} s/step, {rate:.2f} samples/s -> model {model_gflops:.1f} GFLOP/s")
    print(f"  float32 matmul 2048x2048 in the same run: {reference:.1f} GFLOP/s "
          f"(before {matmul:.1f}, after {matmul_after:.1f})")
    print(f"  the training step runs at {model_gflops / reference:.0%} of the matmul rate"
          f" (TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})")
    result = {"model": model_name, "batch": batch_a, "step_s": step_s, "samples_per_s": rate,
              "model_gflops": model_gflops, "matmul_gflops": reference}
    if versus:
        ratios = [(batch_a / a) / (batch_b / b) for a, b in rounds]  # >1: this config trains more samples/s
        step_b = float(np.median([r[1] for r in rounds]))
        result["versus"] = {"sets": list(versus), "batch": batch_b, "step_s": step_b,
                            "samples_per_s": batch_b / step_b, "ratio": float(np.median(ratios)),
                            "ratios": ratios}
        print(f"  versus {' '.join(versus)}: {step_b:.3f} s/step, {batch_b / step_b:.2f} samples/s (batch {batch_b})")
        print(f"  this config / versus: {np.median(ratios):.2f}x the samples/s (median of {len(ratios)} paired "
              f"rounds, range {min(ratios):.2f}-{max(ratios):.2f}x)")
    if trace:
        from medflow.bench.trace import print_trace, trace_fit

        result["trace"] = trace_fit(model, entries[0][1])
        print_trace(result["trace"])
    return result
