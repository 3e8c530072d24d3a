"""The model card of an export bundle: what the model is, what it was trained and scored on, how to use it.

Plain Markdown built only from the bundle's plan and the upstream manifests,
so every figure in it is one the pipeline measured.
"""

from __future__ import annotations

import math


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _metric_rows(metrics: dict[str, dict]) -> list[str]:
    return [f"| {name} | {m['split']} | {_fmt(m['value'])} |" for name, m in sorted(metrics.items())]


def model_card(plan: dict, cfg, *, version: str, n_params: int, parity: dict[str, float]) -> str:
    """The Markdown model card.

    Args:
        plan: the bundle's plan (family, data, metrics, preprocessing or geometry).
        cfg: the pipeline config it was trained with (export.intended_use, export.limitations).
        version: the bundle's version (its stage key).
        n_params: the network's parameter count.
        parity: {runtime: max |runtime - keras|} on the parity inputs.
    """
    family, data = plan["family"], plan["data"]
    lines = [f"# {plan['pipeline']} ({family})", "",
             f"- Version: `{version}` (a hash of the config, the upstream stages and the code)",
             f"- Network: `{plan['model']['name']}` {plan['model']['params']}, {n_params:,} parameters",
             f"- Input: {_input_text(plan)}", f"- Output: {_output_text(plan)}", ""]
    lines += ["## Data", ""]
    lines += [f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in data.items()]
    lines += ["", "## Metrics", "", "| metric | split | value |", "| --- | --- | --- |", *_metric_rows(plan["metrics"])]
    lines += ["", f"Champion selection compares `{plan['selection']['metric']}` "
                  f"({'higher' if plan['selection']['greater_is_better'] else 'lower'} is better).", ""]
    lines += ["## Preprocessing carried by the model", ""]
    if family == "reconstruction":
        g = plan["geometry"]
        lines += [f"- Parallel beam, {len(g['angles_deg'])} angles from {g['angles_deg'][0]} to {g['angles_deg'][-1]} "
                  f"degrees, {g['detectors']} detectors, FBP with the {g['fbp_filter']} filter "
                  f"(frequency scaling {g.get('frequency_scaling', 1.0)}) inside the model graph",
                  f"- Sinogram units: {g.get('units', 'line integrals')}"]
    else:
        p, w = plan["preprocess"], plan["window"]
        lines += [f"- Reoriented to {p.get('orientation', 'RAS')}, resampled to {p['spacing']} mm",
                  f"- Normalization per channel: {dict(zip(plan['channels'], p['normalization']))}"
                  f" (CT window {p['ct_window']} HU, MR percentiles {p['mr_percentiles']})",
                  f"- Crop to foreground: {p['crop_to_foreground']} (margin {p['crop_margin']} voxels)",
                  f"- {w['mode'].upper()} windows of {w['patch_size']}"
                  + (f" along axis {w['slice_axis']}" if w["mode"] == "2d" else "")
                  + (f", {plan['inference']['overlap']:.0%} overlap, Gaussian blending" if family == "segmentation"
                     else f", {w['crop']} crop")]
    lines += ["", "## Runtimes", "", "| runtime | file | max abs difference from Keras |", "| --- | --- | --- |"]
    files = {"keras": "model.keras", "saved_model": "saved_model/", "onnx": "model.onnx"}
    lines += [f"| {rt} | `{files[rt]}` | {'reference' if rt == 'keras' else _fmt(parity.get(rt, float('nan')))} |"
              for rt in plan["formats"]]
    lines += ["", "## Use", "", "```",
              f"medflow predict --model {{this folder | models:/{plan['registered_model']}@champion}} "
              f"--input {'SINOGRAMS_DIR' if family == 'reconstruction' else 'NIFTI_DIR'} --output OUT_DIR", "```", "",
              "## Intended use", "", cfg.export.intended_use, "", "## Limits", ""]
    limits = [*cfg.export.limitations, *_automatic_limits(plan)]
    lines += [f"- {item}" for item in limits]
    return "\n".join(lines) + "\n"


def _input_text(plan: dict) -> str:
    if plan["family"] == "reconstruction":
        d, a = plan["input_shape"]
        return f"a ({d}, {a}) sinogram (detectors, angles) as `.npy`"
    return f"a NIfTI volume with {len(plan['channels'])} channel(s) ({', '.join(plan['channels'])}), any orientation"


def _output_text(plan: dict) -> str:
    if plan["family"] == "segmentation":
        return f"a label map on the input's own grid, classes {plan['classes']}"
    if plan["family"] == "classification":
        return f"probabilities of {plan['classes']}"
    s = plan["geometry"]["image_size"]
    return f"a {s}x{s} image ({plan['geometry'].get('units', 'attenuation')})"


def _automatic_limits(plan: dict) -> list[str]:
    data, out = plan["data"], []
    if "sample" in str(data.get("source", "")):
        out.append("Trained on medflow's synthetic sample data: a demonstration, not a model for real scans.")
    if plan["family"] == "reconstruction":
        out.append("Only sinograms of exactly this geometry (angles, detectors, units) are valid inputs.")
    else:
        out.append(f"Trained on {data.get('train_cases', '?')} case(s); performance outside that population "
                   "is unmeasured.")
    return out
