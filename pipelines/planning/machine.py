"""The machine the plan is made for: cores, memory and measured U-Net training rates.

Machines of one kind differ 3-4x in training speed (AVX-512 or not), so the rate is measured, not
looked up: a small 2D and a small 3D U-Net train on random batches for a few seconds each, and the
rate is their FLOPs per second (three forward passes a training step).
"""

from __future__ import annotations

import os
import time

from medflow.planning.rules import TRAIN_FLOPS, Machine, unet_flops

PROBES = {"2d": ((96, 96), 3, 16, 8), "3d": ((32, 32, 32), 2, 8, 2)}  # shape, depth, filters, batch


def _rate(shape, depth, filters, batch, seconds: float) -> float:
    import keras
    import numpy as np

    from medflow.models.registry import build_model

    name = "unet2d" if len(shape) == 2 else "unet3d"
    model = build_model(name, (*shape, 1), 3, {"depth": depth, "filters": filters, "norm": "batch"})
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape, 1)).astype("float32")
    y = rng.integers(0, 3, (batch, *shape)).astype("int32")
    model.train_on_batch(x, y)  # tracing
    model.train_on_batch(x, y)
    steps = []  # the fastest of three windows: a neighbour or a clock change only ever slows a window
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - start < seconds / 3:
            model.train_on_batch(x, y)
            n += 1
        steps.append((time.perf_counter() - start) / n)
    step = min(steps)
    return TRAIN_FLOPS * unet_flops(shape, depth, filters) * batch / step / 1e9


def memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 8.0


def measure(seconds: float = 3.0) -> Machine:
    """This machine, with its 2D and 3D U-Net training rates measured for ``seconds`` each."""
    return Machine(cores=os.cpu_count() or 1, memory_gib=round(memory_gib(), 1),
                   gflops_2d=round(_rate(*PROBES["2d"], seconds), 2), gflops_3d=round(_rate(*PROBES["3d"], seconds), 2))
