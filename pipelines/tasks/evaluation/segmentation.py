"""Segmentation evaluation: segment held-out cases in their native space and score them.

Reads:  ingest (the original files), split (which cases), train (model.keras, plan.json, train.json)
Writes: <workspace>/stages/evaluate/<key>/predictions/<case>.nii.gz (label maps on each input's grid,
        with its affine and header), cases/<case>.json (per-case metrics and confusion, the resume
        points), metrics.csv, per_case.csv (one row per case), summary.json, confusion.json, confusion.png,
        montage.png (three planes, contours and difference maps), then manifest.json

Every case goes through :meth:`Segmentation.infer`, what ``medflow predict`` runs:
the raw NIfTI is preprocessed without its label, segmented by sliding windows, and
the probabilities are mapped back to the native grid, where the metrics are
computed against the original label map. A multi-Otsu baseline (optional) is
scored the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time

import numpy as np

from medflow.core.cases import map_cases
from medflow.core.engine import StageDir, StageFailed
from medflow.data.images import read_image, read_label
from medflow.data.nifti import CaseError, read_nifti
from medflow.inference.plan import InferencePlan
from medflow.models.metrics import case_metrics, row_normalize
from medflow.review.spec import comparison

FIELDS = ("dice", "iou", "hd95_mm", "volume_true_ml", "volume_pred_ml", "volume_diff_ml", "volume_diff_pct")


def _case_ids(cfg, split, train_info, ingest) -> list[str]:
    splits = json.loads(split.file("splits.json").read_text())
    ids = splits["test"] if cfg.evaluate.split == "test" else train_info["val_cases"]
    ids = sorted(c for c in ids if c in ingest.cases)
    if not ids:
        raise StageFailed(f"no {cfg.evaluate.split} cases to evaluate"
                          + (" (split.test_fraction is 0)" if cfg.evaluate.split == "test" else ""))
    return ids


def evaluate_job(job: dict) -> dict:
    """:func:`evaluate_case` in another process (a Ray worker): the network reopened once per process.

    ``job["ev"]`` is the evaluate section as a dict (read by attribute: importing the config schema here
    would tie this module's code version, and so evaluate's key, to every stage)."""
    from pathlib import Path
    from types import SimpleNamespace

    from medflow.inference.remote import reopen

    path, key, module = job["out"]
    dest = StageDir(None, "evaluate", key, module, parent=Path(path).parent)
    return evaluate_case(job["record"], reopen(tuple(job["source"])).net, InferencePlan.from_json(job["plan"]),
                         SimpleNamespace(**job["ev"]), dest)


def evaluate_case(record: dict, net, plan: InferencePlan, ev, dest: StageDir) -> dict:
    """Segment one case in native space, write its prediction and metrics; return its metrics."""
    return score_case(segment_case(record, net, plan, ev, dest))


def segment_case(record: dict, net, plan: InferencePlan, ev, dest: StageDir) -> dict:
    """Segment one case in native space and write its prediction; return the job for :func:`score_case`."""
    from medflow.data.geometry import voxel_spacing
    from medflow.data.native import write_like
    from medflow.tasks import TASKS
    from medflow.tasks.base import VolumeCase

    start = time.perf_counter()
    case_id = record["case_id"]
    if not record["label"]:
        raise CaseError(record["images"][0], "no label map to evaluate against")
    images = [read_image(p, **record.get("read", {})) for p in record["images"]]
    truth = np.rint(read_label(record["label"], images[0], record.get("label_classes")).data)
    classes = list(plan.classes)
    case = VolumeCase([v.data for v in images], images[0].affine, record["images"][0])
    pred = TASKS[plan.family].infer(plan, net, case).labels
    write_like(dest.path / "predictions" / f"{case_id}.nii.gz", pred, record["images"][0], affine=images[0].affine)
    baseline = ev.baseline == "multi_otsu"
    # Label values are class indices: uint8 keeps the arrays small when they travel to a scoring process.
    small = np.uint8 if min(truth.min(), pred.min()) >= 0 and max(truth.max(), pred.max()) < 256 else np.int64
    return {"case_id": case_id, "truth": truth.astype(small), "pred": pred.astype(small),
            "image": images[0].data if baseline else None, "spacing": tuple(voxel_spacing(images[0].affine)),
            "classes": classes, "hd95": ev.hd95, "baseline": ev.baseline if baseline else None,
            "baseline_labels": list(ev.baseline_labels), "out": str(dest.case_path(case_id, ".json")),
            "seconds": time.perf_counter() - start}


def score_case(job: dict) -> dict:
    """The metrics of one segmented case (:func:`segment_case`'s job): the network's and, when asked, the
    multi-Otsu baseline's, against the truth on the native grid. Writes the case record (the resume point)
    and returns it. Runs in a worker process while the next case is segmented: surface distances take
    about as long as the inference."""
    from medflow.data.atomic import write_atomic
    from medflow.models.baselines import multi_otsu

    start = time.perf_counter()
    truth, pred, spacing, classes = job["truth"].astype(np.int64), job["pred"], job["spacing"], job["classes"]
    rows, cm = case_metrics(truth, pred, spacing, classes, surface=job["hd95"])
    result = {"case_id": job["case_id"], "methods": {"network": {"rows": rows, "confusion": cm.tolist()}}}
    if job["baseline"] == "multi_otsu":
        base = multi_otsu(job["image"], truth > 0, job["baseline_labels"])
        rows_b, cm_b = case_metrics(truth, base, spacing, classes, surface=job["hd95"])
        result["methods"]["multi_otsu"] = {"rows": rows_b, "confusion": cm_b.tolist()}
    result["seconds"] = job["seconds"] + time.perf_counter() - start
    with write_atomic(job["out"]) as tmp:
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True), encoding="utf-8")
    return result


def _segment_and_score(jobs, net, plan, ev, out, ctx, done: int, total: int) -> tuple[dict, list[dict]]:
    """Every case of ``jobs``: segmented here, one after another (one TensorFlow model uses every core),
    and with ``ctx.workers`` > 1 scored in a worker process while the next one is segmented.

    Returns:
        (results by case id, quarantine records), as :func:`map_cases`.
    """
    serial = dataclasses.replace(ctx, workers=1)
    if ctx.workers <= 1 or len(jobs) <= 1:
        return map_cases(jobs, lambda rec: evaluate_case(rec, net, plan, ev, out), serial, "evaluate",
                         done=done, total=total)
    from concurrent.futures import ProcessPoolExecutor

    from medflow.core.cases import settle
    from medflow.data.workers import process_context

    sources = {c: s for c, s, _ in jobs}
    with ProcessPoolExecutor(1, mp_context=process_context()) as pool:
        def segment(rec):
            return pool.submit(score_case, segment_case(rec, net, plan, ev, out))

        pending, quarantine = map_cases(jobs, segment, serial, "evaluate", done=done, total=total)
        results = {}
        for case_id in sorted(pending):
            settle(case_id, sources[case_id], pending[case_id].result, results, quarantine, ctx, "evaluate")
    return results, sorted(quarantine, key=lambda r: r["case_id"])


def _mean_dice(rows: list[dict], report: list[str]) -> float:
    vals = [r["dice"] for r in rows if r["class"] in report and np.isfinite(r["dice"])]
    return float(np.mean(vals)) if vals else float("nan")


def summarize(results: dict[str, dict], classes: list[str], report: list[str]) -> dict:
    """Means over cases per method: per class and over the report classes (NaN and inf left out)."""
    summary = {}
    methods = sorted({m for r in results.values() for m in r["methods"]}, key=lambda m: m != "network")
    for method in methods:
        per_case = {c: r["methods"][method]["rows"] for c, r in results.items() if method in r["methods"]}
        out = {"cases": len(per_case), "per_class": {}}
        for name in classes[1:]:
            rows = [row for rs in per_case.values() for row in rs if row["class"] == name]
            stats = {}
            for f in FIELDS:
                vals = np.array([row[f] for row in rows], dtype=np.float64)
                finite = vals[np.isfinite(vals)]
                stats[f] = float(np.mean(finite)) if finite.size else float("nan")
                if f == "hd95_mm":
                    stats["hd95_undefined"] = int(np.isinf(vals).sum())
            stats["volume_abs_diff_pct"] = float(np.nanmean([abs(row["volume_diff_pct"]) for row in rows]))
            out["per_class"][name] = stats
        case_dice = [_mean_dice(rs, report) for rs in per_case.values()]
        out["mean_dice"] = float(np.nanmean(case_dice))
        out["sd_dice"] = float(np.nanstd(case_dice))
        hd = [out["per_class"][c]["hd95_mm"] for c in report]
        out["mean_hd95_mm"] = float(np.nanmean(hd)) if np.isfinite(hd).any() else float("nan")
        cm = sum(np.asarray(r["methods"][method]["confusion"], dtype=np.int64) for r in results.values())
        out["confusion"] = cm.tolist()
        summary[method] = out
    return summary


def _metrics_csv(results: dict[str, dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "method", "class", *FIELDS])
    for case_id in sorted(results):
        for method, body in results[case_id]["methods"].items():
            for row in body["rows"]:
                w.writerow([case_id, method, row["class"], *(f"{row[f]:.6g}" for f in FIELDS)])
    return buf.getvalue()


def _per_case_csv(results: dict[str, dict], report: list[str]) -> str:
    """One row per case (the review table): mean Dice over the report classes and per-class Dice and HD95
    of the network, and each baseline's mean Dice."""
    methods = sorted({m for r in results.values() for m in r["methods"]} - {"network"})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "mean_dice", *(f"dice_{c}" for c in report), *(f"hd95_mm_{c}" for c in report),
                *(f"{m}_mean_dice" for m in methods)])
    for case_id in sorted(results):
        methods_of = results[case_id]["methods"]
        rows = {r["class"]: r for r in methods_of["network"]["rows"]}
        w.writerow([case_id, f"{_mean_dice(methods_of['network']['rows'], report):.6g}",
                    *(f"{rows[c]['dice']:.6g}" if c in rows else "" for c in report),
                    *(f"{rows[c]['hd95_mm']:.6g}" if c in rows else "" for c in report),
                    *(f"{_mean_dice(methods_of[m]['rows'], report):.6g}" if m in methods_of else "" for m in methods)])
    return buf.getvalue()


