"""Ingest stage: list the dataset, validate every case, fingerprint the dataset.

Reads:  the dataset folder (MSD/nnU-Net layout or CSV manifest)
Writes: <workspace>/stages/ingest/<key>/cases/<case_id>.json (one record per valid case),
        fingerprint.json, cases.csv, quarantine.json, then manifest.json (last)

No volume is copied: a record points at the source files and says what they
hold. A case that fails validation is quarantined with a one-line reason and
the others carry on (``--strict`` fails the stage instead).
"""

from __future__ import annotations

import csv
import io
import json
import os
import zlib

import numpy as np

from medflow.core.cases import map_cases, quarantine_record, report_quarantine
from medflow.core.engine import StageDir, StageFailed
from medflow.core.progress import log
from medflow.data.atomic import write_atomic
from medflow.data.decoded import LABEL, ahead_key, image_role, keep_case, put, share
from medflow.data.fingerprint import aggregate, case_fingerprint, content_problem, geometry_outliers, label_outside
from medflow.data.geometry import same_grid
from medflow.data.intensity import foreground_mask
from medflow.data.layouts import DatasetError, DatasetListing, list_csv, list_msd
from medflow.data.images import read_image, read_label
from medflow.data.nifti import CaseError, Volume
from medflow.data.preprocess import PreprocessPlan, preprocess_record


def list_dataset(cfg) -> DatasetListing:
    """The dataset's cases per ``cfg.dataset`` (raises StageFailed on dataset-level errors)."""
    ds = cfg.dataset
    if not os.path.isdir(ds.root):
        raise StageFailed(f"{ds.root}: dataset root is not a folder")
    try:
        ids = {"id_salt": cfg.dicom.id_salt, "log_identifiers": cfg.dicom.log_identifiers}
        if ds.layout == "msd":
            return list_msd(ds.root, include_unlabeled=ds.include_unlabeled, **ids)
        listing = list_csv(ds.root, ds.manifest, ds.classes, **ids)
        if ds.modality != "auto":
            listing.channels = [ds.modality]
        return listing
    except DatasetError as err:
        raise StageFailed(str(err)) from None


def read_options(cfg) -> dict:
    """How every later stage reads this dataset's images (kept in each case record)."""
    return {"allow_tilt": True} if cfg.dicom.allow_tilt else {}


def dataset_state(cfg) -> list:
    """Key material: every file under the dataset root with its size and mtime.

    A file added, removed or rewritten in the dataset changes the ingest key,
    so a stale ingest is never reused.
    """
    root = cfg.dataset.root
    state = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
                state.append([os.path.relpath(full, root), st.st_size, st.st_mtime_ns])
            except OSError:
                state.append([os.path.relpath(full, root), -1, 0])
    return state


def _check_label(label: Volume, image: Volume, classes: list[int], tol: float, what: str = "label") -> np.ndarray:
    """The label map (or lesion mask, ``what='mask'``) as integers, if it lies on the image's grid and
    holds only ``classes``; else a CaseError naming its file."""
    if label.data.shape != image.data.shape:
        raise CaseError(label.path, f"{what} shape {label.data.shape} does not match image shape {image.data.shape}")
    if not same_grid(label.affine, label.data.shape, image.affine, image.data.shape, atol_mm=tol):
        err = float(np.abs(label.affine - image.affine).max())
        raise CaseError(label.path, f"{what} affine differs from the image affine by up to {err:.4g} mm")
    data = label.data
    if data.dtype.kind == "f":
        if not np.array_equal(data, np.round(data)):
            raise CaseError(label.path, f"{what} has non-integer values")
    lo, hi = data.min(), data.max()
    if lo >= 0 and hi <= len(classes) and set(range(int(lo), int(hi) + 1)) <= set(classes):
        extra = []  # every value in [lo, hi] is a class: nothing to list (the usual case, and 20x cheaper)
    else:
        if data.dtype.kind in "ui" and lo >= 0 and hi < 65536:  # much faster than np.unique
            values = np.flatnonzero(np.bincount(data.ravel(order="K").astype(np.intp)))
        else:
            values = np.unique(data).astype(np.int64)
        extra = sorted(set(values.tolist()) - set(classes))
    if extra:
        allowed = "the mask values 0 and 1" if what == "mask" else f"the declared classes {classes}"
        raise CaseError(label.path, f"{what} values {extra} outside {allowed}")
    return data.astype(np.uint8 if max(classes) < 256 else np.int32, copy=False)


