"""Dataset layouts: list the cases of a dataset folder without reading any volume.

Two layouts are understood:

* ``msd``: the Medical Segmentation Decathlon layout (``dataset.json`` with a
  ``training`` list, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``) and its
  nnU-Net v2 variant (``dataset.json`` with ``channel_names`` and
  ``file_ending``, channel files ``CASE_0000.nii.gz``).
* ``csv``: a classification manifest ``path,label,patient_id[,split]``.

An image entry of either may name a folder of DICOM files instead of a NIfTI
file: each image series under it becomes a case (:mod:`medflow.data.dicom.listing`),
with a de-identified id, and its patient from the PatientID where the dataset
gives none.

Problems with one case (a path outside the root, a duplicate id, an unknown
class) are recorded on that case, so ingest can quarantine it and carry on.
Problems with the dataset as a whole raise :class:`DatasetError`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from medflow.data.dicom.listing import check_modality, expand_dicom
from medflow.data.nifti import strip_nifti_suffix

CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """The dataset as a whole cannot be listed (one line, naming the file)."""


@dataclass
class CaseEntry:
    """One case as listed by the layout; nothing has been read yet.

    Attributes:
        case_id: unique, file-name-safe id.
        images: absolute paths, one per channel.
        label: absolute path of the label map (segmentation) or of the lesion mask (classification,
            the CSV's optional ``mask`` column: values 0/1 on the image's grid), or None.
        target: class name (classification), or None.
        patient_id: cases of one patient always land in the same split.
        split: a split fixed by the dataset ('train', 'val', 'test'), or None.
        error: a listing-level problem; such a case is quarantined.
        source: what to name in messages (the path as written in the dataset).
        modality: a DICOM case's channel name from its header ('CT', 'MRI'); None for NIfTI.
    """

    case_id: str
    images: list[str]
    label: str | None = None
    target: str | None = None
    patient_id: str = ""
    split: str | None = None
    error: str | None = None
    source: str = ""
    modality: str | None = None


@dataclass
class DatasetListing:
    """All cases of a dataset plus what the dataset declares about itself."""

    name: str
    layout: str
    task: str  # 'segmentation' or 'classification'
    channels: list[str]  # modality name per channel, e.g. ['MRI'] or ['CT']
    classes: dict[int, str] = field(default_factory=dict)  # label value (seg) or index (cls) -> name
    codes: dict[int, tuple] = field(default_factory=dict)  # label value -> (scheme, code, meaning), e.g. SNOMED CT
    cases: list[CaseEntry] = field(default_factory=list)


def resolve_inside(root: str, rel: str) -> tuple[str, str | None]:
    """Resolve ``rel`` against ``root``; return (path, error) where error is set if it escapes the root.

    Absolute paths, ``..`` components and symbolic links are all judged by where
    they finally resolve, so a link inside the root pointing elsewhere is refused.
    """
    real_root = os.path.realpath(root)
    candidate = rel if os.path.isabs(rel) else os.path.join(root, rel)
    real = os.path.realpath(candidate)
    if os.path.commonpath([real_root, real]) != real_root:
        return candidate, "path resolves outside the dataset root"
    return real, None


def _mark_duplicates(cases: list[CaseEntry]) -> None:
    first: dict[str, CaseEntry] = {}
    for case in cases:
        if case.error:
            continue
        if case.case_id in first:
            case.error = f"duplicate case id {case.case_id!r} (first listed as {first[case.case_id].source})"
        else:
            first[case.case_id] = case


def _check_id(case: CaseEntry) -> None:
    if not case.error and not CASE_ID_RE.match(case.case_id):
        case.error = f"case id {case.case_id!r} has characters not allowed in file names"


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing (an msd dataset needs dataset.json)") from None
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable JSON ({' '.join(str(err).split())})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level")
    return doc


def _msd_labels(path: Path, labels) -> dict[int, str]:
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{path}: 'labels' must be a non-empty object")
    out = {}
    for k, v in labels.items():
        # MSD maps "value": "name"; nnU-Net v2 maps "name": value.
        value, name = (k, v) if str(k).lstrip("-").isdigit() else (v, k)
        if not isinstance(value, int) and not str(value).lstrip("-").isdigit():
            raise DatasetError(f"{path}: label {k!r} -> {v!r} is not an integer value (region labels are not supported)")
        out[int(value)] = str(name)
    return dict(sorted(out.items()))


def list_msd(root: str, include_unlabeled: bool = False, *, id_salt: str = "",
             log_identifiers: bool = False) -> DatasetListing:
    """List an MSD / nnU-Net v2 segmentation dataset.

    Args:
        root: the dataset folder holding dataset.json.
        include_unlabeled: also list ``imagesTs/`` cases (no label, split 'inference').
        id_salt, log_identifiers: for DICOM series entries (:func:`medflow.data.dicom.listing.series_cases`).
    """
    meta_path = Path(root) / "dataset.json"
    meta = _read_json(meta_path)
    classes = _msd_labels(meta_path, meta.get("labels"))
    if "channel_names" in meta:  # nnU-Net v2
        channels = [str(v) for _, v in sorted(meta["channel_names"].items(), key=lambda kv: int(kv[0]))]
        cases = _list_v2(root, meta.get("file_ending", ".nii.gz"), len(channels), include_unlabeled)
    elif "training" in meta:
        modality = meta.get("modality", {"0": "MRI"})
        channels = [str(v) for _, v in sorted(modality.items(), key=lambda kv: int(kv[0]))]
        cases = _list_msd_training(root, meta_path, meta, include_unlabeled)
        cases = [c for case in cases for c in expand_dicom(case, id_salt, log_identifiers, one_series=True)]
        for case in cases:  # a NIfTI entry without a patient is its own patient
            case.patient_id = case.patient_id or case.case_id
    else:
        raise DatasetError(f"{meta_path}: neither an MSD 'training' list nor nnU-Net v2 'channel_names'")
    for case in cases:
        _check_id(case)
    _mark_duplicates(cases)
    check_modality(cases, channels[0] if len(channels) == 1 else None)
    return DatasetListing(
        name=str(meta.get("name", Path(root).name)), layout="msd", task="segmentation",
        channels=channels, classes=classes, cases=cases, codes=_label_codes(meta_path, meta, classes),
    )


def _label_codes(path: Path, meta: dict, classes: dict[int, str]) -> dict[int, tuple]:
    """dataset.json's optional ``label_codes``: {"1": ["SCT", "85756007", "Tissue"], ...}, the coded
    concept of each class that a DICOM SEG's segments carry."""
    codes = meta.get("label_codes") or {}
    if not isinstance(codes, dict):
        raise DatasetError(f"{path}: 'label_codes' must be an object of label value -> [scheme, code, meaning]")
    out = {}
    for key, code in codes.items():
        if not str(key).isdigit() or int(key) not in classes:
            raise DatasetError(f"{path}: label_codes key {key!r} is not one of the label values {sorted(classes)}")
        if not isinstance(code, list) or len(code) != 3 or not all(isinstance(c, str) and c for c in code):
            raise DatasetError(f"{path}: label_codes[{key!r}] must be [scheme, code, meaning], e.g. "
                               f"[\"SCT\", \"85756007\", \"Tissue\"]")
        out[int(key)] = tuple(code)
    return out


