"""Reconstruction evaluation: PSNR and SSIM on the test images, for the network and FBP baselines.

Reads:  simulate (test triples, geometry) and train_recon (reconstructor.keras, plan.json)
Writes: <workspace>/stages/evaluate_recon/<key>/metrics.csv (image, method, psnr, ssim),
        summary.json (mean and sd per method), comparison.png (truth | FBP | TV | network | error),
        reconstructions.npz (index, and the tv and network images of every test sinogram),
        then manifest.json (last)

Scores follow DIVal: data_range = max(gt) - min(gt) per image. The FBP
baselines are recomputed from the noisy test sinograms with each filter of
``evaluate.fbp_filters``, at the frequency scaling that scores best on up to 64
validation images (``evaluate.fbp_tune``, as DIVal tunes its FBP baseline);
``tv`` is total-variation PDHG on the same operator (models/tv.py), its weight and
iteration count tuned on ``evaluate.tv_tune_images`` validation images;
``network`` is the exported path: :meth:`Reconstruction.infer` of the
sinogram-input reconstructor (the FBP layer, then the network) on the test sinograms.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np

from medflow.core.engine import StageDir
from medflow.data.atomic import write_atomic
from medflow.review.spec import comparison


def summarize(scores: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """method -> {psnr_mean, psnr_sd, ssim_mean, ssim_sd, images} over per-image quality dicts."""
    out = {}
    for method, rows in scores.items():
        psnr = np.array([r["psnr"] for r in rows])
        ssim = np.array([r["ssim"] for r in rows])
        out[method] = {"psnr_mean": float(psnr.mean()), "psnr_sd": float(psnr.std()),
                       "ssim_mean": float(ssim.mean()), "ssim_sd": float(ssim.std()), "images": len(rows)}
    return out


SCALINGS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def tune_scaling(sinograms, truths, geometry: dict, filter_name: str) -> float:
    """The frequency scaling of ``SCALINGS`` with the best mean PSNR on (validation) images."""
    from medflow.data.ct.physics import fbp_geometry
    from medflow.models.metrics import image_quality

    def mean_psnr(scaling):
        return np.mean([image_quality(t, fbp_geometry(s, geometry, filter_name, scaling))["psnr"]
                        for s, t in zip(sinograms, truths)])

    return max(SCALINGS, key=mean_psnr)


def _figure_rows(order: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` images spread over the network's PSNR ranking: worst, ..., median, ..., best."""
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(n, len(order)))).astype(int))
    return [int(order[p]) for p in picks]


def _per_image_csv(index, scores: dict[str, list[dict]]) -> str:
    """One row per test image (the review table): PSNR and SSIM of every method."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    methods = list(scores)
    writer.writerow(["image", *(f"psnr_{m}" for m in methods), *(f"ssim_{m}" for m in methods)])
    for i, image in enumerate(index):
        writer.writerow([int(image), *(f"{scores[m][i]['psnr']:.4f}" for m in methods),
                         *(f"{scores[m][i]['ssim']:.5f}" for m in methods)])
    return buf.getvalue()


def compare_figure(upstream: dict, evaluated: dict, cases: int = 3):
    """truth | FBP | TV | each model | |best - truth| on ``cases`` test images (the best model's worst,
    median and best), from each evaluate folder's reconstructions.npz (``evaluated``: model -> folder)."""
    from medflow.data.ct.ellipses import load_split
    from medflow.models.metrics import image_quality
    from medflow.tasks.figures import reconstruction_figure

    sim = upstream["simulate"]
    test = load_split(sim.file(sim.manifest["data"]), "test", names=("fbp", "gt"))
    stored = {name: np.load(Path(folder) / "reconstructions.npz") for name, folder in evaluated.items()}
    networks = {name: data["network"] for name, data in stored.items()}
    quality = {name: [image_quality(t, x) for t, x in zip(test["gt"], images)] for name, images in networks.items()}
    best = max(quality, key=lambda name: np.mean([q["psnr"] for q in quality[name]]))
    tv = next((data["tv"] for data in stored.values() if "tv" in data.files), None)
    order = [name for name in networks if name != best] + [best]  # the error panel shows the last: the best
    rows = []
    for i in _figure_rows(np.argsort([q["psnr"] for q in quality[best]]), cases):
        truth = test["gt"][i]
        methods = [("FBP", test["fbp"][i], image_quality(truth, test["fbp"][i]))]
        if tv is not None:
            methods.append(("TV", tv[i], image_quality(truth, tv[i])))
        methods += [(name, networks[name][i], quality[name][i]) for name in order]
        rows.append({"name": f"#{int(test['index'][i])}", "truth": truth, "methods": methods})
    return reconstruction_figure(rows, f"test images, worst to best {best} PSNR")


