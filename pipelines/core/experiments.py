"""Runs made of several trainings under one parent run: k-fold cross-validation and model comparison.

The shared stages (ingest, preprocess, split) run once; each fold or model then
runs train + evaluate inside its own nested MLflow run. Stage folders are the
ordinary cached ones (the fold and the model are part of the train key), so a
fold trained before is reused, and an interrupted experiment resumes.
The aggregates go on the parent run and into ``<workspace>/reports/``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from medflow.core.catalog import STAGES
from medflow.core.engine import StageFailed
from medflow.core.progress import log
from medflow.core.runner import NullTracker, log_report, make_context, plan_stages, run_stages
from medflow.data.atomic import write_atomic
from medflow.review.spec import SEP, run_label

PER_RUN = ("train", "evaluate", "train_recon", "evaluate_recon")  # a volume task's pair, or reconstruction's
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro_ovr")


def _with(cfg, section: str, **changes):
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=changes)})


def _check(cfg) -> None:
    names = [s.name for s in plan_stages(cfg)]
    if "evaluate" not in names and "evaluate_recon" not in names:
        raise StageFailed("cross-validation and comparison need the evaluate stage in the pipeline's stages")


def _summary(results) -> tuple[dict, Path]:
    folder = Path(next(r.path for r in results if r.name in ("evaluate", "evaluate_recon")))
    return json.loads((folder / "summary.json").read_text()), folder


def _report(results) -> tuple[dict, Path]:
    summary, folder = _summary(results)
    if "reports" not in summary:
        raise StageFailed("cross-validation aggregates classification reports; "
                          "this pipeline's evaluate stage scored another task")
    return summary, folder


def _table(rows: list[dict]) -> tuple[str, str]:
    """(CSV, Markdown) of a list of flat dicts with the same keys."""
    keys = list(rows[0])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in rows:
        w.writerow([fmt(r[k]) for k in keys])
    md = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    md += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return buf.getvalue(), "\n".join(md) + "\n"


def _per_run(cfg):
    return [s for s in plan_stages(cfg) if s.name in PER_RUN]


def _shared(cfg, tracker, ctx, force):
    outputs: dict = {}
    # Only what the per-run stages read from, transitively: an export follows the one model that
    # `medflow run` trains, not every fold or candidate.
    needed, todo = set(), [d for s in _per_run(cfg) for d in s.inputs]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(STAGES[name].inputs)
    stages = [s for s in plan_stages(cfg) if s.name in needed - set(PER_RUN)]
    return outputs, run_stages(cfg, stages, outputs, tracker, ctx, force=force)


def _save(files: dict[str, str | bytes], tracker, parent_id, name: str) -> Path:
    from medflow.core.workspace import workspace_root

    dest = workspace_root() / "reports" / name
    dest.mkdir(parents=True, exist_ok=True)
    for fname, content in files.items():
        with write_atomic(dest / fname) as tmp:
            tmp.write_bytes(content if isinstance(content, bytes) else content.encode())
    if parent_id:
        tracker.log_to(parent_id, artifacts=[dest / f for f in files], folder=name.split("/")[0])
    return dest


def run_cv(cfg, *, tracker=None, strict=False, workers=None, force=False, config_path=None, profile=None) -> dict:
    """k-fold cross-validation: fold f trains on the other folds and is scored on its own held-out cases.

    Returns:
        {'folds': [per-fold report], 'mean': {metric: mean}, 'sd': {...}, 'confusion': summed (K, K),
         'parent_run_id', 'report_dir'}.
    """
    from medflow.tasks.figures import confusion_figure, save_figure

    _check(cfg)
    if cfg.split.folds < 2:
        raise StageFailed(f"cross-validation needs split.folds >= 2 (it is {cfg.split.folds})")
    tracker = tracker or NullTracker()
    ctx = make_context(cfg, tracker, strict, workers)
    label = SEP.join([cfg.name, cfg.model.name, f"{cfg.split.folds}-fold cv"])
    with tracker.pipeline(cfg, config_path, profile, run_name=label, kind="cv") as parent:
        parent_id = parent.info.run_id if parent is not None else None
        outputs, _ = _shared(cfg, tracker, ctx, force)
        folds, confusion, classes = [], None, None
        for f in range(cfg.split.folds):
            cfg_f = _with(_with(cfg, "train", fold=f), "evaluate", split="val")
            log(f"[cv] fold {f + 1}/{cfg.split.folds}")
            with tracker.group(run_label(cfg_f), {"medflow.fold": str(f), "medflow.kind": "cv-fold"}) as run:
                fold_outputs = dict(outputs)
                summary, _ = _report(run_stages(cfg_f, _per_run(cfg_f), fold_outputs, tracker, ctx, force=force))
                log_report(cfg_f, fold_outputs, tracker, run.info.run_id if run is not None else None)
                report = summary["reports"]["val"]
                if run is not None:
                    tracker.log_to(run.info.run_id, {f"val_{m}": report[m] for m in METRICS
                                                     if np.isfinite(report[m])})
            classes = summary["classes"]
            cm = np.array(report["confusion"])
            confusion = cm if confusion is None else confusion + cm
            folds.append({"fold": f, "cases": report["n"], **{m: report[m] for m in METRICS}})
        mean = {m: float(np.nanmean([r[m] for r in folds])) for m in METRICS}
        sd = {m: float(np.nanstd([r[m] for r in folds], ddof=1)) for m in METRICS}
        folds_csv, folds_md = _table(folds + [{"fold": "mean", "cases": sum(r["cases"] for r in folds), **mean},
                                              {"fold": "sd", "cases": "", **sd}])
        fig = confusion_figure(confusion, classes, f"{cfg.split.folds}-fold CV: summed over the held-out folds")
        png = io.BytesIO()
        save_figure(fig, png)
        result = {"classes": classes, "folds": folds, "mean": mean, "sd": sd, "confusion": confusion.tolist()}
        dest = _save({"folds.csv": folds_csv, "folds.md": folds_md, "summary.json": json.dumps(result, indent=1),
                      "confusion.png": png.getvalue()}, tracker, parent_id, f"cv/{cfg.name}-{parent_id or 'local'}")
        if parent_id:
            tracker.log_to(parent_id, {**{f"cv_{m}_mean": v for m, v in mean.items() if np.isfinite(v)},
                                       **{f"cv_{m}_sd": v for m, v in sd.items() if np.isfinite(v)}})
    return {**result, "parent_run_id": parent_id, "report_dir": str(dest), "folds_md": folds_md}


def run_compare(cfg, models=None, *, tracker=None, strict=False, workers=None, force=False, config_path=None,
                profile=None) -> dict:
    """Train and evaluate each model of ``cfg.compare.models`` (or ``models``, by name) on the same split.

    The rows' figures and the baselines scored beside the networks come from the task
    (:meth:`medflow.tasks.base.Task.compare_scores`): accuracy figures for classifiers, PSNR and SSIM
    beside FBP and TV for reconstruction, which also gets one figure of every model on the same images.
    """
    from medflow.models.runtimes import load_keras
    from medflow.tasks import TASKS
    from medflow.tasks.figures import save_figure

    _check(cfg)
    variants = [m for m in cfg.compare.models if not models or m.name in models]
    if not variants:
        raise StageFailed("nothing to compare: list compare.models in the pipeline YAML"
                          + (f" (asked for {', '.join(models)})" if models else ""))
    families = {cfg.variant(v).model.family for v in variants}
    if len(families) > 1:
        raise StageFailed(f"compare.models mixes task families ({', '.join(sorted(families))}); compare one")
    task = TASKS[families.pop()]
    tracker = tracker or NullTracker()
    ctx = make_context(cfg, tracker, strict, workers)
    rows, evaluated = [], {}
    primary = cfg.evaluate.split
    label = SEP.join([cfg.name, f"comparison of {len(variants)} models"])
    with tracker.pipeline(cfg, config_path, profile, run_name=label, kind="comparison") as parent:
        parent_id = parent.info.run_id if parent is not None else None
        outputs, _ = _shared(cfg, tracker, ctx, force)
        for variant in variants:
            cfg_m = cfg.variant(variant)
            log(f"[compare] {variant.name}")
            with tracker.group(run_label(cfg_m), {"medflow.model": variant.name,
                                                  "medflow.kind": "comparison-model"}) as run:
                model_outputs = dict(outputs)
                results = run_stages(cfg_m, _per_run(cfg_m), model_outputs, tracker, ctx, force=force)
                log_report(cfg_m, model_outputs, tracker, run.info.run_id if run is not None else None)
            summary, folder = _summary(results)
            evaluated[variant.name] = folder
            try:
                scores, baselines = task.compare_scores(summary, primary)
            except ValueError as err:
                raise StageFailed(str(err)) from None
            train = Path(next(r.path for r in results if r.name in ("train", "train_recon")))
            info = json.loads((train / "train.json").read_text())
            row = {"model": variant.name, "parameters": load_keras(train / "model.keras").count_params(),
                   "best_epoch": info["best_epoch"], **scores}
            with open(train / "history.csv") as fh:  # the training's own time, also when reused
                row["train_seconds"] = round(sum(float(h.get("epoch_seconds") or 0) for h in csv.DictReader(fh)), 1)
            rows.append(row)
        # Baselines (normative; FBP and TV) are the same whatever the network: one row each.
        for name, scores in baselines:
            rows.append({"model": f"{name} (baseline)", "parameters": "", "best_epoch": "", **scores,
                         "train_seconds": ""})
        csv_text, md = _table(rows)
        files = {"comparison.csv": csv_text, "comparison.md": md, "comparison.json": json.dumps(rows, indent=1)}
        fig = task.compare_figure(outputs, evaluated)
        if fig is not None:
            png = io.BytesIO()
            save_figure(fig, png)
            files["comparison.png"] = png.getvalue()
        dest = _save(files, tracker, parent_id, f"comparison/{cfg.name}-{parent_id or 'local'}")
        metric = next(k for k in (f"{primary}_{task.compare_metric}", task.compare_metric) if k in rows[0])
        networks = rows[:len(variants)]
        best = max(networks, key=lambda r: -np.inf if np.isnan(r[metric]) else r[metric])
        if parent_id:
            tracker.log_to(parent_id, {  # "normative (baseline)" logs as normative_...: MLflow names take no brackets
                f"{r['model'].split(' ')[0]}_{metric}": r[metric] for r in rows if np.isfinite(r[metric])})
    return {"rows": rows, "best": best["model"], "metric": metric, "parent_run_id": parent_id,
            "report_dir": str(dest), "table_md": md}
