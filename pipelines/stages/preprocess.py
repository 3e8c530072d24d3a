"""Preprocess stage: canonical RAS, crop, resample to the target spacing, normalize.

Reads:  the ingest manifest and its case records (which point at the source files)
Writes: <workspace>/stages/preprocess/<key>/cases/<case_id>.npz (image (C, X, Y, Z)
        float32, label (X, Y, Z) uint8, meta.json), plan.json, then manifest.json (last)

plan.json is the whole preprocessing recipe (spacing, orientation, per-channel
normalization, classes), so training, export and inference need nothing else.
"""

from __future__ import annotations

import json

import numpy as np

from medflow.core.cases import map_cases
from medflow.core.engine import StageDir, StageFailed
from medflow.data.casefile import file_sha256, read_meta, write_case
from medflow.data.decoded import LABEL, ahead_key, claim_case, get, image_role
from medflow.data.geometry import axcodes
from medflow.data.images import read_image, read_label
from medflow.data.preprocess import PreprocessPlan, preprocess_record, scheme_for_channel


def resolve_plan(cfg, ingest) -> PreprocessPlan:
    """The concrete plan: ``auto`` spacing becomes the dataset's median RAS spacing."""
    fingerprint = json.loads(ingest.file("fingerprint.json").read_text())
    return plan_for(cfg, ingest.manifest["dataset"]["channels"], fingerprint["spacing_ras"]["median"])


def plan_for(cfg, channels: list[str], median_spacing=None) -> PreprocessPlan | None:
    """The plan for a dataset of ``channels``; None when it needs the median spacing and that is not given."""
    pre = cfg.preprocess
    if pre.spacing == "auto":
        if median_spacing is None:
            return None
        spacing = tuple(round(float(s), 4) for s in median_spacing)
    else:
        spacing = tuple(float(s) for s in pre.spacing)
    schemes = tuple(scheme_for_channel(c, cfg.dataset.modality, pre.normalization) for c in channels)
    return plan_from_config(pre, spacing, schemes)


def job_plan(plan: PreprocessPlan) -> dict:
    """The plan as a job carries it (``PreprocessPlan(**job_plan(plan)) == plan``)."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in plan.to_json().items() if k != "orientation"}


def ahead_plan(cfg, channels: list[str]) -> dict | None:
    """What ingest needs to preprocess each case ahead of this stage in the same run (its job plan), or
    None when the plan waits on ingest's fingerprint (``spacing: auto``)."""
    plan = plan_for(cfg, channels)
    return job_plan(plan) if plan is not None else None


def plan_from_config(pre, spacing: tuple[float, float, float], schemes: tuple[str, ...]) -> PreprocessPlan:
    """The plan of a preprocess config section, given the resolved spacing and per-channel schemes."""
    return PreprocessPlan(
        spacing=tuple(spacing), normalization=tuple(schemes), ct_window=tuple(pre.ct_window),
        mr_percentiles=tuple(pre.mr_percentiles), crop_to_foreground=pre.crop_to_foreground,
        crop_margin=pre.crop_margin, image_order=pre.image_order,
    )


def preprocess_job(job: dict) -> str:
    """Read one case's files, preprocess, write its case file; return its sha256. Runs in a worker process."""
    record, read, kept = job["record"], job["record"].get("read", {}), job.get("decoded")
    # What ingest decoded earlier in this run (medflow.data.decoded), else the files
    images = [get(kept, p, image_role(read)) or read_image(p, **read) for p in record["images"]]
    label = None
    if record["label"]:
        label = (get(kept, record["label"], LABEL) or read_label(record["label"], images[0],
                                                                record.get("label_classes"))).data
    arrays, meta = preprocess_record([v.data for v in images], images[0].affine, label, record,
                                     PreprocessPlan(**job["plan"]))
    return write_case(job["out"], arrays, meta)


def run(cfg, upstream, out: StageDir, ctx):
    """Preprocess every case the ingest stage accepted."""
    ingest = upstream["ingest"]
    plan = resolve_plan(cfg, ingest)
    out.prepare()
    out.write_json("plan.json", {**plan.to_json(), "channels": ingest.manifest["dataset"]["channels"],
                                 "classes": ingest.manifest["dataset"]["classes"],
                                 "task": ingest.manifest["dataset"]["task"],
                                 **({"class_codes": codes} if (codes := ingest.manifest["dataset"].get("codes"))
                                    else {})})
    plan_args = job_plan(plan)
    ids = sorted(ingest.cases)
    jobs = []
    for case_id in ids:
        if out.has(case_id, ".npz"):
            continue
        record = json.loads(ingest.file(ingest.cases[case_id]["file"]).read_text())
        jobs.append((case_id, record["images"][0], {
            "record": record, "plan": plan_args, "out": str(out.case_path(case_id, ".npz")), "decoded": ctx.decoded}))
    jobs, prior, scope = out.shard_jobs(jobs, ids, ctx)
    # The cases ingest preprocessed ahead in this run: a rename each, here rather than in a worker pool
    ahead = {case_id: digest for case_id, _, job in (jobs if ctx.decoded else [])
             if (digest := claim_case(ctx.decoded, ahead_key(job["record"], plan_args), job["out"]))}
    jobs = [j for j in jobs if j[0] not in ahead]
    hashes, quarantine = map_cases(jobs, preprocess_job, ctx, "preprocess", done=len(scope) - len(jobs) - len(prior),
                                   total=len(scope))
    hashes.update(ahead)
    quarantine = sorted(quarantine + prior, key=lambda r: r["case_id"])
    if ctx.shard is not None:
        return out.finish_shard(ctx.shard, scope, quarantine)
    bad = {r["case_id"] for r in quarantine}
    cases = {}
    for case_id in ids:
        if case_id in bad:
            continue
        path = out.case_path(case_id, ".npz")
        meta = read_meta(path)
        if meta["axcodes"] != "RAS":
            raise StageFailed(f"{path}: not in canonical RAS ({axcodes(np.array(meta['affine']))})")
        cases[case_id] = {"file": f"cases/{case_id}.npz", "sha256": hashes.get(case_id) or file_sha256(path), "shape": meta["shape"],
                          "spacing": meta["spacing"], "patient_id": meta["patient_id"], "target": meta["target"],
                          "split": meta["split"], "has_label": meta["label"] is not None}
    if not cases:
        raise StageFailed(f"{ingest.path}: no case survived preprocessing")
    out.write_json("quarantine.json", quarantine)
    shapes = np.array([c["shape"] for c in cases.values()])
    return out.finish(cfg, upstream, {
        "plan": plan.to_json(),
        "cases": cases,
        "quarantine": quarantine,
        "artifacts": ["plan.json", "quarantine.json"],
        "metrics": {"cases": len(cases), "quarantined": len(quarantine),
                    **{f"median_shape_{a}": float(v) for a, v in zip("xyz", np.median(shapes, axis=0))}},
    })
