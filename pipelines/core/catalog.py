"""The stage catalog: every stage declared once, by name.

A pipeline YAML lists stage names; the engine runs them in this order, each
after the stages it reads from. It lives outside ``pipelines/stages/`` so that
adding a stage does not change the code version (and so the keys) of the others.
"""

from __future__ import annotations

from medflow.core.engine import Stage
from medflow.stages import evaluate, export, ingest, preprocess, simulate, split, train, train_recon

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("ingest", ingest.run, inputs=(), sections=("dataset", "ingest", "dicom"),
              extra_key=ingest.dataset_state,
              shardable=True, outputs="case records, fingerprint.json, cases.csv, quarantine.json"),
        Stage("preprocess", preprocess.run, inputs=("ingest",), sections=("preprocess",), shardable=True,
              outputs="cases/<id>.npz (RAS, target spacing, normalized), plan.json"),
        Stage("split", split.run, inputs=("ingest",), sections=("split",),
              outputs="splits.json (patient-level test holdout + folds)"),
        Stage("train", train.run, inputs=("preprocess", "split"), sections=("loader", "augment", "model", "train"),
              outputs="model.keras (best epoch), checkpoints, history.csv, preview.png, train.json"),
        Stage("evaluate", evaluate.run, inputs=("ingest", "preprocess", "split", "train"), sections=("evaluate",),
              outputs="plan.json (the plan evaluated); segmentation: predictions/<case>.nii.gz (native space), "
                      "metrics.csv, summary.json, confusion.json/.png, montage.png; classification: "
                      "<split>/predictions.csv, metrics.json, confusion.*, misclassified.png"),
        Stage("simulate", simulate.run, inputs=(), sections=("simulate",), extra_key=simulate.source_state,
              outputs="data/{train,validation,test}/chunk_*.npz (sinogram, FBP, truth), data/dataset.json, "
                      "geometry.json"),
        Stage("train_recon", train_recon.run, inputs=("simulate",), sections=("loader", "model", "train"),
              outputs="model.keras (FBP -> image), reconstructor.keras (sinogram -> image), checkpoints, "
                      "history.csv, train.json"),
        Stage("evaluate_recon", evaluate.run, inputs=("simulate", "train_recon"), sections=("evaluate",),
              outputs="plan.json, metrics.csv (PSNR/SSIM per image and method), summary.json, comparison.png"),
        Stage("export", export.run, inputs=("train", "evaluate"), sections=("export",), parent=export.exports_parent,
              outputs="exports/<pipeline>/<version>/: model.keras, saved_model/, model.onnx, plan.json, "
                      "MODEL_CARD.md; an MLflow model, registered"),
        Stage("export_recon", export.run, inputs=("train_recon", "evaluate_recon"), sections=("export",),
              parent=export.exports_parent,
              outputs="exports/<pipeline>/<version>/: sinogram -> image in three runtimes, plan.json with the "
                      "geometry, MODEL_CARD.md; an MLflow model, registered"),
    )
}