def ingest_case(job: dict) -> dict:
    """Validate and fingerprint one case; write its record and return it. Runs in a worker process."""
    images = [read_image(p, **job["read"]) for p in job["images"]]
    ref = images[0]
    for other in images[1:]:
        if not same_grid(other.affine, other.data.shape, ref.affine, ref.data.shape, atol_mm=job["tolerance"]):
            raise CaseError(other.path, f"channel grid differs from {ref.path}")
    for vol in images:
        problem, mask = content_problem(vol.data)
        if problem:
            raise CaseError(vol.path, problem)
    mask = foreground_mask(ref.data) if len(images) > 1 else mask  # the reference channel's foreground
    label = raw_label = None
    if job["label"] is not None:
        raw_label = read_label(job["label"], ref, job["class_names"])
        label = _check_label(raw_label, ref, job["classes"], job["tolerance"], job["label_kind"])
        if label_outside(mask, label):
            raise CaseError(job["label"], f"{job['label_kind']} foreground lies entirely outside the image's "
                                          f"foreground (a label of another scan, or a flipped one?)")
    seed = zlib.crc32(job["case_id"].encode()) ^ job["seed"]
    fp = case_fingerprint(ref.data, ref.affine, label, seed=seed, n_classes=max(job["classes"], default=0) + 1,
                          mask=mask)
    record = {
        "case_id": job["case_id"], "patient_id": job["patient_id"], "target": job["target"], "split": job["split"],
        "images": job["images"], "label": job["label"], "bytes": sum(v.nbytes_file for v in images),
        "dtype": str(ref.data.dtype), "fingerprint": fp, "read": job["read"],
        "label_classes": job["class_names"],
    }
    # A valid case: preprocess, later in this run, takes it preprocessed, else reads these instead of decoding
    if job.get("decoded") and not _preprocess_ahead(job, record, images, raw_label):
        room = job["share"]
        kept = [(v, image_role(job["read"])) for v in images] + ([(raw_label, LABEL)] if raw_label else [])
        for vol, role in kept:
            if put(job["decoded"], vol, role, room):
                room -= vol.data.nbytes
    notices = [n for v in images for n in getattr(v, "notices", [])]
    if notices:  # what the DICOM reader set aside: localizers, non-image objects, a resampled tilt
        record["notices"] = notices
    text = json.dumps(record, sort_keys=True)
    with write_atomic(job["out"]) as tmp:
        tmp.write_text(text, encoding="utf-8")
    # The record as the file gives it back, parsed here in parallel rather than in the parent, one by one
    return json.loads(text)


def _preprocess_ahead(job: dict, record: dict, images: list[Volume], label: Volume | None) -> bool:
    """Preprocess the case now, while its volumes are decoded, for the preprocess stage later in this run
    (medflow.data.decoded); True if its case file is kept. Only when the plan needs no fingerprint."""
    if job.get("ahead") is None or (key := ahead_key(record, job["ahead"])) is None:
        return False
    try:
        arrays, meta = preprocess_record([v.data for v in images], images[0].affine,
                                         label.data if label is not None else None, record,
                                         PreprocessPlan(**job["ahead"]))
    except Exception:  # the preprocess stage meets it again and quarantines the case itself
        return False
    return keep_case(job["decoded"], key, arrays, meta, job["share"])


def _cases_table(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "patient_id", "target", "split", "axcodes", "shape", "spacing",
                     "intensity_mean", "intensity_p99.5", "bytes"])
    for r in records:
        fp = r["fingerprint"]
        writer.writerow([r["case_id"], r["patient_id"], r["target"] or "", r["split"] or "", fp["axcodes"],
                         "x".join(map(str, fp["shape"])), "x".join(f"{s:g}" for s in fp["spacing"]),
                         f"{fp['intensity']['mean']:.4g}", f"{fp['intensity']['p99.5']:.4g}", r["bytes"]])
    return buf.getvalue()


