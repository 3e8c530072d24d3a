"""Build the sample datasets offline from nilearn's MNI152 2009a templates.

* ``brain_tissue``: MSD layout, labels 0 background, 1 CSF/other, 2 GM, 3 WM,
  subjects from the 1 mm template stored at 1, 1.2 or 1x1x2 mm.
* ``brain_lesion``: CSV manifest, classes normal / hyperintense_lesion /
  hypointense_lesion (balanced), subjects from the 2 mm template stored at 2,
  2.4 or 2x2x4 mm; each lesion subject's mask (``masks/``, 1 where the soft
  lesion ellipsoid is above half its peak) in the manifest's ``mask`` column.

Every subject has its own seed derived from (seed, dataset, index), so the
output does not depend on the number of workers or their order. Files are
written atomically and the dataset's index (dataset.json, manifest.csv) last,
so an interrupted build resumes and a finished one is skipped.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from medflow.data.atomic import write_atomic
from medflow.data.nifti import write_nifti
from medflow.data.sample.synth import (
    LESION_KINDS,
    Template,
    draw_subject,
    synthesize,
    synthesize_with_mask,
    tissue_labels,
)

SIZES = {"demo": {"brain_tissue": 20, "brain_lesion": 60}, "full": {"brain_tissue": 60, "brain_lesion": 150}}
TISSUE_CLASSES = {0: "background", 1: "csf_other", 2: "gray_matter", 3: "white_matter"}
SPACINGS = {
    "brain_tissue": ((1.0, 1.0, 1.0), (1.2, 1.2, 1.2), (1.0, 1.0, 2.0)),
    "brain_lesion": ((2.0, 2.0, 2.0), (2.4, 2.4, 2.4), (2.0, 2.0, 4.0)),
}
_DATASET_INDEX = {"brain_tissue": 0, "brain_lesion": 1}
# Stored like scanner data: int16, template intensity 1.0 -> 1000.
INTENSITY_SCALE = 1000.0
BUILD_VERSION = 2  # bump when the synthesis changes, so old sample folders are rebuilt


@lru_cache(maxsize=2)
def load_template(resolution: int) -> Template:
    """The MNI152 2009a T1 template and its tissue labels at 1 or 2 mm (shipped with nilearn)."""
    from nilearn import datasets  # heavy import, only where needed

    t1 = datasets.load_mni152_template(resolution=resolution)
    gm = datasets.load_mni152_gm_template(resolution=resolution).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=resolution).get_fdata(dtype=np.float32) > 0.5
    image = t1.get_fdata(dtype=np.float32)
    image /= max(float(image.max()), 1e-6)
    return Template(image=image, label=tissue_labels(gm, wm, mask), affine=np.asarray(t1.affine, dtype=np.float64))


def subject_seed(seed: int, dataset: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, _DATASET_INDEX[dataset], index])


def _tissue_subject(args) -> dict:
    seed, index, out_dir = args
    case_id = f"brain_{index:03d}"
    params = draw_subject(subject_seed(seed, "brain_tissue", index), SPACINGS["brain_tissue"])
    image, label, affine = synthesize(load_template(1), params)
    write_nifti(out_dir / "labelsTr" / f"{case_id}.nii.gz", label, affine)
    write_nifti(out_dir / "imagesTr" / f"{case_id}.nii.gz", np.round(image * INTENSITY_SCALE), affine, dtype=np.int16)
    return {"case_id": case_id, "params": params.to_json()}


def _lesion_subject(args) -> dict:
    seed, index, kind, out_dir = args
    case_id = f"lesion_{index:03d}"
    params = draw_subject(subject_seed(seed, "brain_lesion", index), SPACINGS["brain_lesion"], lesion_kind=kind)
    image, _, mask, affine = synthesize_with_mask(load_template(2), params)
    if params.lesion is not None:  # normal subjects have no mask file (the manifest's mask cell is empty)
        write_nifti(out_dir / "masks" / f"{case_id}.nii.gz", mask, affine, dtype=np.uint8)
    write_nifti(out_dir / "images" / f"{case_id}.nii.gz", np.round(image * INTENSITY_SCALE), affine, dtype=np.int16)
    return {"case_id": case_id, "kind": kind, "params": params.to_json()}


def _write_text(path: Path, text: str) -> None:
    with write_atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _prepare(out_dir: Path, stamp: dict, index_file: str) -> bool:
    """True when ``out_dir`` already holds this exact build; wipes a different one."""
    stamp_path = out_dir / "sample.json"
    if stamp_path.exists():
        try:
            same = json.loads(stamp_path.read_text())["build"] == stamp
        except (ValueError, KeyError):
            same = False
        if same and (out_dir / index_file).exists():
            return True
        if not same:
            shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not stamp_path.exists():
        _write_text(stamp_path, json.dumps({"build": stamp}, indent=2))
    return False


def run_jobs(fn, jobs, workers: int, progress, ticks=None, mapper=None) -> list:
    """``fn`` over ``jobs`` in ``workers`` processes (forkserver), results in order.

    ``ticks(job)`` is how far each finished job moves ``progress`` (default 1). ``mapper(fn, jobs)``,
    an iterator of results in job order, replaces the local pool (a Ray executor's).
    """
    jobs = list(jobs)
    results = []
    if mapper is not None:
        mapped, pool = mapper(fn, jobs), None
    elif workers <= 1:
        mapped = map(fn, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(workers, mp_context=_mp_context())
        mapped = pool.map(fn, jobs)
    try:
        for job, res in zip(jobs, mapped):
            results.append(res)
            progress.update(1 if ticks is None else ticks(job))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


def _mp_context():
    from medflow.data.workers import process_context

    return process_context()


def _build_subjects(root: Path, name: str, *, size, seed, index_file, image_rel, worker, job, workers, progress):
    """Shared part of both builders: reuse a finished build, else synthesize the missing subjects.

    Returns:
        (out_dir, n, built): ``built`` is False when the folder already held this build.
    """
    out_dir = root / name
    n = SIZES[size][name]
    if _prepare(out_dir, {"dataset": name, "n": n, "seed": seed, "version": BUILD_VERSION}, index_file):
        progress.skip(n)
        return out_dir, n, False
    todo = [job(i, out_dir) for i in range(n) if not (out_dir / image_rel.format(i)).exists()]
    progress.skip(n - len(todo))
    run_jobs(worker, todo, workers, progress)
    return out_dir, n, True


def build_tissue(root: Path, *, size: str, seed: int, workers: int, progress) -> Path:
    """Build (or reuse) the brain-tissue segmentation set under ``root/brain_tissue``."""
    out_dir, n, built = _build_subjects(
        root, "brain_tissue", size=size, seed=seed, index_file="dataset.json", image_rel="imagesTr/brain_{:03d}.nii.gz",
        worker=_tissue_subject, job=lambda i, d: (seed, i, d), workers=workers, progress=progress)
    if not built:
        return out_dir
    # Parameters are recomputed (cheap, deterministic) so resumed builds index every subject.
    params = [draw_subject(subject_seed(seed, "brain_tissue", i), SPACINGS["brain_tissue"]).to_json() for i in range(n)]
    _write_text(out_dir / "subjects.json", json.dumps(params, indent=1))
    meta = {
        "name": "BrainTissue", "description": "Synthetic subjects from the MNI152 2009a template (nilearn)",
        "reference": "Fonov et al., NeuroImage 2011; medflow sample-data", "tensorImageSize": "3D",
        "modality": {"0": "MRI"}, "labels": {str(k): v for k, v in TISSUE_CLASSES.items()},
        "numTraining": n, "numTest": 0,
        "training": [{"image": f"./imagesTr/brain_{i:03d}.nii.gz", "label": f"./labelsTr/brain_{i:03d}.nii.gz"}
                     for i in range(n)],
        "test": [],
    }
    _write_text(out_dir / "dataset.json", json.dumps(meta, indent=2))
    return out_dir


def lesion_kinds(seed: int, n: int) -> list[str]:
    """Balanced class assignment, shuffled by ``seed``."""
    kinds = [LESION_KINDS[i % len(LESION_KINDS)] for i in range(n)]
    np.random.default_rng(np.random.SeedSequence([seed, 99])).shuffle(kinds)
    return kinds


def build_lesion(root: Path, *, size: str, seed: int, workers: int, progress) -> Path:
    """Build (or reuse) the lesion classification set under ``root/brain_lesion``."""
    kinds = lesion_kinds(seed, SIZES[size]["brain_lesion"])
    out_dir, n, built = _build_subjects(
        root, "brain_lesion", size=size, seed=seed, index_file="manifest.csv", image_rel="images/lesion_{:03d}.nii.gz",
        worker=_lesion_subject, job=lambda i, d: (seed, i, kinds[i], d), workers=workers, progress=progress)
    if not built:
        return out_dir
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "patient_id", "mask"])
    for i in range(n):
        mask = f"masks/lesion_{i:03d}.nii.gz"
        mask = mask if (out_dir / mask).exists() else ""  # normal subjects: no lesion, no mask
        writer.writerow([f"images/lesion_{i:03d}.nii.gz", kinds[i], f"sub-{i:03d}", mask])
    _write_text(out_dir / "manifest.csv", buf.getvalue())
    return out_dir
