"""``medflow bench suite``: every benchmark, several times, medians with their same-run references.

Each benchmark (ingest, augment, train, infer) runs ``repeats`` times and every
figure is reported as the median with its range. Each comes with what it should
be read against, measured in the same run: ingest against the raw nibabel
decode rate, training against the float32 matmul GFLOP/s, and all of them
against the machine description. The suite writes ``bench.json`` (everything,
every repeat) and ``bench.md`` (the table) to ``<workspace>/bench/<time>/``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from medflow.core.workspace import workspace_root

# (benchmark, figure, unit, reference figure or None, what the reference is)
ROWS = [
    ("ingest", "pipeline_volumes_per_s", "volumes/s", "raw_decode_volumes_per_s", "raw nibabel decode, volumes/s"),
    ("augment", "2D_tfdata_samples_per_s", "2D slices/s", "2D_eager_samples_per_s", "eager, 1 thread"),
    ("augment", "3D_tfdata_samples_per_s", "3D patches/s", "3D_eager_samples_per_s", "eager, 1 thread"),
    ("augment", "input_wait_fraction", "of a U-Net step", None, ""),
    ("train", "samples_per_s", "unet2d samples/s", None, ""),
    ("train", "model_gflops", "unet2d GFLOP/s", "matmul_gflops", "float32 matmul GFLOP/s"),
    ("train", "cnn_samples_per_s", "3D CNN samples/s", None, ""),
    ("train", "cnn_model_gflops", "3D CNN GFLOP/s", "cnn_matmul_gflops", "float32 matmul GFLOP/s"),
    ("infer", "volume_s_keras", "s/volume, Keras", None, ""),
    ("infer", "volume_s_saved_model", "s/volume, SavedModel", None, ""),
    ("infer", "volume_s_onnx", "s/volume, ONNX Runtime", None, ""),
    ("infer", "sinogram_ms_keras", "ms/sinogram, Keras", None, ""),
    ("infer", "sinogram_ms_onnx", "ms/sinogram, ONNX Runtime", None, ""),
]


def machine() -> dict:
    """What the figures were measured on."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "os": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")}


def _train() -> dict:
    """The default U-Net's and the default classifier's (3D CNN) training figures, the CNN's keys prefixed."""
    from medflow.bench.train import bench_train

    cnn = bench_train("cnn")
    return {**bench_train("unet2d"), **{f"cnn_{k}": v for k, v in cnn.items()}}


def _runs(repeats: int, size: str) -> dict[str, list[dict]]:
    from medflow.bench.data import bench_augment, bench_ingest
    from medflow.bench.infer import bench_infer

    jobs = {"ingest": lambda: bench_ingest(size=size), "augment": lambda: bench_augment(size=size),
            "train": _train, "infer": lambda: bench_infer(repeats=1)}
    return {name: [job() for _ in range(repeats)] for name, job in jobs.items()}


def summarize(runs: dict[str, list[dict]]) -> list[dict]:
    """One row per figure: median and range over the repeats, and the reference's median."""
    rows = []
    for bench, key, unit, ref, ref_name in ROWS:
        values = [r[key] for r in runs.get(bench, []) if key in r]
        if not values:
            continue
        row = {"benchmark": bench, "figure": key, "unit": unit, "median": statistics.median(values),
               "min": min(values), "max": max(values), "repeats": len(values)}
        if ref:
            refs = [r[ref] for r in runs[bench] if key in r]
            row.update(reference=ref_name, reference_median=statistics.median(refs))
        rows.append(row)
    return rows


def markdown(rows: list[dict], info: dict) -> str:
    def fmt(v, percent=False):
        return f"{v:.2%}" if percent else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"

    lines = [f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; {info['os']}; "
             f"Python {info['python']}, TensorFlow {info['tensorflow']}, oneDNN {info['onednn']}", "",
             "| benchmark | figure | median | range | reference (same run) |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        pct = r["figure"].endswith("fraction")
        ref = f"{fmt(r['reference_median'])} {r['reference']}" if "reference" in r else "-"
        lines.append(f"| {r['benchmark']} | {r['unit']} | {fmt(r['median'], pct)} | "
                     f"{fmt(r['min'], pct)}–{fmt(r['max'], pct)} (n={r['repeats']}) | {ref} |")
    return "\n".join(lines) + "\n"


def bench_suite(repeats: int = 3, size: str = "demo", out: Path | None = None) -> Path:
    """Run the suite; returns the folder holding bench.json and bench.md."""
    info = machine()
    start = time.perf_counter()
    runs = _runs(repeats, size)
    rows = summarize(runs)
    out = out or workspace_root() / "bench" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, info)
    (out / "bench.json").write_text(json.dumps({"machine": info, "repeats": repeats, "size": size,
                                                "seconds": time.perf_counter() - start, "rows": rows,
                                                "runs": runs}, indent=1))
    (out / "bench.md").write_text(table)
    print(f"\nmedflow bench suite ({repeats} repeats, {size} data) -> {out}\n\n{table}")
    return out
