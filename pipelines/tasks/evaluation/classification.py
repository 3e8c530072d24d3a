"""Classification evaluation: the trained fold's validation cases and the test holdout.

Every case is read from its original files and goes through
:meth:`Classification.infer`, what ``medflow predict`` runs on the exported
model: preprocessing without a label, the plan's crops, the mean probability.
Writes, per split, under ``<split>/``:
predictions.csv (case, true, predicted, per-class probabilities), metrics.json,
confusion.json / confusion.csv / confusion.png (counts and row-normalized, class
names on the axes), misclassified.png (each wrong case with both classes and
its probabilities) and cases.png (every case, right or wrong).
"""

from __future__ import annotations

import csv
import io
import json
import time

import numpy as np

from medflow.core.engine import StageDir, StageFailed
from medflow.models.metrics import classification_report, row_normalize
from medflow.models.registry import LESION, PROBABILITIES
from medflow.review.spec import comparison
from medflow.tasks.evaluation.lesions import (
    explanation_figures,
    lesion_figures,
    montage_figure,
    montage_rows,
    true_masks,
)
from medflow.tasks.explanations import ExplainSettings, explain_crops


def read_case(record: dict):
    """The raw volume of an ingested case record, as inference sees it."""
    from medflow.data.images import read_image
    from medflow.tasks.base import VolumeCase

    images = [read_image(p, **record.get("read", {})) for p in record["images"]]
    return VolumeCase([v.data for v in images], images[0].affine, record["images"][0])


def _predictions_csv(ids, y, probs, classes) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "true_class", "predicted_class", *(f"p_{c}" for c in classes)])
    for cid, t, p in zip(ids, y, probs):
        w.writerow([cid, classes[t], classes[int(np.argmax(p))], *(f"{v:.6f}" for v in p)])
    return buf.getvalue()


def _confusion_csv(cm, classes) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, cm):
        w.writerow([name, *row])
    return buf.getvalue()


