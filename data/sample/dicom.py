"""The sample sets as DICOM: each subject a series folder, each label map or lesion mask a DICOM SEG.

``medflow sample-data --format dicom`` builds the NIfTI sets first (they are the
source) and then writes ``<name>_dicom/`` beside each:

* ``brain_tissue_dicom``: MSD layout; ``imagesTr/brain_000/`` holds one MR series,
  ``labelsTr/brain_000_seg.dcm`` its tissue labels as a SEG over that series;
* ``brain_lesion_dicom``: a CSV manifest whose ``path`` is a series folder and
  whose ``mask`` is a SEG, or empty for a normal subject; ``patient_id`` is left
  empty, so ingest takes the patient from the (hashed) PatientID.

Every subject gets synthetic identifiers (PatientName ``Sample^Subject000``), so
the de-identification of ingest can be seen at work. Each series folder is
published whole (a temporary folder, then one rename) and the index last, so an
interrupted build resumes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from medflow.data.atomic import write_atomic
from medflow.data.nifti import read_nifti

STUDY_ROOT = "1.2.826.0.1.3680043.10.1457"  # medflow's sample UIDs (deterministic per subject)


def _uid(*parts) -> str:
    import hashlib

    digits = str(int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24], 16))
    return f"{STUDY_ROOT}.{digits}"[:64]


def _subject(args) -> str:
    """Write one subject's series folder and its SEG; return the series folder's relative path."""
    from medflow.data.dicom.scan import scan_folder
    from medflow.data.dicom.seg import write_seg
    from medflow.data.dicom.write import write_series

    src_image, src_label, out_dir, rel_image, rel_seg, index, classes = args
    series_dir = out_dir / rel_image
    if not series_dir.exists():
        vol = read_nifti(src_image)
        with write_atomic(series_dir, folder=True) as tmp:
            write_series(tmp, vol.data, vol.affine, modality="MR", patient_name=f"Sample^Subject{index:03d}",
                         patient_id=f"sub-{index:03d}", study_uid=_uid(out_dir.name, index, "study"),
                         series_uid=_uid(out_dir.name, index, "series"), series_description="T1w synthetic")
    seg = out_dir / rel_seg if rel_seg else None
    if seg is not None and not seg.exists():
        files = scan_folder(series_dir)[0][0].files  # the writer's names sort in slice order
        label = read_nifti(src_label).data
        write_seg(seg, np.rint(label).astype(np.uint8), files, classes)
    return rel_image


def _write_text(path: Path, text: str) -> None:
    with write_atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def tissue_to_dicom(src: Path, *, workers: int, progress, run_jobs) -> Path:
    """``brain_tissue_dicom`` beside the NIfTI set ``src`` (MSD, series folders, SEG labels)."""
    out = src.parent / f"{src.name}_dicom"
    meta = json.loads((src / "dataset.json").read_text())
    classes = {int(k): v for k, v in meta["labels"].items()}
    jobs = []
    for entry in meta["training"]:
        case = Path(entry["image"]).name.removesuffix(".nii.gz")
        jobs.append((src / entry["image"], src / entry["label"], out, f"imagesTr/{case}", f"labelsTr/{case}_seg.dcm",
                     int(case.rsplit("_", 1)[1]), classes))
    if not (out / "dataset.json").exists():
        run_jobs(_subject, jobs, workers, progress)
        meta = {**meta, "name": f"{meta['name']}DICOM", "description": meta["description"] + ", as DICOM series",
                "training": [{"image": f"./{j[3]}", "label": f"./{j[4]}"} for j in jobs]}
        _write_text(out / "dataset.json", json.dumps(meta, indent=2))
    else:
        progress.skip(len(jobs))
    return out


def lesion_to_dicom(src: Path, *, workers: int, progress, run_jobs) -> Path:
    """``brain_lesion_dicom`` beside the NIfTI set ``src`` (CSV of series folders, SEG masks)."""
    out = src.parent / f"{src.name}_dicom"
    with open(src / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    jobs = []
    for row in rows:
        case = Path(row["path"]).name.removesuffix(".nii.gz")
        mask = f"masks/{case}_seg.dcm" if row.get("mask") else ""
        jobs.append((src / row["path"], src / row["mask"] if mask else None, out, f"series/{case}", mask,
                     int(case.rsplit("_", 1)[1]), {0: "background", 1: "lesion"}))
    if not (out / "manifest.csv").exists():
        run_jobs(_subject, jobs, workers, progress)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "label", "patient_id", "mask"])
        for row, job in zip(rows, jobs):
            writer.writerow([job[3], row["label"], "", job[4]])
        _write_text(out / "manifest.csv", buf.getvalue())
    else:
        progress.skip(len(jobs))
    return out
