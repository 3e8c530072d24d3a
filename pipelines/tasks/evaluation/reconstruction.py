"""Reconstruction evaluation: PSNR and SSIM on the test images, for the network and FBP baselines.

Reads:  simulate (test triples, geometry) and train_recon (reconstructor.keras, plan.json)
Writes: <workspace>/stages/evaluate_recon/<key>/metrics.csv (image, method, psnr, ssim),
        summary.json (mean and sd per method), comparison.png (truth | FBP | network | error),
        then manifest.json (last)

Scores follow DIVal: data_range = max(gt) - min(gt) per image. The FBP
baselines are recomputed from the noisy test sinograms with each filter of
``evaluate.fbp_filters``, at the frequency scaling that scores best on up to 64
validation images (``evaluate.fbp_tune``, as DIVal tunes its FBP baseline);
``network`` is the exported path: :meth:`Reconstruction.infer` of the
sinogram-input reconstructor (the FBP layer, then the network) on the test sinograms.
"""

from __future__ import annotations

import csv
import io
import time

import numpy as np

from medflow.core.engine import StageDir
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


def run(cfg, upstream, out: StageDir, ctx, plan, net):
    """Score the network (``net``, the sinogram-input reconstructor) and the FBP baselines on every test image."""
    from medflow.data.ct.ellipses import load_split
    from medflow.data.ct.physics import fbp_geometry
    from medflow.models.metrics import image_quality
    from medflow.tasks import TASKS
    from medflow.tasks.figures import reconstruction_figure, save_figure

    sim = upstream["simulate"]
    geometry = sim.manifest["geometry"]
    test = load_split(sim.file(sim.manifest["data"]), "test")
    out.prepare()
    start = time.perf_counter()
    recon = TASKS[plan.family].infer(plan, net, test["sinogram"], batch_size=cfg.evaluate.batch_size)
    predict_seconds = time.perf_counter() - start
    scaling = {name: 1.0 for name in cfg.evaluate.fbp_filters}
    if cfg.evaluate.fbp_tune:
        val = load_split(sim.file(sim.manifest["data"]), "validation", names=("sinogram", "gt"))
        scaling = {name: tune_scaling(val["sinogram"][:64], val["gt"][:64], geometry, name)
                   for name in cfg.evaluate.fbp_filters}
    images = {f"fbp_{name}": np.stack([fbp_geometry(s, geometry, name, scaling[name]) for s in test["sinogram"]])
              for name in cfg.evaluate.fbp_filters}
    images["network"] = recon
    scores: dict[str, list[dict]] = {m: [] for m in images}
    with ctx.progress(len(test["gt"]), "evaluate_recon") as bar:
        for i, truth in enumerate(test["gt"]):
            for method, stack in images.items():
                scores[method].append(image_quality(truth, stack[i]))
            bar.update(1)
    summary = summarize(scores)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "method", "psnr", "ssim"])
    for method, rows in scores.items():
        for index, q in zip(test["index"], rows):
            writer.writerow([int(index), method, f"{q['psnr']:.4f}", f"{q['ssim']:.5f}"])
    out.write_text("metrics.csv", buf.getvalue())
    out.write_json("summary.json", {"methods": summary, "geometry": geometry, "test_images": len(test["gt"]),
                                    "fbp_frequency_scaling": scaling, "predict_seconds": predict_seconds})
    order = np.argsort([q["psnr"] for q in scores["network"]])
    fbp_input = test["fbp"]
    rows = [{"name": f"#{int(test['index'][i])}", "truth": test["gt"][i], "fbp": fbp_input[i], "net": recon[i],
             "fbp_q": image_quality(test["gt"][i], fbp_input[i]), "net_q": scores["network"][i]}
            for i in _figure_rows(order, cfg.evaluate.figure_cases)]
    save_figure(reconstruction_figure(rows, f"test images, worst to best network PSNR; FBP filter "
                                            f"{geometry['fbp_filter']}"), out.path / "comparison.png")
    metrics = {f"{m}_{k}": v for m, s in summary.items() for k, v in s.items() if k != "images"}
    metrics["predict_images_per_s"] = len(recon) / max(predict_seconds, 1e-9)
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
                     **{f"test_psnr_{m}": summary[m]["psnr_mean"] for m in images if m != "network"}},
    })
