"""Segmentation: a label map per voxel, in the input's own space.

Inference: preprocess the raw volume as training did (no label), slide windows
over the preprocessed grid (Gaussian blending, optional mirroring), map the
class probabilities back to the native grid, take the argmax.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medflow.inference.plan import InferencePlan
from medflow.tasks.base import Net, Task, VolumeCase, as_channels
from medflow.tasks.volumes import volume_card, volume_experiment_plan, volume_export_data, volume_plan


@dataclass
class SegmentationResult:
    """labels (X, Y, Z) uint8 and probabilities (X, Y, Z, K) float32, both on the input grid."""

    labels: np.ndarray
    probabilities: np.ndarray


class Segmentation(Task):
    family = "segmentation"
    voxel_targets = True
    selection = {"metric": "best_val_dice", "stage": "train", "greater_is_better": True}

    def loss_and_metrics(self, tc, n_classes: int, outputs: list[str] | None = None) -> tuple:
        from medflow.models.losses import DiceCELoss, ForegroundDice

        return DiceCELoss(n_classes), [ForegroundDice(n_classes)]

    def experiment_plan(self, cfg, fingerprint: dict | None, machine, budget_s: float) -> dict:
        return volume_experiment_plan(fingerprint, machine, budget_s, whole_volume=False)

    def inference_plan(self, cfg, facts: dict) -> InferencePlan:
        return volume_plan(self, cfg, facts)

    def export_data(self, cfg, train_info: dict, scored) -> dict:
        return volume_export_data(cfg, train_info, len(scored.cases))

    def infer(self, plan: InferencePlan, net: Net, case: VolumeCase) -> SegmentationResult:
        from medflow.data.native import prepare, to_native
        from medflow.models.inference import sliding_window

        win, inf = plan.window, plan.inference
        image, meta = prepare(as_channels(plan, case.channels), case.affine, plan.preprocess)
        probs = sliding_window(net, image, list(win.patch_size), len(plan.classes), mode=win.mode,
                               slice_axis=win.slice_axis, overlap=inf.overlap, batch_size=inf.batch_size,
                               mirror_axes=list(inf.mirror_axes))
        native = to_native(probs, meta)
        return SegmentationResult(np.argmax(native, axis=-1).astype(np.uint8), native)

    def write_result(self, plan, result: SegmentationResult, output: Path, name: str, case: VolumeCase) -> None:
        from medflow.inference.outputs import write_labels

        nifti = Path(output) / f"{name}.nii.gz"
        write_labels(nifti, result.labels, case.affine, case.reference)
        if case.source_files:  # a DICOM input: also a SEG over its series, for the PACS; both or neither
            from medflow.data.dicom.seg import write_seg

            try:
                codes = {int(k): tuple(v) for k, v in (plan.info.get("class_codes") or {}).items()}
                write_seg(Path(output) / f"{name}_seg.dcm", result.labels, case.source_files,
                          dict(enumerate(plan.classes)), codes=codes)
            except Exception as err:
                nifti.unlink(missing_ok=True)
                raise ValueError(f"DICOM SEG not written ({' '.join(str(err).split())[:200]})") from err

    def output_files(self, name: str, explain: bool = False) -> list[str]:
        return [f"{name}.nii.gz", f"{name}_seg.dcm"]

    def answer(self, plan: InferencePlan, result: SegmentationResult, case: VolumeCase) -> dict:
        from medflow.inference.outputs import label_nifti_bytes

        labels = result.labels
        voxel_ml = abs(float(np.linalg.det(np.asarray(case.affine)[:3, :3]))) / 1000.0
        blob = label_nifti_bytes(labels, case.affine, case.reference)
        return {"labels_nifti_b64": base64.b64encode(blob).decode("ascii"),
                **{f"volume_ml_{c}": float((labels == k).sum() * voxel_ml) for k, c in enumerate(plan.classes) if k}}

    def signature(self, plan: InferencePlan) -> tuple[list, list]:
        inputs, _ = super().signature(plan)
        return inputs, [("labels_nifti_b64", "string", False),
                        *[(f"volume_ml_{c}", "double", False) for c in plan.classes[1:]]]

    def card(self, plan: dict) -> dict:
        return volume_card(plan, f"a label map on the input's own grid, classes {plan['classes']}",
                           f", {plan['inference']['overlap']:.0%} overlap, Gaussian blending")

    def summary_text(self, s: dict) -> list[str]:
        """Means per method: Dice over the report classes, then Dice and HD95 per class."""
        lines = ["", f"  {s['split']} set, native space; mean Dice over {', '.join(s['report_classes'])}:"]
        for method, m in s["methods"].items():
            per_class = "  ".join(f"{c} Dice {v['dice']:.3f} HD95 {v['hd95_mm']:.2f} mm"
                                  for c, v in m["per_class"].items())
            lines.append(f"    {method:<11} {m['mean_dice']:.4f} +/- {m['sd_dice']:.4f} ({m['cases']} cases)  "
                         f"{per_class}")
        return lines

    def evaluate(self, cfg, upstream, out, ctx, plan, train):
        from medflow.tasks.evaluation import segmentation

        return segmentation.run(cfg, upstream, out, ctx, plan, train)