class _TV:
    """TV-PDHG (models/tv.py) with its weight and iteration count tuned on validation images, each
    image started from the geometry's FBP; :meth:`__call__` reconstructs any sinograms of the geometry."""

    def __init__(self, cfg, sim, geometry: dict):
        from medflow.data.ct.ellipses import load_split
        from medflow.models.metrics import image_quality
        from medflow.models.tv import TVSolver, checkpoints_up_to, tune

        self.geometry = geometry
        self.scale, self.offset = geometry.get("fbp_scale", 1.0), geometry.get("fbp_offset", 0.0)
        val = load_split(sim.file(sim.manifest["data"]), "validation", names=("sinogram", "gt"))
        k = cfg.evaluate.tv_tune_images
        self.solver = TVSolver(geometry)
        started = time.perf_counter()
        self.chosen = tune(self.solver, val["sinogram"][:k], val["gt"][:k],
                           lambda truth, x: image_quality(truth, self.scale * x + self.offset)["psnr"],
                           self._init(val["sinogram"][:k]),
                           checkpoints=checkpoints_up_to(cfg.evaluate.tv_iterations))
        self.tune_seconds = time.perf_counter() - started
        self.seconds = 0.0

    def _init(self, sinograms):  # in A's units, as TV iterates (HU geometries: back from HU)
        from medflow.data.ct.physics import fbp_geometry

        return np.stack([(fbp_geometry(s, self.geometry) - self.offset) / self.scale for s in sinograms]) \
            if len(sinograms) else None

    def __call__(self, sinograms: np.ndarray) -> np.ndarray:
        """(N, D, A) -> (N, S, S) in the truth's units."""
        started = time.perf_counter()
        images = self.solver.reconstruct(sinograms, self.chosen["weight"], self.chosen["iterations"],
                                         self._init(sinograms))
        self.seconds += time.perf_counter() - started
        return self.scale * images + self.offset

    def record(self) -> dict:
        c = self.chosen
        return {"weight": c["weight"], "iterations": c["iterations"], "lambda": c["weight"] * self.solver.opnorm ** 2,
                "validation_psnr": c["score"], "tuning_grid": c["grid"], "tune_seconds": self.tune_seconds,
                "seconds": self.seconds}


def _reconstruct_all(cfg, plan, net, geometry, sinograms, scaling: dict, tv) -> tuple[dict[str, np.ndarray], float]:
    """(method -> (N, S, S) images of ``sinograms``: each FBP filter, TV (if ``tv``), then the network;
    the network's seconds)."""
    from medflow.data.ct.physics import fbp_geometry
    from medflow.tasks import TASKS

    images = {f"fbp_{name}": np.stack([fbp_geometry(s, geometry, name, scaling[name]) for s in sinograms])
              for name in cfg.evaluate.fbp_filters}
    if tv is not None:
        images["tv"] = tv(sinograms)
    start = time.perf_counter()
    images["network"] = TASKS[plan.family].infer(plan, net, sinograms, batch_size=cfg.evaluate.batch_size)
    return images, time.perf_counter() - start


def _second_simulator(cfg, plan, net, geometry, test, scaling, main: dict) -> dict:
    """FBP and the network on the test truths measured by data/ct/second.py: scores and the gap to the main
    ones. TV is not run again: it is the stage's longest part, and a model-based method's robustness is
    not what the second simulator asks about."""
    from medflow.data.ct.second import PITCH, second_detectors, second_split
    from medflow.models.metrics import image_quality

    sc = cfg.simulate
    sinograms = second_split(test["gt"], test["index"], geometry["angles_deg"], sc.seed, sc.oversample, sc.noise)
    images, _ = _reconstruct_all(cfg, plan, net, geometry, sinograms, scaling, None)
    summary = summarize({m: [image_quality(t, x) for t, x in zip(test["gt"], stack)] for m, stack in images.items()})
    return {"methods": summary, "detectors": second_detectors(geometry["image_size"]), "pitch": PITCH,
            "gap_db": {m: main[m]["psnr_mean"] - summary[m]["psnr_mean"] for m in summary}}