def _list_msd_training(root, meta_path, meta, include_unlabeled) -> list[CaseEntry]:
    entries = meta.get("training")
    if not isinstance(entries, list):
        raise DatasetError(f"{meta_path}: 'training' must be a list")
    cases = []
    for i, item in enumerate(entries):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            cases.append(CaseEntry(f"entry{i}", [], source=f"{meta_path}[training][{i}]",
                                   error="entry needs 'image' and 'label'"))
            continue
        image, err_i = resolve_inside(root, str(item["image"]))
        label, err_l = resolve_inside(root, str(item["label"]))
        case_id = strip_nifti_suffix(os.path.basename(str(item["image"])))
        cases.append(CaseEntry(
            case_id=case_id, images=[image], label=label, patient_id=str(item.get("patient_id", "")),
            source=str(item["image"]), error=err_i or (err_l and f"label {err_l}"),
        ))
    if include_unlabeled:
        for i, rel in enumerate(meta.get("test", []) or []):
            rel = rel.get("image") if isinstance(rel, dict) else rel
            image, err = resolve_inside(root, str(rel))
            case_id = strip_nifti_suffix(os.path.basename(str(rel)))
            cases.append(CaseEntry(case_id, [image], patient_id=case_id, split="inference", source=str(rel), error=err))
    return cases


