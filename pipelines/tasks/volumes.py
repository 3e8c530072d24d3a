"""What the two volume families (segmentation, classification) share: their plan, data note and card."""

from __future__ import annotations

from medflow.data.native import plan_from_json
from medflow.inference.plan import InferencePlan, InferenceSettings, Window


def volume_plan(task, cfg, facts: dict) -> InferencePlan:
    """The inference plan of a volume model trained with ``cfg``.

    Args:
        task: the family's Task.
        cfg: the pipeline config (loader: windows and crops; evaluate: inference settings; augment: seed).
        facts: classes, channels, input_shape, and preprocess (the preprocess stage's plan.json).
    """
    ld = cfg.loader
    return InferencePlan(
        family=task.family, classes=tuple(facts["classes"]), channels=tuple(facts["channels"]),
        input_shape=tuple(facts["input_shape"]),
        preprocess=plan_from_json(facts["preprocess"]),
        window=Window(mode=ld.mode, patch_size=tuple(ld.patch_size), slice_axis=ld.slice_axis, crop=ld.crop),
        inference=inference_settings(cfg),
        selection=dict(task.selection),
        # SNOMED CT (or other) codes of the classes, from dataset.json's label_codes: a DICOM SEG's segments
        info={"class_codes": codes} if (codes := facts["preprocess"].get("class_codes")) else {})


def inference_settings(cfg) -> InferenceSettings:
    """The inference pass's settings from ``cfg`` (evaluate's section; the crop count follows the loader)."""
    ev = cfg.evaluate
    return InferenceSettings(overlap=ev.overlap, batch_size=ev.batch_size, mirror_axes=tuple(ev.mirror_axes),
                             samples=1 if cfg.loader.crop == "center" else cfg.train.val_samples_per_case,
                             seed=cfg.augment.seed)


def volume_export_data(cfg, info: dict, evaluated: int) -> dict:
    return {"source": str(cfg.dataset.root) if cfg.dataset else "", "train_cases": len(info["train_cases"]),
            "val_cases": len(info["val_cases"]), "evaluated_cases": evaluated, "fold": info["fold"]}


def volume_card(plan: dict, output: str, windows: str) -> dict:
    """The card parts of a volume model (see Task.card); ``windows`` ends the window line."""
    p, w = plan["preprocess"], plan["window"]
    carried = [f"Reoriented to {p.get('orientation', 'RAS')}, resampled to {p['spacing']} mm",
               f"Normalization per channel: {dict(zip(plan['channels'], p['normalization']))}"
               f" (CT window {p['ct_window']} HU, MR percentiles {p['mr_percentiles']})",
               f"Crop to foreground: {p['crop_to_foreground']} (margin {p['crop_margin']} voxels)",
               f"{w['mode'].upper()} windows of {w['patch_size']}"
               + (f" along axis {w['slice_axis']}" if w["mode"] == "2d" else "") + windows]
    text = f"a NIfTI volume with {len(plan['channels'])} channel(s) ({', '.join(plan['channels'])}), any orientation"
    limits = [f"Trained on {plan['data'].get('train_cases', '?')} case(s); performance outside that population "
              "is unmeasured."]
    return {"input": text, "output": output, "carried": carried, "predict_input": "NIFTI_DIR", "limits": limits}


def volume_experiment_plan(fp: dict, machine, budget_s: float, *, whole_volume: bool) -> dict:
    """:meth:`Task.experiment_plan` for volume datasets: the rules on the ingest stage's fingerprint ``fp``."""
    from medflow.planning.rules import plan_volumes

    out = plan_volumes(fp, machine, budget_s, whole_volume=whole_volume)
    spacing = " x ".join(f"{s:g}" for s in fp["spacing_ras"]["median"])
    extent = " x ".join(f"{e:.0f}" for e in fp["extent_mm"]["median"])
    return {**out, "data": f"{fp['n_cases']} cases, median spacing {spacing} mm, median foreground {extent} mm (RAS)"}