def _misclassified_figure(views, ids, y, probs, classes, limit: int = 12):
    """Central slice (axial for volumes) of each misclassified case, titled with classes and probabilities."""
    from medflow.tasks.figures import pyplot

    plt = pyplot()
    wrong = [i for i in range(len(ids)) if int(np.argmax(probs[i])) != y[i]][:limit]
    cols = min(4, max(1, len(wrong)))
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.ravel():
        ax.axis("off")
    if not wrong:
        axes[0, 0].text(0.5, 0.5, "no misclassified case", ha="center", va="center")
    for ax, i in zip(axes.ravel(), wrong):
        image = views[ids[i]][..., 0]  # the first crop the network saw, channel 0
        view = image[:, :, image.shape[2] // 2] if image.ndim == 3 else image
        ax.imshow(view.T, cmap="gray", origin="lower")
        probs_text = ", ".join(f"{c[:12]} {p:.2f}" for c, p in zip(classes, probs[i]))
        ax.set_title(f"{ids[i]}\ntrue {classes[y[i]]}\npred {classes[int(np.argmax(probs[i]))]}\n{probs_text}",
                     fontsize=7)
    fig.suptitle(f"misclassified: {len(wrong)} shown")
    return fig


def evaluate_split(split: str, ids, y, probs, classes, views, out: StageDir) -> dict:
    """Write one split's predictions, metrics, confusion matrix and misclassified montage; return its report."""
    from medflow.tasks.figures import confusion_figure, save_figure

    report = classification_report(y, probs, classes)
    cm = np.array(report["confusion"])
    out.write_text(f"{split}/predictions.csv", _predictions_csv(ids, y, probs, classes))
    out.write_json(f"{split}/metrics.json", report)
    out.write_json(f"{split}/confusion.json", {"classes": classes, "rows": "true class",
                                               "columns": "predicted class", "counts": cm.tolist(),
                                               "row_normalized": row_normalize(cm).tolist()})
    out.write_text(f"{split}/confusion.csv", _confusion_csv(cm, classes))
    title = (f"{split}: {len(ids)} cases, accuracy {report['accuracy']:.3f}, "
             f"balanced {report['balanced_accuracy']:.3f}")
    save_figure(confusion_figure(cm, classes, title), out.path / split / "confusion.png")
    save_figure(_misclassified_figure(views, ids, y, probs, classes), out.path / split / "misclassified.png", dpi=80)
    save_figure(_cases_figure(views, ids, y, probs, classes, split), out.path / split / "cases.png", dpi=80)
    return report


def _cases_figure(views, ids, y, probs, classes, split: str, limit: int = 36):
    """Every case of the split (up to ``limit``): central slice, true and predicted class, its probability."""
    from medflow.review.figures import case_grid_figure

    shown = list(range(len(ids)))[:limit]
    titles, correct = [], []
    for i in shown:
        k = int(np.argmax(probs[i]))
        titles.append(f"{ids[i]}\ntrue {classes[y[i]]}\npred {classes[k]} (p {probs[i][k]:.2f})")
        correct.append(k == y[i])
    return case_grid_figure([views[ids[i]][..., 0] for i in shown], titles, correct,
                            f"{split}: {sum(correct)}/{len(shown)} right"
                            + (f" (first {limit} of {len(ids)} shown)" if len(ids) > limit else ""))


def _normative(cfg, plan, task, ingest, pre, info, splits, views, out, metrics, artifacts, workers: int) -> dict:
    """Fit the normative baseline on the fold's training cases (their crops as the network sees them) and
    score it on each split like the network; returns {split: report}."""
    from medflow.models.normative import fit_normative

    ev, classes = cfg.evaluate, list(plan.classes)
    normal = cfg.dataset.normal_class
    if normal not in classes:
        raise StageFailed(f"evaluate.baseline: normative needs dataset.normal_class, one of {classes}; got {normal!r}")
    train = sorted(info["train_cases"])
    volumes = [task.crops(plan, read_case(json.loads(ingest.file(ingest.cases[c]["file"]).read_text())))[0][..., 0]
               for c in train]
    spacing = [float(s) for s in plan.preprocess.spacing]
    highpass = None if ev.normative_highpass_mm is None else [ev.normative_highpass_mm / s for s in spacing]
    held_out = sorted({c for ids in splits.values() for c in ids})
    start = time.monotonic()
    print(f"[evaluate] normative baseline: {len(train)} training and {len(held_out)} held-out subjects"
          + (" registered onto a normal training subject" if ev.normative_register else ""), flush=True)
    try:
        model = fit_normative(volumes, [classes.index(pre.cases[c]["target"]) for c in train], len(classes),
                              classes.index(normal), sigma_vox=[ev.normative_sigma_mm / s for s in spacing],
                              k=ev.normative_top_k, highpass_vox=highpass,
                              spacing=spacing if ev.normative_register else None, workers=workers)
    except ValueError as err:
        raise StageFailed(f"normative baseline: {err}") from None
    scored = dict(zip(held_out, model.predict([views[c][..., 0] for c in held_out], workers)))  # one worker pool
    print(f"[evaluate] normative baseline fitted and scored in {time.monotonic() - start:.1f} s", flush=True)
    reports = {}
    for name, ids in splits.items():
        y = [classes.index(pre.cases[c]["target"]) for c in ids]
        probs = np.stack([scored[c] for c in ids])
        reports[name] = evaluate_split(f"{name}/normative", ids, y, probs, classes, views, out)
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro_ovr"):
            metrics[f"normative_{name}_{key}"] = reports[name][key]
        artifacts += [f"{name}/normative/{f}" for f in FILES]
    return reports


def _lesion_outputs(name, ids, y, probs, classes, views, maps, lesion_maps, masks, known, method, layer, per_group,
                    out, metrics, artifacts) -> dict:
    """The split's lesion and explanation figures (in its report and metrics) and its explanation montage."""
    from medflow.tasks.figures import save_figure

    extra = {}
    if known and lesion_maps:
        extra["lesions"] = lesion_figures({c: lesion_maps[c] for c in ids}, {c: masks[c] for c in ids})
    if known and maps:
        extra["explanation"] = {"method": method, "layer": layer, **explanation_figures({c: maps[c] for c in ids},
                                                                          {c: masks[c] for c in ids})}
    for group in extra.values():
        for key, value in group.items():
            if isinstance(value, float):
                metrics[f"{name}_{key}"] = value
    if maps:
        rows = montage_rows(ids, y, probs, classes, views, maps, lesion_maps, masks, per_group)
        save_figure(montage_figure(rows, method, f"{name}: explanations ({method}{f' on {layer}' if layer else ''})"),
                    out.path / name / "explanations.png", dpi=80)
        artifacts.append(f"{name}/explanations.png")
    return extra


FILES = ("predictions.csv", "metrics.json", "confusion.json", "confusion.csv", "confusion.png", "misclassified.png",
         "cases.png")
REVIEWED = (("balanced_accuracy", True), ("roc_auc_macro_ovr", True), ("accuracy", True), ("macro_f1", True))


def run(cfg, upstream, out: StageDir, ctx, plan, net):
    """Evaluate a classifier (``net``, run by ``plan``) on the validation cases of its fold and the test holdout."""
    from medflow.tasks import TASKS

    task = TASKS[plan.family]
    ingest, pre, split = upstream["ingest"], upstream["preprocess"], upstream["split"]
    info = json.loads(upstream["train"].file("train.json").read_text())
    classes = list(plan.classes)
    splits = {"val": sorted(info["val_cases"]),
              "test": sorted(c for c in json.loads(split.file("splits.json").read_text())["test"] if c in pre.cases)}
    splits = {k: v for k, v in splits.items() if v}
    if cfg.evaluate.split not in splits:
        raise StageFailed(f"no {cfg.evaluate.split} cases to evaluate (split.test_fraction is 0?)")
    out.prepare()
    ids_all = sorted({c for v in splits.values() for c in v})
    probs_by_case, views, lesion_maps, maps = {}, {}, {}, {}
    metrics, artifacts, summary = {}, [], {}
    settings = None if cfg.evaluate.explain == "none" else ExplainSettings.from_config(cfg.evaluate)
    method = layer = None
    with ctx.progress(len(ids_all), "evaluate") as bar:
        for case_id in ids_all:
            case = read_case(json.loads(ingest.file(ingest.cases[case_id]["file"]).read_text()))
            crops = task.crops(plan, case)  # preprocessed once: the same as task.infer(plan, net, case)
            out_net = task.forward(plan, net, crops)
            probs_by_case[case_id] = out_net[PROBABILITIES].mean(axis=0)
            views[case_id] = crops[0]
            if LESION in out_net:
                lesion_maps[case_id] = out_net[LESION][0]
            if settings is not None and plan.window.mode == "3d":
                try:
                    explained, method, layer = explain_crops(plan, net, crops[:1], settings)
                except ValueError as err:
                    raise StageFailed(f"evaluate.explain: {err}") from None
                maps[case_id] = explained[0]
            bar.update(1)
        masks = true_masks(cfg, plan, pre, ids_all) if plan.window.mode == "3d" else {}
        known = any(m is not None and m.any() for m in masks.values())
        for name, ids in splits.items():
            y = [classes.index(pre.cases[c]["target"]) for c in ids]
            probs = np.stack([probs_by_case[c] for c in ids])
            report = evaluate_split(name, ids, y, probs, classes, views, out)
            summary[name] = report
            for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro_ovr"):
                metrics[f"{name}_{key}"] = report[key]
            for cname, stats in report["per_class"].items():
                for key in ("precision", "recall", "f1"):
                    metrics[f"{name}_{key}_{cname}"] = stats[key]
            artifacts += [f"{name}/{f}" for f in FILES]
            report.update(_lesion_outputs(name, ids, y, probs, classes, views, maps, lesion_maps, masks, known,
                                          method, layer, cfg.evaluate.montage_cases, out, metrics, artifacts))
    baselines = {}
    if cfg.evaluate.baseline == "normative":
        baselines["normative"] = _normative(cfg, plan, task, ingest, pre, info, splits, views, out, metrics,
                                            artifacts, ctx.workers)
    out.write_json("summary.json", {"classes": classes, "splits": splits, "reports": summary,
                                    "primary": cfg.evaluate.split, "baselines": baselines})
    primary = cfg.evaluate.split
    base = next(iter(baselines), None)
    review = {"split": primary, "baseline": base, "table": f"{primary}/predictions.csv",
              "metrics": [comparison(k, summary[primary][k], baselines[base][primary][k] if base else None, g)
                          for k, g in REVIEWED]
              + [comparison(f"recall_{c}", st["recall"], baselines[base][primary]["per_class"][c]["recall"]
                            if base else None) for c, st in summary[primary]["per_class"].items()],
              "figures": {"confusion.png": f"{primary}/confusion.png", "cases.png": f"{primary}/cases.png",
                          **({"explanations.png": f"{primary}/explanations.png"}
                             if f"{primary}/explanations.png" in artifacts else {})}}
    return out.finish(cfg, upstream, {
        "review": review,
        "cases": {c: {"split": s} for s, ids in splits.items() for c in ids},
        "quarantine": [],
        "artifacts": ["summary.json", "plan.json", *artifacts],
        "metrics": {k: v for k, v in metrics.items() if np.isfinite(v)},
        "headline": {k: metrics[k] for k in (f"{primary}_accuracy", f"{primary}_balanced_accuracy",
                                             f"{primary}_roc_auc_macro_ovr") if np.isfinite(metrics[k])},
    })
