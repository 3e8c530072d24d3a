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
    from medflow.tasks import task_for

    family, data = plan["family"], plan["data"]
    parts = task_for(family).card(plan)
    lines = [f"# {plan['pipeline']} ({family})", "",
             f"- Version: `{version}` (a hash of the config, the upstream stages and the code)",
             f"- Network: `{plan['model']['name']}` {plan['model']['params']}, {n_params:,} parameters",
             f"- Input: {parts['input']}", f"- Output: {parts['output']}", ""]
    lines += ["## Data", ""]
    lines += [f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in data.items()]
    lines += ["", "## Metrics", "", "| metric | split | value |", "| --- | --- | --- |", *_metric_rows(plan["metrics"])]
    lines += ["", f"Champion selection compares `{plan['selection']['metric']}` "
                  f"({'higher' if plan['selection']['greater_is_better'] else 'lower'} is better).", ""]
    lines += ["## Preprocessing carried by the model", ""]
    lines += [f"- {line}" for line in parts["carried"]]
    lines += ["", "## Runtimes", "", "| runtime | file | max abs difference from Keras |", "| --- | --- | --- |"]
    files = {"keras": "model.keras", "saved_model": "saved_model/", "onnx": "model.onnx"}
    lines += [f"| {rt} | `{files[rt]}` | {'reference' if rt == 'keras' else _fmt(parity.get(rt, float('nan')))} |"
              for rt in plan["formats"]]
    lines += ["", "## Use", "", "```",
              f"medflow predict --model {{this folder | models:/{plan['registered_model']}@champion}} "
              f"--input {parts['predict_input']} --output OUT_DIR", "```", "",
              "## Intended use", "", cfg.export.intended_use, "", "## Limits", ""]
    limits = [*cfg.export.limitations, *_automatic_limits(plan), *parts["limits"]]
    lines += [f"- {item}" for item in limits]
    return "\n".join(lines) + "\n"


def _automatic_limits(plan: dict) -> list[str]:
    if "sample" in str(plan["data"].get("source", "")):
        return ["Trained on medflow's synthetic sample data: a demonstration, not a model for real scans."]
    return []
