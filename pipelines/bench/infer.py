"""``medflow bench infer``: inference latency of exported models on each runtime.

Segmentation: one 1 mm brain volume (the MNI152 T1 template shipped with
nilearn, 197 x 233 x 189 voxels) through the bundle's whole path: preprocessing,
sliding windows (with the config's overlap and mirroring), mapping back to the
native grid. Reconstruction: sinograms of the default geometry, one per call
(latency) and batched (throughput). Each runtime runs the same bundle; the
first call (graph tracing, session start) is left out, then the median of the
repeats is reported, with the network's share of the volume time.

Without ``--model`` the bundles are built from the default configs'
architectures with untrained weights: speed depends on the architecture, not on
the weights. With ``--model`` (an export folder or ``models:/...``) the real
bundle is timed instead.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RUNTIMES = ("keras", "saved_model", "onnx")


def _seg_bundle(folder: Path) -> Path:
    """A bundle with the default segmentation config's network (untrained) and inference settings."""
    from medflow.core.loading import load_config, packaged_config
    from medflow.data.sample.build import TISSUE_CLASSES
    from medflow.models.registry import build_model
    from medflow.models.runtimes import export_formats
    from medflow.stages.preprocess import plan_from_config
    from medflow.tasks import TASKS

    cfg = load_config(packaged_config("segmentation"))
    classes = [TISSUE_CLASSES[k] for k in sorted(TISSUE_CLASSES)]
    shape = [*cfg.loader.patch_size, 1]
    pre = plan_from_config(cfg.preprocess, cfg.preprocess.spacing, ("mr",))
    export_formats(build_model(cfg.model.name, shape, len(classes), cfg.model.params), folder)
    facts = {"classes": classes, "channels": ["MR"], "input_shape": shape, "preprocess": pre.to_json()}
    TASKS[cfg.model.family].inference_plan(cfg, facts).with_info(model=cfg.model.model_dump(mode="json")).save(folder)
    return folder


def _recon_bundle(folder: Path) -> Path:
    from medflow.core.loading import load_config, packaged_config
    from medflow.data.ct.ellipses import EllipsesSpec
    from medflow.models.reconstruction import sinogram_model
    from medflow.models.registry import build_model
    from medflow.models.runtimes import export_formats
    from medflow.tasks import TASKS

    cfg = load_config(packaged_config("reconstruction"))
    sc = cfg.simulate
    geometry = EllipsesSpec(size=sc.size, angles=sc.angles, fbp_filter=sc.fbp_filter).geometry()
    net = build_model(cfg.model.name, (sc.size, sc.size, 1), 1, cfg.model.params)
    export_formats(sinogram_model(net, geometry), folder)
    plan = TASKS[cfg.model.family].inference_plan(cfg, {"geometry": geometry})
    plan.with_info(model=cfg.model.model_dump(mode="json")).save(folder)
    return folder


class _Timed:
    """Wraps a bundle's network to add up the seconds spent in it."""

    def __init__(self, net):
        self.net, self.seconds, self.calls = net, 0.0, 0

    def __call__(self, x):
        start = time.perf_counter()
        y = self.net(x)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return y


def _volume_rows(spec, repeats: int) -> tuple[list[str], dict]:
    from nilearn import datasets

    from medflow.inference.predict import open_model
    from medflow.tasks.base import VolumeCase

    t1 = datasets.load_mni152_template(resolution=1)
    case = VolumeCase([t1.get_fdata(dtype=np.float32)], np.asarray(t1.affine))
    rows, figures = [], {}
    for rt in RUNTIMES:
        bundle = open_model(spec, rt)
        timed = _Timed(bundle.net)
        bundle.net = timed
        bundle.infer(case)  # warm-up: tracing and session start
        totals, nets = [], []
        for _ in range(repeats):
            timed.seconds, timed.calls = 0.0, 0
            start = time.perf_counter()
            labels = bundle.infer(case).labels
            totals.append(time.perf_counter() - start)
            nets.append(timed.seconds)
        total, net = statistics.median(totals), statistics.median(nets)
        rows.append(f"  {rt:<12} {total:>10.2f} {net:>10.2f} {100 * net / total:>6.0f}% {timed.calls:>8}")
        figures[f"volume_s_{rt}"] = total
    return [f"segmentation, one 1 mm brain volume {t1.shape} -> labels on its grid {labels.shape} "
            f"(median of {repeats}):",
            f"  {'runtime':<12} {'s/volume':>10} {'network s':>10} {'share':>7} {'calls':>8}", *rows], figures


def _sinogram_rows(spec, repeats: int, batch: int) -> tuple[list[str], dict]:
    from medflow.data.ct.ellipses import EllipsesSpec, make_sample
    from medflow.inference.predict import open_model

    rows, figures = [], {}
    for rt in RUNTIMES:
        bundle = open_model(spec, rt)
        if rt == RUNTIMES[0]:
            d, a = bundle.plan.input_shape
            spec_e = EllipsesSpec(size=bundle.plan.geometry["image_size"], angles=a)
            sinos = np.stack([make_sample(spec_e, "test", i % 8)[0] for i in range(batch)])
            if sinos.shape[1:] != (d, a):  # a user's bundle of another geometry: timing needs only the shape
                sinos = np.abs(np.random.default_rng(0).normal(size=(batch, d, a))).astype(np.float32)
        run = lambda x: bundle.task.infer(bundle.plan, bundle.net, x, batch_size=batch)  # noqa: E731
        run(sinos[:1])
        run(sinos)
        one = [_clock(lambda: run(sinos[i % batch:i % batch + 1])) for i in range(10 * repeats)]
        many = [_clock(lambda: run(sinos)) for _ in range(repeats)]
        rows.append(f"  {rt:<12} {1000 * statistics.median(one):>14.1f} {batch / statistics.median(many):>16.1f}")
        figures[f"sinogram_ms_{rt}"] = 1000 * statistics.median(one)
        figures[f"images_per_s_batch_{rt}"] = batch / statistics.median(many)
    return [f"reconstruction, ({d}, {a}) sinograms -> {bundle.plan.geometry['image_size']}^2 images:",
            f"  {'runtime':<12} {'ms/sinogram':>14} {f'images/s @{batch}':>16}", *rows], figures


def _clock(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_infer(model: str | None = None, recon_model: str | None = None, repeats: int = 3, batch: int = 32) -> dict:
    """Print per-volume and per-sinogram latency for each runtime; return the figures."""
    print(f"medflow bench infer ({platform.machine()}, {os.cpu_count()} cores; "
          f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')})")
    with tempfile.TemporaryDirectory(prefix="medflow-bench-infer-") as tmp:
        seg = model or str(_seg_bundle(Path(tmp) / "seg"))
        rec = recon_model or str(_recon_bundle(Path(tmp) / "rec"))
        print(f"  segmentation model: {model or 'default segmentation config, untrained weights'}")
        print(f"  reconstruction model: {recon_model or 'default reconstruction config, untrained weights'}")
        lines, volume = _volume_rows(seg, repeats)
        more, sinogram = _sinogram_rows(rec, repeats, batch)
        for line in lines + more:
            print(line, flush=True)
    return {**volume, **sinogram}