def run(cfg, upstream, out: StageDir, ctx):
    """Validate and fingerprint every case of ``cfg.dataset``."""
    listing = list_dataset(cfg)
    out.prepare()
    quarantine = []
    for case in listing.cases:
        if case.error:
            record = quarantine_record(case.case_id, CaseError(case.source, case.error))
            quarantine.append(record)
            report_quarantine(record, ctx, "ingest")
    valid = [c for c in listing.cases if not c.error]
    from medflow.tasks import task_for

    label_maps = task_for(listing.task, listing.name).voxel_targets
    label_values = sorted(listing.classes) if label_maps else [0, 1]  # else the per-voxel map is a lesion mask
    jobs = []
    for c in valid:
        if out.has(c.case_id, ".json"):
            continue
        jobs.append((c.case_id, c.source, {
            "case_id": c.case_id, "patient_id": c.patient_id, "target": c.target, "split": c.split,
            "images": c.images, "label": c.label, "classes": label_values, "read": read_options(cfg),
            "class_names": {str(k): v for k, v in listing.classes.items()} if label_maps else None,
            "label_kind": "label" if label_maps else "mask", "seed": cfg.ingest.fingerprint_seed,
            "tolerance": cfg.ingest.affine_tolerance_mm, "out": str(out.case_path(c.case_id, ".json")),
        }))
    room = share(ctx.decoded, len(jobs))
    ahead = ctx.ahead(listing.channels) if ctx.decoded and ctx.ahead else None
    for _, _, job in jobs:
        job.update(decoded=ctx.decoded, share=room, ahead=ahead)
    jobs, prior, scope = out.shard_jobs(jobs, [c.case_id for c in valid], ctx)
    written, failed = map_cases(jobs, ingest_case, ctx, "ingest", done=len(scope) - len(jobs) - len(prior),
                                total=len(scope))
    failed = sorted(failed + prior, key=lambda r: r["case_id"])
    if ctx.shard is not None:
        return out.finish_shard(ctx.shard, scope, failed)
    quarantine = sorted(quarantine + failed, key=lambda r: r["case_id"])
    bad = {r["case_id"] for r in failed}
    records = [written.get(c.case_id) or json.loads(out.case_path(c.case_id, ".json").read_text())
               for c in valid if c.case_id not in bad]
    if not records:
        raise StageFailed(f"{cfg.dataset.root}: no valid case ({len(quarantine)} quarantined)")
    notices = sorted({n for r in records for n in r.get("notices", [])})
    for n in notices[:20]:
        log(f"[ingest] notice: {n}")
    if len(notices) > 20:
        log(f"[ingest] notice: ... and {len(notices) - 20} more (see the case records)")
    fingerprint = aggregate([{**r["fingerprint"], "target": r["target"]} for r in records],
                            listing.classes, label_maps)
    out.write_json("fingerprint.json", fingerprint)
    out.write_text("cases.csv", _cases_table(records))
    out.write_json("quarantine.json", quarantine)
    outliers = geometry_outliers([(r["case_id"], r["fingerprint"]) for r in records])
    for o in outliers:
        log(f"[ingest] warning: {o['case_id']}: {o['problem']}")
    out.write_json("outliers.json", outliers)
    dataset = {"name": listing.name, "root": cfg.dataset.root, "layout": listing.layout, "task": listing.task,
               "channels": listing.channels, "classes": {str(k): v for k, v in listing.classes.items()},
               **({"codes": {str(k): list(v) for k, v in listing.codes.items()}} if listing.codes else {})}
    return out.finish(cfg, upstream, {
        "dataset": dataset,
        "cases": {r["case_id"]: {"file": f"cases/{r['case_id']}.json", "patient_id": r["patient_id"],
                                 "target": r["target"], "split": r["split"], "bytes": r["bytes"]} for r in records},
        "quarantine": quarantine,
        "outliers": outliers,
        "artifacts": ["fingerprint.json", "cases.csv", "quarantine.json", "outliers.json"],
        "metrics": {"cases": len(records), "quarantined": len(quarantine), "geometry_outliers": len(outliers),
                    "input_mb": round(sum(r["bytes"] for r in records) / 1e6, 3)},
    })
