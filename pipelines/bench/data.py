"""``medflow bench ingest``: ingest + preprocess throughput beside the raw decode rate.

Both figures are measured in the same run, on the same files, with the same
number of worker processes, so the ratio says how much of the pipeline's time
is decoding and how much is our own work (validation, reorientation,
resampling, normalization, writing).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
import platform
import tempfile
import time
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from medflow.core.workspace import sample_root


@contextmanager
def fresh_workspace(prefix: str = "medflow-bench-"):
    """A temporary ``MEDFLOW_WORKSPACE`` for the block: fresh stage folders, so nothing is reused."""
    old = os.environ.get("MEDFLOW_WORKSPACE")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.environ["MEDFLOW_WORKSPACE"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("MEDFLOW_WORKSPACE", None)
            else:
                os.environ["MEDFLOW_WORKSPACE"] = old


def _decode(path: str) -> int:
    import nibabel as nib

    return int(np.asarray(nib.load(path).get_fdata(dtype=np.float32)).nbytes)


def _raw_decode(files: list[str], workers: int) -> tuple[float, int]:
    from medflow.data.workers import process_context

    with ProcessPoolExecutor(workers, mp_context=process_context()) as pool:
        # Workers up before the clock starts: the forkserver's first start (it preloads the case readers,
        # about a second) is no part of the decode rate that medflow is held against.
        list(pool.map(time.sleep, [0.05] * workers))
        start = time.perf_counter()
        nbytes = sum(pool.map(_decode, files, chunksize=1))
        seconds = time.perf_counter() - start
    return seconds, nbytes


def bench_ingest(size: str = "demo", workers: int = 0, seed: int = 0) -> dict:
    from medflow.core.loading import load_config, packaged_config
    from medflow.core.progress import Progress
    from medflow.core.runner import run_pipeline
    from medflow.data.sample.build import SIZES, build_tissue

    workers = workers or os.cpu_count() or 1
    root = sample_root(size)
    with Progress(SIZES[size]["brain_tissue"], "bench: sample data", unit="subject") as bar:
        data_dir = build_tissue(root, size=size, seed=seed, workers=workers, progress=bar)
    cases = sorted((data_dir / "imagesTr").glob("*.nii.gz"))
    files = [str(p) for c in cases for p in (c, data_dir / "labelsTr" / c.name)]
    disk_mb = sum(os.path.getsize(f) for f in files) / 1e6

    raw_s, raw_bytes = _raw_decode(files, workers)
    cfg = load_config(packaged_config("segmentation"), [f"dataset.root={data_dir}"])
    with fresh_workspace():
        start = time.perf_counter()
        results, _ = run_pipeline(cfg, target="preprocess", workers=workers)
        pipe_s = time.perf_counter() - start
    n = len(cases)
    print(f"\nmedflow bench ingest: {n} volumes + {n} label maps of the {size} brain-tissue set, "
          f"{disk_mb:.1f} MB on disk (.nii.gz), {raw_bytes / 1e6:.1f} MB decoded (float32)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; workers: {workers}")
    print(f"  {'':<28} {'seconds':>8} {'volumes/s':>10} {'MB/s disk':>10} {'MB/s decoded':>13}")
    for name, sec in (("raw decode (nibabel load)", raw_s), ("ingest + preprocess", pipe_s)):
        print(f"  {name:<28} {sec:>8.2f} {n / sec:>10.2f} {disk_mb / sec:>10.1f} {raw_bytes / 1e6 / sec:>13.1f}")
    print(f"  ingest + preprocess runs at {raw_s / pipe_s:.0%} of the raw decode rate "
          f"({', '.join(f'{r.name} {r.seconds:.1f}s' for r in results)})")
    return {"volumes": n, "workers": workers, "pipeline_volumes_per_s": n / pipe_s, "raw_decode_volumes_per_s": n / raw_s,
            "pipeline_mb_per_s": raw_bytes / 1e6 / pipe_s, "raw_decode_mb_per_s": raw_bytes / 1e6 / raw_s}


def _ensure_preprocessed(cfg, size: str, seed: int):
    """Sample data + ingest/preprocess of ``cfg`` (reused when already done); returns the preprocess output."""
    from medflow.core.progress import Progress
    from medflow.core.runner import run_pipeline
    from medflow.data.sample.build import SIZES, build_tissue

    with Progress(SIZES[size]["brain_tissue"], "bench: sample data", unit="subject") as bar:
        build_tissue(sample_root(size), size=size, seed=seed, workers=os.cpu_count() or 1, progress=bar)
    run_pipeline(cfg, target="preprocess")
    from medflow.core.runner import finished_output

    return finished_output(cfg, "preprocess")


def _rate(source, ids, n: int, batch: int) -> tuple[float, float]:
    """(tf.data samples/s, eager single-thread samples/s) over about ``n`` samples."""
    from medflow.data.loader import make_dataset

    epochs = range(max(1, -(-n // (len(ids) * source.samples_per_case))))
    ds = make_dataset(source, ids, epochs, batch_size=batch)
    it = iter(ds)
    next(it)  # warm-up: thread pools, first reads
    start, count = time.perf_counter(), 0
    for x, _ in it:
        count += int(x.shape[0])
        if count >= n:
            break
    parallel = count / (time.perf_counter() - start)
    plan = [(cid, 0, k) for cid, k in source.plan(ids, 0)][: max(4, n // 8)]
    start = time.perf_counter()
    for cid, e, k in plan:
        source.sample(cid, e, k)
    return parallel, len(plan) / (time.perf_counter() - start)


def bench_augment(size: str = "demo", seed: int = 0) -> dict:
    """Samples/s of the default augmentation chains: 2D 256x256 slices and 3D 96^3 patches."""
    from medflow.core.loading import load_config, packaged_config
    from medflow.training.inputs import build_source

    path = packaged_config("segmentation")
    root = f"dataset.root={sample_root(size) / 'brain_tissue'}"
    # First, while no other input pipeline's threads are alive in this process.
    wait = _input_wait(load_config(path, [root]), size, seed)
    rows = []
    for label, profiles, sets, n in (
        ("2D 256x256 slices", [], ["loader.patch_size=[256,256]"], 256),
        ("3D 96^3 patches", ["3d"], [], 24),
    ):
        cfg = load_config(path, [root, *sets], profile=profiles)
        pre = _ensure_preprocessed(cfg, size, seed)
        source = build_source(cfg, pre, cache="memory")
        ids = sorted(pre.cases)
        chain = ", ".join(t["name"] for t in cfg.augment.transforms)
        parallel, eager = _rate(source, ids, n, cfg.loader.batch_size)
        rows.append((label, parallel, eager, chain))
    print(f"\nmedflow bench augment: default chains of pipelines/configs/segmentation.yaml on the {size} "
          f"brain-tissue set ({platform.machine()}, {os.cpu_count()} cores)")
    print(f"  {'':<20} {'tf.data samples/s':>18} {'eager 1-thread samples/s':>25}  chain")
    for label, parallel, eager, chain in rows:
        print(f"  {label:<20} {parallel:>18.1f} {eager:>25.1f}  {chain}")
    print(f"  training step with the default segmentation config ({wait['model']}, batch {wait['batch']}, "
          f"patch {wait['patch']}): {wait['step_s']:.3f} s/step, of which {wait['wait_s']:.4f} s waiting for "
          f"the next batch -> {wait['fraction']:.1%} of each step waits on input")
    return {**{f"{label.split()[0]}_{kind}_samples_per_s": v for label, par, eager, _ in rows
               for kind, v in (("tfdata", par), ("eager", eager))},
            "input_wait_fraction": wait["fraction"], "train_step_s": wait["step_s"]}


def _input_wait(cfg, size: str, seed: int, steps: int = 6) -> dict:
    """Fraction of each training step spent waiting for the next batch, measured at the call that waits.

    Each step is timed in two parts: fetching the next batch from the prefetching
    tf.data pipeline, and the train step on it. With enough input throughput
    the batch is ready before the step ends and the fetch costs next to nothing.
    """
    import json

    from medflow.data.loader import make_dataset
    from medflow.training import trainer
    from medflow.training.inputs import build_source

    pre = _ensure_preprocessed(cfg, size, seed)
    ids = sorted(pre.cases)
    plan = json.loads(pre.file("plan.json").read_text())
    source = build_source(cfg, pre, ids, cache="memory")
    batch = cfg.loader.batch_size
    shape = (*cfg.loader.patch_size, len(plan["channels"]))
    model = trainer.compile_model(cfg, shape, len(plan["classes"]), plan["task"], 1000)
    warm = 3  # tracing, oneDNN primitives, thread pools, the in-memory case cache
    it = iter(make_dataset(source, ids, range(1), batch_size=batch, samples_per_epoch=(warm + steps) * batch))
    for _ in range(warm):
        model.train_on_batch(*next(it))
    wait = total = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = next(it)
        t1 = time.perf_counter()
        model.train_on_batch(x, y)
        wait, total = wait + t1 - t0, total + time.perf_counter() - t0
    return {"model": cfg.model.name, "batch": batch, "patch": "x".join(map(str, cfg.loader.patch_size)),
            "step_s": total / steps, "wait_s": wait / steps, "fraction": wait / total}
