"""Simulate stage: the cached CT reconstruction dataset (DIVal-style ellipses).

Reads:  nothing upstream (the simulate config section)
Writes: <workspace>/stages/simulate/<key>/data/{train,validation,test}/chunk_*.npz and data/dataset.json
        (data/ct/ellipses.py), geometry.json, then manifest.json (last)

Each chunk is atomic, so a killed build resumes where it stopped.
"""

from __future__ import annotations

from pipelines.engine import StageDir


def spec_from_config(sc):
    from data.ct.ellipses import EllipsesSpec

    return EllipsesSpec(size=sc.size, angles=sc.angles, oversample=sc.oversample, noise=sc.noise,
                        fbp_filter=sc.fbp_filter, frequency_scaling=sc.frequency_scaling, seed=sc.seed,
                        counts={"train": sc.train, "validation": sc.validation, "test": sc.test}, chunk=sc.chunk)


def run(cfg, upstream, out: StageDir, ctx):
    """Build (or finish) the (sinogram, FBP, ground truth) triples of every split."""
    from data.ct.ellipses import build

    spec = spec_from_config(cfg.simulate)
    out.prepare()
    total = sum(spec.counts.values())
    with ctx.progress(total, "simulate") as bar:
        manifest = build(out.path / "data", spec, workers=ctx.workers, progress=bar)
    out.write_json("geometry.json", manifest["geometry"])
    return out.finish(cfg, upstream, {
        "data": "data",
        "geometry": manifest["geometry"],
        "counts": manifest["counts"],
        "cases": {},
        "quarantine": [],
        "artifacts": ["geometry.json", "data/dataset.json"],
        "metrics": {f"{split}_images": n for split, n in manifest["counts"].items()},
    })
