"""``medflow bench ingest``: ingest + preprocess throughput beside the raw decode rate.

Both figures are measured in the same run, on the same files, with the same
number of worker processes, so the ratio says how much of the pipeline's time
is decoding and how much is our own work (validation, reorientation,
resampling, normalization, writing).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor


import numpy as np

from pipelines.workspace import project_root, sample_root


def _decode(path: str) -> int:
    import nibabel as nib

    return int(np.asarray(nib.load(path).get_fdata(dtype=np.float32)).nbytes)


def _raw_decode(files: list[str], workers: int) -> tuple[float, int]:
    import multiprocessing as mp

    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
        nbytes = sum(pool.map(_decode, files, chunksize=1))
    return time.perf_counter() - start, nbytes


def bench_ingest(size: str = "demo", workers: int = 0, seed: int = 0) -> int:
    from data.sample.build import SIZES, build_tissue
    from pipelines.config import load_config
    from pipelines.progress import Progress
    from pipelines.runner import run_pipeline

    workers = workers or os.cpu_count() or 1
    root = sample_root(size)
    with Progress(SIZES[size]["brain_tissue"], "bench: sample data", unit="subject") as bar:
        data_dir = build_tissue(root, size=size, seed=seed, workers=workers, progress=bar)
    cases = sorted((data_dir / "imagesTr").glob("*.nii.gz"))
    files = [str(p) for c in cases for p in (c, data_dir / "labelsTr" / c.name)]
    disk_mb = sum(os.path.getsize(f) for f in files) / 1e6

    raw_s, raw_bytes = _raw_decode(files, workers)
    cfg = load_config(project_root() / "pipelines/configs/segmentation.yaml", [f"dataset.root={data_dir}"])
    old = os.environ.get("MEDFLOW_WORKSPACE")
    with tempfile.TemporaryDirectory(prefix="medflow-bench-") as tmp:
        os.environ["MEDFLOW_WORKSPACE"] = tmp  # fresh stage folders: nothing is skipped
        try:
            start = time.perf_counter()
            results, _ = run_pipeline(cfg, target="preprocess", workers=workers)
            pipe_s = time.perf_counter() - start
        finally:
            if old is None:
                os.environ.pop("MEDFLOW_WORKSPACE", None)
            else:
                os.environ["MEDFLOW_WORKSPACE"] = old
    n = len(cases)
    print(f"\nmedflow bench ingest: {n} volumes + {n} label maps of the {size} brain-tissue set, "
          f"{disk_mb:.1f} MB on disk (.nii.gz), {raw_bytes / 1e6:.1f} MB decoded (float32)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; workers: {workers}")
    print(f"  {'':<28} {'seconds':>8} {'volumes/s':>10} {'MB/s disk':>10} {'MB/s decoded':>13}")
    for name, sec in (("raw decode (nibabel load)", raw_s), ("ingest + preprocess", pipe_s)):
        print(f"  {name:<28} {sec:>8.2f} {n / sec:>10.2f} {disk_mb / sec:>10.1f} {raw_bytes / 1e6 / sec:>13.1f}")
    print(f"  ingest + preprocess runs at {raw_s / pipe_s:.0%} of the raw decode rate "
          f"({', '.join(f'{r.name} {r.seconds:.1f}s' for r in results)})")
    return 0