def _montage(results, records, report, classes, path) -> list[str]:
    """Best, median and worst case (network mean Dice over the report classes): three planes through the
    truth's centre, contours and difference maps, at native resolution."""
    from medflow.data.geometry import to_canonical, voxel_spacing
    from medflow.review.figures import ortho_montage_figure
    from medflow.tasks.figures import save_figure

    ranked = sorted(results, key=lambda c: _mean_dice(results[c]["methods"]["network"]["rows"], report))
    picks = [("worst", ranked[0]), ("median", ranked[len(ranked) // 2]), ("best", ranked[-1])]
    rows = []
    for tag, case_id in picks[::-1] if len(ranked) > 2 else [("case", c) for c in ranked]:
        record = records[case_id]
        image = read_image(record["images"][0], **record.get("read", {}))
        canonical, affine = to_canonical(image.data, image.affine)
        vols = [canonical] + [to_canonical(v, image.affine)[0] for v in (
            read_label(record["label"], image, record.get("label_classes")).data,
            read_nifti(path.parent / "predictions" / f"{case_id}.nii.gz").data)]
        fg = np.nonzero(vols[1] > 0)
        centre = [int(np.median(a)) if a.size else n // 2 for a, n in zip(fg, vols[0].shape)]
        dice = _mean_dice(results[case_id]["methods"]["network"]["rows"], report)
        rows.append({"title": f"{tag}: {case_id} (Dice {dice:.3f})", "image": vols[0], "centre": centre,
                     "spacing": voxel_spacing(affine),
                     "truth": np.rint(vols[1]).astype(int), "pred": np.rint(vols[2]).astype(int)})
    save_figure(ortho_montage_figure(rows, classes, "truth (solid) and prediction (dashed) contours, and where "
                                                    "they differ; native resolution"), path, dpi=80)
    return [c for _, c in picks]


def run(cfg, upstream, out: StageDir, ctx, plan: InferencePlan, net):
    """Evaluate the trained segmentation model (``net``, run by ``plan``) on the configured split."""
    from medflow.tasks.figures import confusion_figure, save_figure

    ingest, split, train = upstream["ingest"], upstream["split"], upstream["train"]
    info = json.loads(train.file("train.json").read_text())
    classes, ev = list(plan.classes), cfg.evaluate
    report = ev.report_classes or classes[1:]
    unknown = [c for c in report if c not in classes[1:]]
    if unknown:
        raise StageFailed(f"evaluate.report_classes: {unknown} not among the foreground classes {classes[1:]}")
    ids = _case_ids(cfg, split, info, ingest)
    out.prepare()
    records = {c: json.loads(ingest.file(ingest.cases[c]["file"]).read_text()) for c in ids}
    todo = [c for c in ids if not out.has(c, ".json")]
    jobs = [(c, records[c]["images"][0], records[c]) for c in todo]
    if ctx.executor == "ray":  # each case a Ray task; each worker loads the model once (inference.remote)
        shared = {"source": ("train", str(train.path), train.manifest["inference_model"]), "plan": plan.to_json(),
                  "ev": ev.model_dump(mode="json"), "out": [str(out.path), out.key, out.module]}
        fresh, quarantine = map_cases([(c, s, {**shared, "record": r}) for c, s, r in jobs], evaluate_job, ctx,
                                      "evaluate", done=len(ids) - len(todo), total=len(ids))
    else:
        fresh, quarantine = _segment_and_score(jobs, net, plan, ev, out, ctx, len(ids) - len(todo), len(ids))
    bad = {q["case_id"] for q in quarantine}
    results = {c: fresh.get(c) or json.loads(out.case_path(c, ".json").read_text()) for c in ids if c not in bad}
    if not results:
        raise StageFailed(f"no {ev.split} case could be evaluated; first problem: {quarantine[0]['error']}")
    summary = summarize(results, classes, report)
    picks = _montage(results, records, report, classes, out.path / "montage.png")
    out.write_text("metrics.csv", _metrics_csv(results))
    out.write_text("per_case.csv", _per_case_csv(results, report))
    out.write_json("summary.json", {"split": ev.split, "classes": classes, "report_classes": report,
                                    "montage": picks, "methods": summary, "quarantine": quarantine})
    out.write_json("confusion.json", {
        "classes": classes, "rows": "true class", "columns": "predicted class",
        **{m: {"counts": s["confusion"], "row_normalized": row_normalize(np.array(s["confusion"])).tolist()}
           for m, s in summary.items()}})
    artifacts = ["metrics.csv", "per_case.csv", "summary.json", "confusion.json", "montage.png", "plan.json"]
    for method, s in summary.items():
        name = "confusion.png" if method == "network" else f"confusion_{method}.png"
        save_figure(confusion_figure(np.array(s["confusion"]), classes,
                                     f"{method}: voxels of {s['cases']} {ev.split} case(s), native space"),
                    out.path / name)
        artifacts.append(name)
    metrics = {}
    for method, s in summary.items():
        prefix = f"{ev.split}_" if method == "network" else f"{method}_{ev.split}_"
        metrics[f"{prefix}mean_dice"] = s["mean_dice"]
        metrics[f"{prefix}mean_hd95_mm"] = s["mean_hd95_mm"]
        for name, stats in s["per_class"].items():
            for f in ("dice", "iou", "hd95_mm", "volume_abs_diff_pct"):
                metrics[f"{prefix}{f}_{name}"] = stats[f]
    metrics["cases"], metrics["quarantined"] = len(results), len(quarantine)
    base = next((m for m in summary if m != "network"), None)

    def headline(method: str) -> dict:
        stats = summary[method]
        return {"mean_dice": stats["mean_dice"], "mean_hd95_mm": stats["mean_hd95_mm"],
                **{f"dice_{c}": stats["per_class"][c]["dice"] for c in report}}

    ours, theirs = headline("network"), headline(base) if base else {}
    review = {"split": ev.split, "baseline": base, "table": "per_case.csv",
              "metrics": [comparison(k, v, theirs.get(k), greater_is_better=k != "mean_hd95_mm")
                          for k, v in ours.items()],
              "figures": {"confusion.png": "confusion.png", "montage.png": "montage.png"}}
    return out.finish(cfg, upstream, {
        "review": review,
        "cases": {c: {"file": f"cases/{c}.json", "prediction": f"predictions/{c}.nii.gz"} for c in results},
        "quarantine": quarantine,
        "artifacts": artifacts,
        "metrics": {k: v for k, v in metrics.items() if np.isfinite(v)},
        "headline": {k: metrics[k] for k in metrics if k.endswith(("mean_dice", "mean_hd95_mm"))
                     and np.isfinite(metrics[k])},
    })
