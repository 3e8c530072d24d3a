"""Classification: class probabilities per volume.

Inference: preprocess the raw volume as training did, cut the plan's crops
(one centred crop, or ``samples`` seeded crop centres when the model was trained
on random crops), and average the network's probabilities over them. Evaluate
and predict both go through :meth:`Classification.infer`, so the crops are the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medflow.inference.plan import InferencePlan
from medflow.tasks.base import Net, Task, VolumeCase, as_channels
from medflow.tasks.volumes import volume_card, volume_export_data, volume_plan


def crop_centres(plan: InferencePlan, spatial: tuple[int, ...]) -> list[list[int]]:
    """The crop centres of a (X, Y, Z) preprocessed volume: its centre, or seeded uniform draws.

    The draw depends only on the plan and the volume's shape, so a case gives the same crops in
    evaluate, in ``medflow predict`` and behind a served model.
    """
    if plan.window.crop == "center":
        return [[s // 2 for s in spatial]]
    rng = np.random.default_rng(plan.inference.seed)
    return [[int(rng.integers(s)) for s in spatial] for _ in range(plan.inference.samples)]


class Classification(Task):
    family = "classification"
    selection = {"metric": "val_balanced_accuracy", "stage": "evaluate", "greater_is_better": True}
    class_targets = True

    def loss_and_metrics(self, tc, n_classes: int) -> tuple:
        import keras

        return keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def inference_plan(self, cfg, facts: dict) -> InferencePlan:
        return volume_plan(self, cfg, facts)

    def export_data(self, cfg, train_info: dict, scored) -> dict:
        return volume_export_data(cfg, train_info, len(scored.cases))

    def crops(self, plan: InferencePlan, case: VolumeCase) -> np.ndarray:
        """(N, *patch, C) float32: the plan's unaugmented crops of one raw case."""
        from medflow.data.native import prepare
        from medflow.data.sampling import SamplerConfig, cut_sample

        win = plan.window
        image, _ = prepare(as_channels(plan, case.channels), case.affine, plan.preprocess)
        sampler = SamplerConfig(mode=win.mode, patch_size=tuple(win.patch_size), slice_axis=win.slice_axis,
                                foreground_ratio=0.0, crop=win.crop)
        return np.stack([np.moveaxis(cut_sample(image, None, c, sampler)[0], 0, -1)
                         for c in crop_centres(plan, image.shape[1:])]).astype(np.float32)

    def infer(self, plan: InferencePlan, net: Net, case: VolumeCase) -> np.ndarray:
        """(K,) class probabilities: the mean over the plan's crops."""
        return self.probabilities(plan, net, self.crops(plan, case))

    def probabilities(self, plan: InferencePlan, net: Net, x: np.ndarray) -> np.ndarray:
        """(K,) class probabilities of one case's (N, *patch, C) crops: the mean over them."""
        batch = plan.inference.batch_size
        probs = [np.asarray(net(x[i:i + batch]), dtype=np.float64) for i in range(0, len(x), batch)]
        return np.concatenate(probs).mean(axis=0)

    def row(self, plan: InferencePlan, probs: np.ndarray) -> dict:
        return {"class": plan.classes[int(np.argmax(probs))], **{f"p_{c}": float(p) for c, p in zip(plan.classes, probs)}}

    def write_result(self, plan, result: np.ndarray, output: Path, name: str, case) -> dict:
        return {"case": name, **self.row(plan, result)}

    def finish_outputs(self, output: Path, rows: list[dict], suffix: str = "") -> None:
        if rows:
            import pandas as pd

            from medflow.inference.outputs import write_csv_atomic

            write_csv_atomic(Path(output) / f"predictions{suffix}.csv", pd.DataFrame(rows))

    def answer(self, plan: InferencePlan, result: np.ndarray, case) -> dict:
        return self.row(plan, result)

    def signature(self, plan: InferencePlan) -> tuple[list, list]:
        inputs, _ = super().signature(plan)
        return inputs, [("class", "string", False), *[(f"p_{c}", "double", False) for c in plan.classes]]

    def card(self, plan: dict) -> dict:
        return volume_card(plan, f"probabilities of {plan['classes']}", f", {plan['window']['crop']} crop")

    def summary_text(self, s: dict) -> list[str]:
        """Accuracy figures per split."""
        lines = []
        for split, r in s["reports"].items():
            lines += ["", f"  {split} set, {r['n']} cases:"]
            for method, rep in [("network", r), *((m, b[split]) for m, b in s.get("baselines", {}).items())]:
                lines.append(f"    {method:<10} accuracy {rep['accuracy']:.4f}  balanced accuracy "
                             f"{rep['balanced_accuracy']:.4f}  macro F1 {rep['macro_f1']:.4f}  "
                             f"AUC (macro OvR) {rep['roc_auc_macro_ovr']:.4f}")
        return lines

    def evaluate(self, cfg, upstream, out, ctx, plan, train):
        from medflow.tasks.evaluation import classification

        return classification.run(cfg, upstream, out, ctx, plan, train)
