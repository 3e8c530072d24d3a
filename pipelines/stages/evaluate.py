"""Evaluate stage: score the trained model on held-out data through the exported inference path.

Reads:  the train stage's plan.json and model (train or train_recon), plus what the family's
        evaluation reads (ingest and split for volumes, simulate for reconstruction)
Writes: <workspace>/stages/<evaluate|evaluate_recon>/<key>/plan.json (the plan it ran: train's plan
        with this section's inference settings; export copies it), the family's scores and figures,
        then manifest.json (last)

The family's :class:`~medflow.tasks.base.Task` does the work; this stage only
finds the trained model, applies the evaluate section to its plan and hands over.
"""

from __future__ import annotations

from medflow.core.engine import StageDir, StageFailed
from medflow.inference.plan import PlanError, load_plan


def trained(upstream: dict):
    """The upstream training output: the one whose manifest names an inference model."""
    found = [o for o in upstream.values() if "inference_model" in o.manifest]
    if len(found) != 1:
        raise StageFailed(f"expected one trained model upstream, found {len(found)}")
    return found[0]


def run(cfg, upstream, out: StageDir, ctx):
    """Evaluate the trained model on the configured split."""
    from medflow.models.inference import keras_predictor
    from medflow.models.runtimes import load_keras
    from medflow.tasks import task_for
    from medflow.tasks.volumes import inference_settings

    train = trained(upstream)
    try:
        plan = load_plan(train.path)
        task = task_for(plan.family, str(train.path))
    except (PlanError, ValueError) as err:
        raise StageFailed(str(err)) from None
    ev = inference_settings(cfg)
    plan = plan.with_inference(overlap=ev.overlap, batch_size=ev.batch_size, mirror_axes=ev.mirror_axes)
    out.prepare()
    plan.save(out.path, out.write_json)
    net = keras_predictor(load_keras(train.file(train.manifest["inference_model"])))
    return task.evaluate(cfg, upstream, out, ctx, plan, net)