def run(cfg, upstream, out: StageDir, ctx, plan, net):
    """Score the network (``net``, the sinogram-input reconstructor) and the FBP baselines on every test image."""
    from medflow.data.ct.ellipses import load_split
    from medflow.models.metrics import image_quality
    from medflow.tasks.figures import reconstruction_figure, save_figure

    sim = upstream["simulate"]
    geometry = sim.manifest["geometry"]
    test = load_split(sim.file(sim.manifest["data"]), "test")
    out.prepare()
    scaling = {name: 1.0 for name in cfg.evaluate.fbp_filters}
    if cfg.evaluate.fbp_tune:
        val = load_split(sim.file(sim.manifest["data"]), "validation", names=("sinogram", "gt"))
        scaling = {name: tune_scaling(val["sinogram"][:64], val["gt"][:64], geometry, name)
                   for name in cfg.evaluate.fbp_filters}
    tv = _TV(cfg, sim, geometry) if cfg.evaluate.tv else None
    images, predict_seconds = _reconstruct_all(cfg, plan, net, geometry, test["sinogram"], scaling, tv)
    recon = images["network"]
    scores: dict[str, list[dict]] = {m: [] for m in images}
    with ctx.progress(len(test["gt"]), "evaluate_recon") as bar:
        for i, truth in enumerate(test["gt"]):
            for method, stack in images.items():
                scores[method].append(image_quality(truth, stack[i]))
            bar.update(1)
    summary = summarize(scores)
    # Only the ellipses have a second simulator (a CT volume's measurement already is the user's own).
    second = _second_simulator(cfg, plan, net, geometry, test, scaling, summary) \
        if cfg.evaluate.second_simulator and cfg.simulate.source == "ellipses" else None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "method", "psnr", "ssim"])
    for method, rows in scores.items():
        for index, q in zip(test["index"], rows):
            writer.writerow([int(index), method, f"{q['psnr']:.4f}", f"{q['ssim']:.5f}"])
    out.write_text("metrics.csv", buf.getvalue())
    out.write_json("summary.json", {"methods": summary, "geometry": geometry, "test_images": len(test["gt"]),
                                    "fbp_frequency_scaling": scaling, "predict_seconds": predict_seconds,
                                    **({"tv": tv.record()} if tv is not None else {}),
                                    **({"second_simulator": second} if second is not None else {})})
    order = np.argsort([q["psnr"] for q in scores["network"]])
    fbp_input = test["fbp"]
    shown = [m for m in ("tv",) if m in images]
    rows = [{"name": f"#{int(test['index'][i])}", "truth": test["gt"][i],
             "methods": [("FBP", fbp_input[i], image_quality(test["gt"][i], fbp_input[i])),
                         *((m.upper(), images[m][i], scores[m][i]) for m in shown),
                         ("network", recon[i], scores["network"][i])]}
            for i in _figure_rows(order, cfg.evaluate.figure_cases)]
    # Every learned and iterative reconstruction of the test split, for `medflow compare`'s shared figure.
    with write_atomic(out.path / "reconstructions.npz", suffix=".npz") as tmp:
        np.savez(tmp, index=test["index"], **{m: images[m] for m in ("tv", "network") if m in images})
    save_figure(reconstruction_figure(rows, f"test images, worst to best network PSNR; FBP filter "
                                            f"{geometry['fbp_filter']}"), out.path / "comparison.png")
    metrics = {f"{m}_{k}": v for m, s in summary.items() for k, v in s.items() if k != "images"}
    metrics["predict_images_per_s"] = len(recon) / max(predict_seconds, 1e-9)
    if second is not None:
        metrics.update({f"second_{m}_{k}": v for m, s in second["methods"].items() for k, v in s.items()
                        if k in ("psnr_mean", "ssim_mean")})
        metrics.update({f"second_gap_{m}_db": v for m, v in second["gap_db"].items()})
    out.write_text("per_case.csv", _per_image_csv(test["index"], scores))
    # The baseline is the best classical reconstruction on the test mean PSNR (the one to beat).
    base = max((m for m in images if m != "network"), key=lambda m: summary[m]["psnr_mean"], default=None)
    review = {"split": "test", "baseline": base, "table": "per_case.csv",
              "metrics": [comparison(q, summary["network"][f"{q}_mean"], summary[base][f"{q}_mean"] if base else None)
                          for q in ("psnr", "ssim")],
              "figures": {"comparison.png": "comparison.png"}}
    return out.finish(cfg, upstream, {
        "review": review,
        "cases": {}, "quarantine": [],
        "artifacts": ["metrics.csv", "per_case.csv", "summary.json", "comparison.png", "plan.json"],
        "metrics": metrics,
        "headline": {"test_psnr": summary["network"]["psnr_mean"], "test_ssim": summary["network"]["ssim_mean"],
                     **{f"test_psnr_{m}": summary[m]["psnr_mean"] for m in images if m != "network"},
                     **({"test_psnr_second_simulator": second["methods"]["network"]["psnr_mean"]} if second else {})},
    })
