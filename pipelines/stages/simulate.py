"""Simulate stage: the cached CT reconstruction dataset (DIVal-style ellipses).

Reads:  nothing upstream: the simulate section (ellipses), or the NIfTI CT volumes in simulate.root
        (ct_volumes, split by volume with the split section's seed and fractions)
Writes: <workspace>/stages/simulate/<key>/data/{train,validation,test}/chunk_*.npz and data/dataset.json
        (data/ct/ellipses.py), geometry.json, then manifest.json (last)

Each chunk is atomic, so a killed build resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from medflow.core.engine import StageDir, StageFailed
from medflow.core.progress import log


def spec_from_config(sc):
    from medflow.data.ct.ellipses import EllipsesSpec

    return EllipsesSpec(size=sc.size, angles=sc.angles, oversample=sc.oversample, noise=sc.noise,
                        fbp_filter=sc.fbp_filter, frequency_scaling=sc.frequency_scaling, seed=sc.seed,
                        counts={"train": sc.train, "validation": sc.validation, "test": sc.test}, chunk=sc.chunk)


def source_state(cfg):
    """Key material beyond the simulate section: for ct_volumes, the split settings and every
    volume's name, size and mtime (a changed file never reuses a stale dataset); None for ellipses."""
    if cfg.simulate.source != "ct_volumes":
        return None
    root = Path(cfg.simulate.root)
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []
    return {"split": cfg.section("split"),
            "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def _ct_volumes(cfg, out: StageDir, ctx) -> dict:
    from medflow.data.ct.volumes import CtGeometry, assign_splits, build_ct
    from medflow.data.nifti import is_nifti_name

    sc, root = cfg.simulate, Path(cfg.simulate.root)
    if not root.is_dir():
        raise StageFailed(f"{root}: simulate.root is not a folder")
    files = [p for p in root.iterdir() if p.is_file() and is_nifti_name(p) and not p.name.startswith(".")]
    try:
        splits = assign_splits(files, cfg.split.seed, cfg.split.val_fraction, cfg.split.test_fraction)
        geometry = CtGeometry(size=sc.size, pixel_mm=sc.pixel_mm, angles=sc.angles, detectors=sc.detectors,
                              photons=sc.photons)
        with ctx.progress(len(files), "simulate") as bar:
            manifest = build_ct(out.path / "data", splits, geometry, fbp_filter=sc.fbp_filter,
                                frequency_scaling=sc.frequency_scaling, seed=sc.seed, slice_step=sc.slice_step,
                                workers=ctx.workers, progress=bar, mapper=_mapper(ctx))
    except ValueError as err:
        raise StageFailed(f"{root}: {err}") from None
    for problem in manifest.get("quarantine", []):
        log(f"[simulate] quarantined {problem['error']}")
        if ctx.strict:
            raise StageFailed(f"[simulate] --strict: {problem['error']}")
    return manifest


def _mapper(ctx):
    """Ray tasks for the chunks under ``executor: ray``; None keeps the local pool."""
    if ctx.executor != "ray":
        return None
    from medflow.core.ray_exec import ordered_mapper

    return ordered_mapper(ctx.ray_address, "simulate")


def run(cfg, upstream, out: StageDir, ctx):
    """Build (or finish) the (sinogram, FBP, ground truth) triples of every split."""
    from medflow.data.ct.ellipses import build

    out.prepare()
    if cfg.simulate.source == "ct_volumes":
        manifest = _ct_volumes(cfg, out, ctx)
    else:
        spec = spec_from_config(cfg.simulate)
        with ctx.progress(sum(spec.counts.values()), "simulate") as bar:
            manifest = build(out.path / "data", spec, workers=ctx.workers, progress=bar, mapper=_mapper(ctx))
    out.write_json("geometry.json", manifest["geometry"])
    return out.finish(cfg, upstream, {
        "data": "data",
        "geometry": manifest["geometry"],
        "counts": manifest["counts"],
        "cases": {},
        "quarantine": [{"case_id": Path(q["path"]).name, "path": q["path"], "problem": q["error"],
                        "error": q["error"]} for q in manifest.get("quarantine", [])],
        "artifacts": ["geometry.json", "data/dataset.json"],
        "metrics": {f"{split}_images": n for split, n in manifest["counts"].items()},
    })
