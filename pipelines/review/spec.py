"""The review section of an evaluate manifest, and the names runs and metrics get in MLflow.

An evaluate stage's manifest carries ``review``::

    {"split": "test", "baseline": "multi_otsu",
     "metrics": [{"name": "mean_dice", "value": 0.94, "baseline": 0.82, "greater_is_better": true}, ...],
     "figures": {"confusion.png": "confusion.png", "montage.png": "montage.png"},   # figure name -> stage file
     "table": "per_case.csv"}                                                       # one row per case

A train stage's manifest carries ``figures`` only. The tracker logs the figures under
``figures/<name>``, the table as an MLflow table, and the metrics on the parent run as
``<split>/<name>`` and ``<split>/baseline/<name>``, so a network and its baseline sort together.
"""

from __future__ import annotations

import math

MODEL_STAGES = ("train", "train_recon", "evaluate", "evaluate_recon", "export")
SEP = " · "


def run_label(cfg, stage: str | None = None, fold: int | None = None) -> str:
    """What a run is, in words: ``segmentation · unet2d · fold 0`` (parent), ``... · evaluate`` (stage).

    Data stages (ingest, preprocess, split, simulate) do not depend on the model or fold, so their
    names carry only the pipeline.
    """
    parts = [cfg.name]
    if stage is None or stage in MODEL_STAGES:
        parts += [cfg.model.name, f"fold {cfg.train.fold if fold is None else fold}"]
    if stage is not None:
        parts.append(stage)
    return SEP.join(parts)


def comparison(name: str, value: float, baseline: float | None = None, greater_is_better: bool = True) -> dict:
    """One headline figure of the network beside its baseline's (None when there is no baseline)."""
    return {"name": name, "value": float(value), "baseline": None if baseline is None else float(baseline),
            "greater_is_better": bool(greater_is_better)}


def parent_metrics(review: dict) -> dict[str, float]:
    """``{split}/{name}`` and ``{split}/baseline/{name}`` for every finite figure of a review."""
    split, out = review["split"], {}
    for m in review.get("metrics", []):
        for key, value in ((f"{split}/{m['name']}", m["value"]), (f"{split}/baseline/{m['name']}", m["baseline"])):
            if value is not None and math.isfinite(value):
                out[key] = float(value)
    return out


def verdict(review: dict) -> str:
    """One line: does the network beat its baseline on the first (headline) figure?"""
    if not review.get("metrics"):
        return "no headline figures"
    m = review["metrics"][0]
    value, base = m["value"], m["baseline"]
    if base is None or not review.get("baseline"):
        return f"{m['name']} {value:.4g} on {review['split']}; no baseline to compare with"
    if not (math.isfinite(value) and math.isfinite(base)):
        return f"{m['name']}: not comparable (network {value}, {review['baseline']} {base})"
    better = value > base if m["greater_is_better"] else value < base
    diff = value - base
    word = "beats" if better else ("ties with" if diff == 0 else "loses to")
    return (f"the network {word} the {review['baseline']} baseline on {review['split']} {m['name']}: "
            f"{value:.4g} vs {base:.4g} ({diff:+.4g})")


def headline_row(pipeline: str, model: str, review: dict | None) -> dict:
    """One row of the run's closing table: the headline figure of a pipeline's evaluate stage beside its
    baseline's. ``margin`` is the network's advantage (positive when it is better, whichever way is better);
    ``verdict`` is ``beats``, ``ties``, ``loses``, ``no baseline`` or, with no review, ``not evaluated``."""
    row = {"pipeline": pipeline, "model": model, "metric": "", "network": None, "baseline": None,
           "baseline_name": "", "margin": None, "verdict": "not evaluated"}
    if not review or not review.get("metrics"):
        return row
    m = review["metrics"][0]
    row.update(metric=f"{review['split']} {m['name']}", network=m["value"], baseline=m["baseline"],
               baseline_name=review.get("baseline") or "")
    if m["baseline"] is None or not review.get("baseline"):
        row["verdict"] = "no baseline"
    elif not (math.isfinite(m["value"]) and math.isfinite(m["baseline"])):
        row["verdict"] = "not comparable"
    else:
        margin = (m["value"] - m["baseline"]) * (1 if m["greater_is_better"] else -1)
        row.update(margin=margin, verdict="beats" if margin > 0 else ("ties" if margin == 0 else "loses"))
    return row


def headline_table(rows: list[dict]) -> str:
    """The closing table, aligned for a terminal or a log: pipeline | model | headline | network | baseline |
    margin | verdict (one line per pipeline of the invocation)."""
    num = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
    cells = [["pipeline", "model", "headline", "network", "baseline", "margin", "verdict"]]
    cells += [[r["pipeline"], r["model"], r["metric"], num(r["network"]),
               f"{num(r['baseline'])} {r['baseline_name']}".strip(),
               "" if r["margin"] is None else f"{r['margin']:+.4g}", r["verdict"]] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)
