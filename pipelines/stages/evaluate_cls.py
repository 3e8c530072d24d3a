"""The evaluate stage for classification: the trained fold's validation cases and the test holdout.

Reads the preprocessed case files (the same inputs the model was trained on,
without augmentation) and writes, per split, under ``<split>/``:
predictions.csv (case, true, predicted, per-class probabilities), metrics.json,
confusion.json / confusion.csv / confusion.png (counts and row-normalized, class
names on the axes) and misclassified.png (each wrong case with both classes and
its probabilities).
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np

from medflow.models.metrics import classification_report, row_normalize
from medflow.models.runtimes import load_keras
from medflow.core.engine import StageDir, StageFailed


def predict_cases(predict, source, ids: list[str], samples: int, batch: int) -> np.ndarray:
    """(N, K) probabilities per case: the mean over ``samples`` unaugmented samples of each case."""
    items = [(c, k) for c in ids for k in range(samples)]
    out = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        x = np.stack([source.sample(c, 0, k, augment=False).image for c, k in chunk])
        out.append(np.asarray(predict(x), dtype=np.float64))
    probs = np.concatenate(out).reshape(len(ids), samples, -1).mean(1)
    return probs


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


def _misclassified_figure(source, ids, y, probs, classes, limit: int = 12):
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
        image = source.sample(ids[i], 0, 0, augment=False).image[..., 0]
        view = image[:, :, image.shape[2] // 2] if image.ndim == 3 else image
        ax.imshow(view.T, cmap="gray", origin="lower")
        probs_text = ", ".join(f"{c[:12]} {p:.2f}" for c, p in zip(classes, probs[i]))
        ax.set_title(f"{ids[i]}\ntrue {classes[y[i]]}\npred {classes[int(np.argmax(probs[i]))]}\n{probs_text}",
                     fontsize=7)
    fig.suptitle(f"misclassified: {len(wrong)} shown")
    return fig


def evaluate_split(split: str, ids, y, probs, classes, source, out: StageDir) -> dict:
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
    save_figure(_misclassified_figure(source, ids, y, probs, classes), out.path / split / "misclassified.png", dpi=80)
    return report


FILES = ("predictions.csv", "metrics.json", "confusion.json", "confusion.csv", "confusion.png", "misclassified.png")


def run(cfg, upstream, out: StageDir, ctx, info: dict):
    """Evaluate a classifier on the validation cases of its fold and on the test holdout."""
    from medflow.data.augment import Chain
    from medflow.data.loader import SampleSource
    from medflow.models.inference import keras_predictor
    from medflow.training.inputs import build_source

    pre, split = upstream["preprocess"], upstream["split"]
    classes = info["classes"]
    splits = {"val": sorted(info["val_cases"]),
              "test": sorted(c for c in json.loads(split.file("splits.json").read_text())["test"] if c in pre.cases)}
    splits = {k: v for k, v in splits.items() if v}
    if cfg.evaluate.split not in splits:
        raise StageFailed(f"no {cfg.evaluate.split} cases to evaluate (split.test_fraction is 0?)")
    out.prepare()
    ids_all = sorted({c for v in splits.values() for c in v})
    base = build_source(cfg, pre, ids_all, cache="none")
    source = SampleSource(base.store, base.sampler, Chain([]), run_seed=cfg.augment.seed + 1,
                          samples_per_case=cfg.train.val_samples_per_case)
    model = load_keras(upstream["train"].file("model.keras"))
    predict = keras_predictor(model)
    samples = 1 if cfg.loader.crop == "center" and cfg.loader.mode == "3d" else cfg.train.val_samples_per_case
    metrics, artifacts, summary = {}, [], {}
    with ctx.progress(len(ids_all), "evaluate") as bar:
        for name, ids in splits.items():
            y = [source.store.targets[c] for c in ids]
            probs = predict_cases(predict, source, ids, samples, cfg.evaluate.batch_size)
            report = evaluate_split(name, ids, y, probs, classes, source, out)
            summary[name] = report
            for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro_ovr"):
                metrics[f"{name}_{key}"] = report[key]
            for cname, stats in report["per_class"].items():
                for key in ("precision", "recall", "f1"):
                    metrics[f"{name}_{key}_{cname}"] = stats[key]
            artifacts += [f"{name}/{f}" for f in FILES]
            bar.update(len(ids))
    out.write_json("summary.json", {"classes": classes, "splits": splits, "reports": summary,
                                    "primary": cfg.evaluate.split})
    primary = cfg.evaluate.split
    return out.finish(cfg, upstream, {
        "cases": {c: {"split": s} for s, ids in splits.items() for c in ids},
        "quarantine": [],
        "artifacts": ["summary.json", *artifacts],
        "metrics": {k: v for k, v in metrics.items() if np.isfinite(v)},
        "headline": {k: metrics[k] for k in (f"{primary}_accuracy", f"{primary}_balanced_accuracy",
                                             f"{primary}_roc_auc_macro_ovr") if np.isfinite(metrics[k])},
    })