def _list_v2(root, ending, n_channels, include_unlabeled) -> list[CaseEntry]:
    cases = []
    for folder, labelled in (("imagesTr", True), ("imagesTs", False)):
        if not labelled and not include_unlabeled:
            continue
        img_dir = Path(root) / folder
        if not img_dir.is_dir():
            if labelled:
                raise DatasetError(f"{img_dir}: missing folder")
            continue
        ids = sorted({f.name[: -len(ending) - 5] for f in img_dir.iterdir()
                      if f.name.endswith(ending) and re.search(r"_\d{4}$", f.name[: -len(ending)])})
        for case_id in ids:
            rels = [f"{folder}/{case_id}_{c:04d}{ending}" for c in range(n_channels)]
            resolved = [resolve_inside(root, r) for r in rels]
            label, err_l = resolve_inside(root, f"labelsTr/{case_id}{ending}") if labelled else (None, None)
            err = next((e for _, e in resolved if e), None) or (err_l and f"label {err_l}")
            cases.append(CaseEntry(case_id, [p for p, _ in resolved], label=label, patient_id=case_id,
                                   split=None if labelled else "inference", source=rels[0], error=err))
    return cases


def list_csv(root: str, manifest: str = "manifest.csv", classes: list[str] | None = None, *, id_salt: str = "",
             log_identifiers: bool = False) -> DatasetListing:
    """List a classification dataset from a CSV manifest ``path,label,patient_id[,split][,mask]``.

    ``mask`` (optional, may be empty) is a lesion mask on the image's grid: ingest validates it like a
    label map with the values {0, 1}. A case without one is weakly labelled (or has no lesion).

    Args:
        root: dataset folder; manifest paths are relative to it and must stay inside it.
        manifest: manifest file name, relative to ``root``.
        classes: the declared class names in index order; inferred (sorted) when None.
    """
    path = Path(root) / manifest
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = reader.fieldnames or []
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing manifest") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path}: unreadable CSV ({' '.join(str(err).split())})") from None
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (need path,label,patient_id[,split])")
    if classes is None:
        classes = sorted({(r.get("label") or "").strip() for r in rows} - {""})
    cases = []
    for row_no, row in enumerate(rows, start=2):  # row 1 is the header
        rel = (row.get("path") or "").strip()
        where = f"{path}:{row_no}"
        image, err = resolve_inside(root, rel) if rel else ("", "empty path")
        target = (row.get("label") or "").strip()
        split = (row.get("split") or "").strip().lower() or None
        if not err and target not in classes:
            err = f"label {target!r} is not one of the declared classes {classes}"
        if not err and split is not None and split not in SPLITS:
            err = f"split {split!r} is not one of {list(SPLITS)}"
        patient = (row.get("patient_id") or "").strip()
        if not err and not patient and not os.path.isdir(image):
            err = "empty patient_id" if "patient_id" in columns else "no patient_id column (a NIfTI row needs one)"
        mask_rel, mask = (row.get("mask") or "").strip(), None
        if mask_rel and not err:
            mask, mask_err = resolve_inside(root, mask_rel)
            err = mask_err and f"mask {mask_err}"
        case_id = strip_nifti_suffix(os.path.basename(rel)) or f"row{row_no}"
        entry = CaseEntry(case_id, [image], label=mask, target=target, patient_id=patient, split=split,
                          source=rel or where, error=err and (f"row {row_no}: {err}"))
        cases += expand_dicom(entry, id_salt, log_identifiers, one_series=mask is not None)
    for case in cases:
        _check_id(case)
    _mark_duplicates(cases)
    channel = next((c.modality for c in cases if c.modality and not c.error), "MRI")
    check_modality(cases, channel)
    return DatasetListing(
        name=Path(root).name, layout="csv", task="classification", channels=[channel],
        classes=dict(enumerate(classes)), cases=cases,
    )

