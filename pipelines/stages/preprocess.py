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
from medflow.data.decoded import LABEL, get, image_role
from medflow.data.geometry import axcodes
from medflow.data.images import read_image, read_label
from medflow.data.nifti import CaseError
from medflow.data.preprocess import PreprocessPlan, preprocess_case, scheme_for_channel

SPACING_TOLERANCE = 1e-4  # mm


def resolve_plan(cfg, ingest) -> PreprocessPlan:
    """The concrete plan: ``auto`` spacing becomes the dataset's median RAS spacing."""
    pre = cfg.preprocess
    fingerprint = json.loads(ingest.file("fingerprint.json").read_text())
    if pre.spacing == "auto":
        spacing = tuple(round(float(s), 4) for s in fingerprint["spacing_ras"]["median"])
    else:
        spacing = tuple(float(s) for s in pre.spacing)
    channels = ingest.manifest["dataset"]["channels"]
    schemes = tuple(scheme_for_channel(c, cfg.dataset.modality, pre.normalization) for c in channels)
    return plan_from_config(pre, spacing, schemes)


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
    # What ingest decoded earlier in this run, else the files (medflow.data.decoded)
    images = [get(kept, p, image_role(read)) or read_image(p, **read) for p in record["images"]]
    label = None
    if record["label"]:
        label = (get(kept, record["label"], LABEL) or read_label(record["label"], images[0],
                                                                record.get("label_classes"))).data
    plan = PreprocessPlan(**job["plan"])
    image, lab, meta = preprocess_case([v.data for v in images], images[0].affine, label, plan)
    if meta["axcodes"] != "RAS" or not np.allclose(meta["spacing"], plan.spacing, atol=SPACING_TOLERANCE):
        raise CaseError(record["images"][0], f"preprocessing produced {meta['axcodes']} at {meta['spacing']} mm")
    meta.update({k: record[k] for k in ("case_id", "patient_id", "target", "split", "images", "label")})
    arrays = {"image": image} if lab is None else {"image": image, "label": lab}
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
    plan_args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in plan.to_json().items() if k != "orientation"}
    ids = sorted(ingest.cases)
    jobs = []
    for case_id in ids:
        if out.has(case_id, ".npz"):
            continue
        record = json.loads(ingest.file(ingest.cases[case_id]["file"]).read_text())
        jobs.append((case_id, record["images"][0], {
            "record": record, "plan": plan_args, "out": str(out.case_path(case_id, ".npz")), "decoded": ctx.decoded}))
    jobs, prior, scope = out.shard_jobs(jobs, ids, ctx)
    hashes, quarantine = map_cases(jobs, preprocess_job, ctx, "preprocess", done=len(scope) - len(jobs) - len(prior),
                                   total=len(scope))
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
