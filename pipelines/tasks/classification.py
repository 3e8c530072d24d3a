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
from medflow.models.registry import LESION, PROBABILITIES
from medflow.tasks.base import Net, Task, VolumeCase, as_channels
from medflow.tasks.volumes import volume_card, volume_experiment_plan, volume_export_data, volume_plan


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
    explains = True

    def loss_and_metrics(self, tc, n_classes: int, outputs: list[str] | None = None) -> tuple:
        """Cross-entropy on the class probabilities; a model with a ``lesion`` output (segcls) adds
        Dice + BCE on its voxel map, over the voxels with a known target."""
        import keras

        from medflow.models.losses import LesionDice, MaskedDiceBCELoss

        accuracy = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        if not outputs or len(outputs) == 1:
            return keras.losses.SparseCategoricalCrossentropy(), accuracy
        if set(outputs) != {LESION, PROBABILITIES}:
            raise ValueError(f"a classifier's outputs are {PROBABILITIES!r} and optionally {LESION!r}, got {outputs}")
        return ({LESION: MaskedDiceBCELoss(dice=tc.lesion_dice), PROBABILITIES: keras.losses.SparseCategoricalCrossentropy()},
                {LESION: [LesionDice(name="dice")], PROBABILITIES: accuracy})

    def finishes_training(self, cfg) -> bool:
        return cfg.loader.train_patch_size is not None and cfg.train.refit_head

    def finish_training(self, cfg, plan: InferencePlan, model, store, train_ids: list[str]) -> dict | None:
        """A model trained on patches (``loader.train_patch_size``) and run on whole volumes: with
        ``train.refit_head``, refit its class layer (a Dense softmax) on the training cases' whole volumes,
        cut as inference cuts them. On a patch, a lesion map has fewer voxels to find a false lesion in than
        on a whole head, so a class layer fitted to patches puts its threshold where inference never looks.
        The body and the lesion map are unchanged. With several crops per case the features are averaged
        (the layer is linear before its softmax, so that is the mean of the crops' logits)."""
        import keras

        from medflow.data.sampling import cut_sample
        from medflow.models.logistic import refit_softmax_layer

        layer = model.get_layer(PROBABILITIES)
        if not isinstance(layer, keras.layers.Dense):
            return None
        features = keras.Model(model.input, layer.input)
        sampler, rows, y = plan.window.sampler(), [], []
        for cid in train_ids:
            image = store.arrays(cid)["image"]
            crops = np.stack([np.moveaxis(cut_sample(image, None, c, sampler)[0], 0, -1)
                              for c in crop_centres(plan, image.shape[1:])]).astype(np.float32)
            rows.append(np.asarray(features(crops, training=False), np.float64).mean(axis=0))
            y.append(store.targets[cid])
        info = refit_softmax_layer(model, PROBABILITIES, np.stack(rows), np.asarray(y), len(plan.classes),
                                   l2=cfg.train.refit_l2)
        return {"record": {"refit_head": {**info, "layer": PROBABILITIES, "on": "whole training volumes"}},
                "metrics": {"refit_train_balanced_accuracy_before": info["accuracy_before"],
                            "refit_train_balanced_accuracy_after": info["accuracy_after"]},
                "line": f"class layer refitted on {info['cases']} whole training volumes: balanced accuracy there "
                        f"{info['accuracy_before']:.3f} -> {info['accuracy_after']:.3f}"}

    def experiment_plan(self, cfg, fingerprint: dict | None, machine, budget_s: float) -> dict:
        return volume_experiment_plan(fingerprint, machine, budget_s, whole_volume=True)

    def inference_plan(self, cfg, facts: dict) -> InferencePlan:
        return volume_plan(self, cfg, facts)

    def export_data(self, cfg, train_info: dict, scored) -> dict:
        return volume_export_data(cfg, train_info, len(scored.cases))

    def crops(self, plan: InferencePlan, case: VolumeCase) -> np.ndarray:
        """(N, *patch, C) float32: the plan's unaugmented crops of one raw case."""
        return self.prepared_crops(plan, case)[0]

    def prepared_crops(self, plan: InferencePlan, case: VolumeCase):
        """(crops (N, *patch, C), centres, preprocessed (X', Y', Z') shape, preprocessing meta) of a raw case."""
        from medflow.data.native import prepare
        from medflow.data.sampling import cut_sample

        image, meta = prepare(as_channels(plan, case.channels), case.affine, plan.preprocess)
        sampler = plan.window.sampler()
        centres = crop_centres(plan, image.shape[1:])
        crops = np.stack([np.moveaxis(cut_sample(image, None, c, sampler)[0], 0, -1) for c in centres])
        return crops.astype(np.float32), centres, image.shape[1:], meta

    def explain(self, plan: InferencePlan, net: Net, case: VolumeCase, settings) -> dict:
        """Probabilities and maps on the input's grid: ``explanation`` (X, Y, Z) in [0, 1] (see
        :mod:`medflow.tasks.explanations`), and ``lesion`` (X, Y, Z) probabilities for segcls."""
        from medflow.tasks.explanations import explain_crops, to_input_grid

        if plan.window.mode != "3d":
            raise ValueError("explanations are for 3D classifiers")
        crops, centres, shape, meta = self.prepared_crops(plan, case)
        out = self.forward(plan, net, crops)
        maps, method, layer = explain_crops(plan, net, crops, settings)
        result = {"probabilities": out[PROBABILITIES].mean(axis=0), "method": method, "layer": layer,
                  "explanation": to_input_grid(maps, centres, shape, meta, plan)}
        if LESION in out:
            result[LESION] = to_input_grid(out[LESION], centres, shape, meta, plan)
        return result

    def infer(self, plan: InferencePlan, net: Net, case: VolumeCase) -> np.ndarray:
        """(K,) class probabilities: the mean over the plan's crops."""
        return self.probabilities(plan, net, self.crops(plan, case))

    def forward(self, plan: InferencePlan, net: Net, x: np.ndarray) -> dict[str, np.ndarray]:
        """The network on one case's (N, *patch, C) crops, in batches: ``probabilities`` (N, K) and, for a
        model that segments the lesion (segcls), ``lesion`` (N, *patch) probabilities."""
        batch = plan.inference.batch_size
        parts = [net(x[i:i + batch]) for i in range(0, len(x), batch)]
        if not isinstance(parts[0], dict):
            return {PROBABILITIES: np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])}
        out = {PROBABILITIES: np.concatenate([np.asarray(p[PROBABILITIES], dtype=np.float64) for p in parts])}
        if LESION in parts[0]:
            out[LESION] = np.concatenate([np.asarray(p[LESION], dtype=np.float32)[..., 0] for p in parts])
        return out

    def probabilities(self, plan: InferencePlan, net: Net, x: np.ndarray) -> np.ndarray:
        """(K,) class probabilities of one case's (N, *patch, C) crops: the mean over them."""
        return self.forward(plan, net, x)[PROBABILITIES].mean(axis=0)

    def row(self, plan: InferencePlan, probs: np.ndarray) -> dict:
        return {"class": plan.classes[int(np.argmax(probs))], **{f"p_{c}": float(p) for c, p in zip(plan.classes, probs)}}

    def write_result(self, plan, result, output: Path, name: str, case) -> dict:
        """The case's row; an explained result (a dict from :meth:`explain`) also writes its maps as NIfTI
        with the input's header: ``<name>_explanation.nii.gz`` and ``<name>_lesion.nii.gz``."""
        series = {"series_uid": case.series_uid} if getattr(case, "series_uid", None) else {}
        if not isinstance(result, dict):
            return {"case": name, **series, **self.row(plan, result)}
        from medflow.data.native import write_like
        from medflow.data.nifti import write_nifti

        if case.reference is None and case.source_files is None:
            raise ValueError("explanation maps are written beside a NIfTI or DICOM input; this case has no file")
        for key in ("explanation", LESION):
            if key in result:
                dest = Path(output) / f"{name}_{key}.nii.gz"
                if case.reference is None:  # a DICOM series: no header to keep, its grid's affine
                    write_nifti(dest, result[key], case.affine, dtype=np.float32)
                else:
                    write_like(dest, result[key], case.reference, dtype=np.float32)
        return {"case": name, **series, **self.row(plan, result["probabilities"]), "explanation": result["method"]}

    def output_files(self, name: str, explain: bool = False) -> list[str]:
        return [f"{name}_explanation.nii.gz", f"{name}_{LESION}.nii.gz"] if explain else []

    def table_files(self, suffix: str = "") -> list[str]:
        return [f"predictions{suffix}.csv"]

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

    compare_metric = "balanced_accuracy"

    def compare_scores(self, summary: dict, split: str) -> tuple[dict, list[tuple[str, dict]]]:
        """Accuracy, balanced accuracy, macro F1 and AUC on val and test, then ``split``'s recall per class;
        the baselines (normative) the same way."""
        def scores(reports):
            row = {}
            for part in ("val", "test"):
                rep = reports.get(part)
                for m in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro_ovr"):
                    row[f"{part}_{m}"] = rep[m] if rep else float("nan")
            for cname, stats in (reports.get(split) or {}).get("per_class", {}).items():
                row[f"{split}_recall_{cname}"] = stats["recall"]
            return row

        if "reports" not in summary:
            raise ValueError("cross-validation and comparison aggregate classification reports; "
                             "this pipeline's evaluate stage scored another task")
        return scores(summary["reports"]), [(n, scores(r)) for n, r in summary.get("baselines", {}).items()]

    def summary_text(self, s: dict) -> list[str]:
        """Accuracy figures per split."""
        lines = []
        for split, r in s["reports"].items():
            lines += ["", f"  {split} set, {r['n']} cases:"]
            for method, rep in [("network", r), *((m, b[split]) for m, b in s.get("baselines", {}).items())]:
                lines.append(f"    {method:<10} accuracy {rep['accuracy']:.4f}  balanced accuracy "
                             f"{rep['balanced_accuracy']:.4f}  macro F1 {rep['macro_f1']:.4f}  "
                             f"AUC (macro OvR) {rep['roc_auc_macro_ovr']:.4f}")
            les, expl = r.get("lesions"), r.get("explanation")
            if les:
                lines.append(f"    lesions    Dice {les['lesion_dice']:.4f}  detection sensitivity "
                             f"{les['detection_sensitivity']:.4f}  false positives per case "
                             f"{les['false_positives_per_case']:.3f} ({les['lesions']} lesions, "
                             f"{les['cases_with_masks']} cases with masks)")
            if expl:
                lines.append(f"    {expl['method']:<10} explanation mass in the lesion "
                             f"{expl['explanation_mass_in_lesion']:.3f} (chance {expl['explanation_mass_chance']:.4f}),"
                             f" peak in the lesion {expl['explanation_peak_in_lesion']:.3f} ({expl['cases']} cases)")
        return lines

    def evaluate(self, cfg, upstream, out, ctx, plan, train):
        from medflow.tasks.evaluation import classification

        return classification.run(cfg, upstream, out, ctx, plan, train)
