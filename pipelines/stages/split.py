"""Split stage: patient-level, stratified, seeded splits, written once and reused.

Reads:  the ingest manifest (case, patient, class, any split fixed by the dataset)
Writes: <workspace>/stages/split/<key>/splits.json, then manifest.json (last)

Like nnU-Net's splits_final.json, later stages read the splits from here and
never draw their own.
"""

from __future__ import annotations

from medflow.core.engine import StageDir, StageFailed
from medflow.data.splits import SplitCase, SplitError, make_splits


def run(cfg, upstream, out: StageDir, ctx):
    """Split the ingested cases (unlabelled 'inference' cases are left out)."""
    ingest = upstream["ingest"]
    from medflow.tasks import task_for

    stratify = task_for(ingest.manifest["dataset"]["task"], str(ingest.path)).class_targets
    cases = [
        SplitCase(case_id=cid, patient_id=c["patient_id"], stratum=c["target"] if stratify else None,
                  fixed=c["split"])
        for cid, c in sorted(ingest.cases.items()) if c["split"] != "inference"
    ]
    sc = cfg.split
    try:
        splits = make_splits(cases, seed=sc.seed, test_fraction=sc.test_fraction, folds=sc.folds,
                             val_fraction=sc.val_fraction, stratify=sc.stratify)
    except SplitError as err:
        raise StageFailed(f"{ingest.path}: {err}") from None
    out.prepare()
    out.write_json("splits.json", splits)
    test = set(splits["test"])
    return out.finish(cfg, upstream, {
        "splits": "splits.json",
        "cases": {c.case_id: {"patient_id": c.patient_id, "holdout": "test" if c.case_id in test else "trainval"}
                  for c in cases},
        "quarantine": [],
        "artifacts": ["splits.json"],
        "metrics": {"test_cases": len(splits["test"]), "folds": len(splits["folds"]),
                    "train_cases_fold0": len(splits["folds"][0]["train"]),
                    "val_cases_fold0": len(splits["folds"][0]["val"])},
    })
