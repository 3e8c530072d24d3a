"""``medflow bench scale``: ingest + preprocess throughput, local process pools beside Ray, in one run;
then training samples per second under ``train.distribute: ray`` beside ``multi_worker``.

The same sample set goes through the ingest and preprocess stages four times, each
into a fresh workspace so nothing is reused: local with 1 and 2 processes, then
Ray (a local instance, loopback only) with 1 and 2 workers. Ray's start-up is
timed apart from the stages; its overhead per case is its stage time minus the
local pool's at the same width, over the cases.

Training: the demo segmentation model (2D U-Net, 128^2, batch 16) for a fixed
number of epochs on the demo set: ``multi_worker`` in this process (one worker,
no TF_CONFIG), and Ray Train with 1 and 2 workers. Samples/s are the samples
trained over the train stage's wall time, start-up included, so Ray's start-up
shows in the figure.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _stages(cfg, executor: str, workers: int) -> float:
    from medflow.bench.data import fresh_workspace
    from medflow.core.runner import run_pipeline

    with fresh_workspace("medflow-bench-scale-"):
        start = time.perf_counter()
        run_pipeline(cfg, target="preprocess", workers=workers, executor=executor)
        return time.perf_counter() - start


def bench_scale(size: str = "full", seed: int = 0) -> dict:
    from medflow.bench.suite import machine
    from medflow.core.loading import load_config, packaged_config
    from medflow.core.progress import Progress
    from medflow.core.ray_exec import connect, require_ray
    from medflow.core.workspace import sample_root
    from medflow.data.sample.build import SIZES, build_tissue

    ray = require_ray()
    info = machine()
    with Progress(SIZES[size]["brain_tissue"], "bench: sample data", unit="subject") as bar:
        data_dir = build_tissue(sample_root(size), size=size, seed=seed, workers=os.cpu_count() or 1, progress=bar)
    cfg = load_config(packaged_config("segmentation"), [f"dataset.root={data_dir}"])
    n = SIZES[size]["brain_tissue"]
    rows = []
    for workers in (1, 2):
        rows.append(("local", workers, 0.0, _stages(cfg, "local", workers)))
    for workers in (1, 2):
        ray.shutdown()
        start = time.perf_counter()
        connect(num_cpus=workers)
        startup = time.perf_counter() - start
        rows.append(("ray", workers, startup, _stages(cfg, "ray", workers)))
    ray.shutdown()
    trained = _training(seed)
    local = {w: s for kind, w, _, s in rows if kind == "local"}
    print(f"\nmedflow bench scale: ingest + preprocess of the {size} brain-tissue set ({n} cases, image + label), "
          f"fresh stage folders each time")
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; Python {info['python']}")
    print(f"  {'executor':<8} {'workers':>7} {'start-up s':>10} {'stages s':>9} {'cases/s':>8} "
          f"{'overhead ms/case':>17}")
    out = []
    for kind, workers, startup, sec in rows:
        over = (sec - local[workers]) / n * 1000 if kind == "ray" else 0.0
        print(f"  {kind:<8} {workers:>7} {startup:>10.1f} {sec:>9.1f} {n / sec:>8.2f} "
              f"{(f'{over:+.0f}' if kind == 'ray' else '-'):>17}")
        out.append({"executor": kind, "workers": workers, "startup_s": startup, "stages_s": sec,
                    "cases_per_s": n / sec, "overhead_ms_per_case": over})
    print(f"\n  training: the demo 2D U-Net (128^2, batch 16), {TRAIN_EPOCHS} epochs of the demo set; samples/s over "
          f"the train stage's wall time")
    print(f"  {'distribute':<12} {'workers':>7} {'samples':>8} {'train s':>8} {'samples/s':>10}")
    for kind, workers, samples, sec in trained:
        print(f"  {kind:<12} {workers:>7} {samples:>8} {sec:>8.1f} {samples / sec:>10.1f}")
    return {"cases": n, "rows": out, "training": [{"distribute": k, "workers": w, "samples": s, "seconds": t}
                                                  for k, w, s, t in trained]}


TRAIN_EPOCHS = 3


def _training(seed: int) -> list[tuple]:
    """(distribute, workers, samples, train stage seconds) for multi_worker (1) and ray (1, 2)."""
    import json

    from medflow.bench.data import fresh_workspace
    from medflow.core.loading import load_config, packaged_config
    from medflow.core.progress import Progress
    from medflow.core.runner import run_pipeline
    from medflow.core.workspace import sample_root
    from medflow.data.sample.build import SIZES, build_tissue

    with Progress(SIZES["demo"]["brain_tissue"], "bench: demo sample data", unit="subject") as bar:
        data_dir = build_tissue(sample_root("demo"), size="demo", seed=seed, workers=os.cpu_count() or 1,
                                progress=bar)
    common = [f"dataset.root={data_dir}", "train.budget=null", f"train.epochs={TRAIN_EPOCHS}",
              "train.early_stopping_patience=0"]
    rows = []
    with fresh_workspace("medflow-bench-train-"):
        for kind, workers in (("multi_worker", 1), ("ray", 1), ("ray", 2)):
            cfg = load_config(packaged_config("segmentation"), common + [f"train.distribute={kind}",
                                                                         f"train.workers={workers}"], ["demo"])
            run_pipeline(cfg, target="split")
            start = time.perf_counter()
            results, _ = run_pipeline(cfg, target="train")
            sec = time.perf_counter() - start
            plan = json.loads((Path(results[-1].path) / "train_plan.json").read_text())
            rows.append((kind, workers, plan["epochs"] * plan["steps"] * cfg.loader.batch_size, sec))
    return rows
