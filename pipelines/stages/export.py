"""Export stage: a self-contained inference bundle per trained model, registered in MLflow.

Reads:  a train stage (the model named by its manifest's inference_model) and its evaluate stage
        (plan.json: the inference plan evaluate ran, and the scores)
Writes: <workspace>/exports/<pipeline>/<key>/ model.keras, saved_model/, model.onnx, plan.json (the
        evaluated inference plan plus provenance), parity.json, MODEL_CARD.md, then manifest.json (last,
        with the registry version and champion decision)

The key (the bundle's version) hashes the config, the trained model's manifest
and the code, so re-running an unchanged pipeline exports nothing new. Every
exported runtime is checked against the Keras model on fixed inputs before the
bundle counts as written; then the bundle is logged as an MLflow model and
registered, and the ``champion`` alias moves only if it beats the champion on
the validation metric.
"""

from __future__ import annotations

import json

import numpy as np

from medflow.core.engine import StageDir, StageFailed
from medflow.core.workspace import workspace_root
from medflow.inference.plan import PlanError, load_plan
from medflow.stages.evaluate import trained as trained_output


def exports_parent(cfg):
    return workspace_root() / "exports" / cfg.name


def _metrics(trained: dict, scored: dict) -> dict[str, dict]:
    """{name: {"split", "value"}}: the best epoch's validation figures and the evaluate stage's figures."""
    out = {k: {"split": "val", "value": v} for k, v in trained.items() if k.startswith("best_val_")}
    for k, v in scored.items():
        if k in ("cases", "quarantined") or k.endswith("_per_s"):
            continue
        out[k] = {"split": "val" if k.startswith("val_") or "_val_" in k else "test", "value": v}
    return out


def parity_inputs(input_shape, n: int = 2, seed: int = 0) -> np.ndarray:
    """Fixed float32 inputs (n, *input_shape) for the runtime parity check."""
    return np.random.default_rng(seed).normal(size=(n, *input_shape)).astype(np.float32)


def run(cfg, upstream, out: StageDir, ctx):
    """Write, check, log and register the bundle of the trained model."""
    from medflow.inference.model_card import model_card
    from medflow.models.runtimes import export_formats, load_keras, parity
    from medflow.tasks import task_for

    trained = trained_output(upstream)
    (scored,) = [o for o in upstream.values() if o is not trained]
    try:
        evaluated = load_plan(scored.path)  # the plan whose scores these are
        task = task_for(evaluated.family, str(scored.path))
    except (PlanError, ValueError) as err:
        raise StageFailed(str(err)) from None
    info = json.loads(trained.file("train.json").read_text())
    model_path = trained.file(trained.manifest["inference_model"])
    registered = cfg.export.registered_model or cfg.name
    plan = evaluated.to_json()
    plan.update({"data": task.export_data(cfg, info, scored),
                 "pipeline": cfg.name, "version": out.key[:16], "model": cfg.model.model_dump(mode="json"),
                 "formats": list(cfg.export.formats), "registered_model": registered,
                 "metrics": _metrics(trained.manifest.get("metrics", {}),
                                     {**scored.manifest.get("metrics", {}), **scored.manifest.get("headline", {})})})
    selection = plan["selection"]
    if selection["metric"] not in plan["metrics"]:
        raise StageFailed(f"{selection['stage']}: no {selection['metric']} metric to select the champion by")
    selection["value"] = float(plan["metrics"][selection["metric"]]["value"])
    out.prepare()
    model = load_keras(model_path)
    export_formats(model, out.path, tuple(cfg.export.formats))
    check = parity(out.path, parity_inputs(plan["input_shape"]), tuple(f for f in cfg.export.formats if f != "keras"))
    drift, allowed = check["max_abs_diff"], cfg.export.parity_tolerance * check["scale"]
    bad = {rt: d for rt, d in drift.items() if not d <= allowed}
    if bad:
        raise StageFailed(f"{out.path}: exported runtimes disagree with Keras beyond {allowed:g}: {bad}")
    out.write_json("parity.json", {**check, "tolerance": cfg.export.parity_tolerance, "allowed": allowed,
                                   "inputs": "seeded standard normal, batch 2"})
    out.write_json("plan.json", plan)
    out.write_text("MODEL_CARD.md", model_card(plan, cfg, version=out.key[:16], n_params=model.count_params(),
                                               parity=drift))
    registry = None
    if cfg.export.to_registry:
        registry = ctx.register_export(out.path, {"name": registered, "runtime": cfg.export.runtime, **selection})
    return out.finish(cfg, upstream, {
        "cases": {}, "quarantine": [], "family": plan["family"], "bundle": str(out.path),
        "registry": registry,
        "artifacts": ["plan.json", "parity.json", "MODEL_CARD.md"],
        "metrics": {f"parity_{rt}": d for rt, d in drift.items()},
    })
