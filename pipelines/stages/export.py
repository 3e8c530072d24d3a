"""Export stage: a self-contained inference bundle per trained model, registered in MLflow.

Reads:  train + evaluate (segmentation, classification) or train_recon + evaluate_recon (reconstruction)
Writes: <workspace>/exports/<pipeline>/<key>/ model.keras, saved_model/, model.onnx, plan.json (the whole
        inference path: preprocessing plan, windows, classes or CT geometry), parity.json,
        MODEL_CARD.md, then manifest.json (last, with the registry version and champion decision)

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


def exports_parent(cfg):
    return workspace_root() / "exports" / cfg.name


def volume_plan(cfg, family: str, classes: list[str], channels: list[str], input_shape: list[int],
                preprocess: dict) -> dict:
    """The inference path of a volume model (segmentation or classification) trained with ``cfg``."""
    return {
        "family": family, "classes": classes, "channels": channels, "input_shape": input_shape,
        "preprocess": {k: v for k, v in preprocess.items() if k not in ("classes", "channels", "task")},
        "window": {"mode": cfg.loader.mode, "patch_size": list(cfg.loader.patch_size),
                   "slice_axis": cfg.loader.slice_axis, "crop": cfg.loader.crop},
        "inference": {"overlap": cfg.evaluate.overlap, "batch_size": cfg.evaluate.batch_size,
                      "mirror_axes": list(cfg.evaluate.mirror_axes),
                      "samples": 1 if cfg.loader.crop == "center" else cfg.train.val_samples_per_case,
                      "seed": cfg.augment.seed},
        "selection": ({"metric": "best_val_dice", "stage": "train", "greater_is_better": True}
                      if family == "segmentation" else
                      {"metric": "val_balanced_accuracy", "stage": "evaluate", "greater_is_better": True}),
    }


def recon_plan(cfg, geometry: dict) -> dict:
    """The inference path of a sinogram-input reconstruction model: the geometry it was trained for."""
    return {"family": "reconstruction", "classes": [], "channels": [],
            "input_shape": [geometry["detectors"], len(geometry["angles_deg"])], "geometry": geometry,
            "selection": {"metric": "best_val_loss", "stage": "train_recon", "greater_is_better": False,
                          "loss": cfg.train.loss}}


def _segmentation_or_classification(cfg, upstream) -> tuple[dict, str]:
    train, evaluate = upstream["train"], upstream["evaluate"]
    info = json.loads(train.file("train.json").read_text())
    plan = volume_plan(cfg, info["task"], info["classes"], info["channels"], info["input_shape"], info["plan"])
    plan["data"] = {"source": str(cfg.dataset.root) if cfg.dataset else "", "train_cases": len(info["train_cases"]),
                    "val_cases": len(info["val_cases"]), "evaluated_cases": len(evaluate.cases), "fold": info["fold"]}
    return plan, str(train.file("model.keras"))


def _reconstruction(cfg, upstream) -> tuple[dict, str]:
    train = upstream["train_recon"]
    info = json.loads(train.file("train.json").read_text())
    plan = recon_plan(cfg, info["geometry"])
    plan["data"] = {"source": cfg.simulate.source if cfg.simulate.source == "ellipses" else str(cfg.simulate.root),
                    "train_images": info["train_images"], "val_images": info["val_images"],
                    "test_images": cfg.simulate.test}
    return plan, str(train.file(train.manifest["reconstructor"]))


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
    from medflow.models.runtimes import export_formats, load_keras, parity
    from medflow.inference.model_card import model_card

    if "train_recon" in upstream:
        plan, model_path = _reconstruction(cfg, upstream)
        scored, trained = upstream["evaluate_recon"], upstream["train_recon"]
    else:
        plan, model_path = _segmentation_or_classification(cfg, upstream)
        scored, trained = upstream["evaluate"], upstream["train"]
    registered = cfg.export.registered_model or cfg.name
    plan.update({"pipeline": cfg.name, "version": out.key[:16], "model": cfg.model.model_dump(mode="json"),
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
