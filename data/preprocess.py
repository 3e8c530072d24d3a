"""Preprocess one case: canonical RAS, crop, resample, normalize. Arrays in, arrays out.

Nothing here touches the disk, so every step is tested on arrays; the stage
around it only reads, calls :func:`preprocess_case` and writes. The returned
metadata holds every grid the case passed through, so a prediction made on the
preprocessed grid can be mapped back to the patient's native space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medflow.data.geometry import axcodes, crop, foreground_bbox, resample_to_spacing, to_canonical, voxel_spacing
from medflow.data.intensity import foreground_mask, normalize
from medflow.data.nifti import CaseError

SPACING_TOLERANCE = 1e-4  # mm
# The fields of an ingest record that a preprocessed case file carries in its metadata.
RECORD_FIELDS = ("case_id", "patient_id", "target", "split", "images", "label")


@dataclass(frozen=True)
class PreprocessPlan:
    """Everything preprocessing decides, resolved from config and fingerprint (no defaults here: the
    preprocess section of medflow.core.config has them).

    Attributes:
        spacing: target voxel size in mm along R, A, S.
        normalization: scheme per channel: 'ct', 'mr' or 'none'.
        ct_window: (lo, hi) HU window for 'ct' channels.
        mr_percentiles: (lo, hi) foreground percentiles clipped for 'mr' channels.
        crop_to_foreground: crop to the bounding box of the head/body (and label).
        crop_margin: voxels kept around that box.
        image_order: spline order for images; labels always use nearest.
    """

    spacing: tuple[float, float, float]
    normalization: tuple[str, ...]
    ct_window: tuple[float, float]
    mr_percentiles: tuple[float, float]
    crop_to_foreground: bool
    crop_margin: int
    image_order: int

    def to_json(self) -> dict:
        return {
            "spacing": list(self.spacing), "normalization": list(self.normalization),
            "ct_window": list(self.ct_window), "mr_percentiles": list(self.mr_percentiles),
            "crop_to_foreground": self.crop_to_foreground, "crop_margin": self.crop_margin,
            "image_order": self.image_order, "orientation": "RAS",
        }


def scheme_for_channel(channel_name: str, modality: str, normalization: str) -> str:
    """Normalization scheme of one channel: explicit config first, then declared modality, then its name."""
    if normalization != "auto":
        return normalization
    if modality != "auto":
        return modality.lower()
    return "ct" if "CT" in channel_name.upper().split() or channel_name.upper() == "CT" else "mr"


def preprocess_case(
    images: list[np.ndarray], affine: np.ndarray, label: np.ndarray | None, plan: PreprocessPlan
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Bring one case to canonical RAS at the plan's spacing, cropped and normalized.

    Args:
        images: one (X, Y, Z) array per channel, all on the grid of ``affine``.
        affine: (4, 4) voxel-to-world matrix of the input grid.
        label: (X, Y, Z) integer label map on the same grid, or None.
        plan: the resolved plan.

    Returns:
        (image (C, X', Y', Z') float32, label (X', Y', Z') uint8 or None, meta) where
        meta holds the native, canonical and final grids, the crop box and the
        normalization applied per channel.
    """
    native = {"affine": np.asarray(affine).tolist(), "shape": list(images[0].shape), "axcodes": axcodes(affine)}
    # Views, not copies: the crop below copies only the box (a whole-volume C-order copy of a
    # Fortran-ordered NIfTI array cost a quarter of this function).
    canon = [to_canonical(img, affine, contiguous=False) for img in images]
    canon_affine = canon[0][1]
    chans = [c[0] for c in canon]
    lab = to_canonical(label, affine, contiguous=False)[0] if label is not None else None
    box = None
    if plan.crop_to_foreground:
        mask = foreground_mask(chans[0])
        if lab is not None:
            mask |= lab > 0
        box = foreground_bbox(mask, plan.crop_margin)
    if box is not None:
        cropped = [crop(c, canon_affine, box, contiguous=False) for c in chans]
        chans, crop_affine = [c[0] for c in cropped], cropped[0][1]
        lab = crop(lab, canon_affine, box, contiguous=False)[0] if lab is not None else None
    else:
        crop_affine = canon_affine
    out_chans, out_affine = [], crop_affine
    for c in chans:
        res, out_affine = resample_to_spacing(c, crop_affine, plan.spacing, order=plan.image_order)
        out_chans.append(np.ascontiguousarray(res))  # C order: the statistics sum in the same order always
    if lab is not None:
        # Nearest neighbour is pure indexing: any memory order gives the same labels, so no C-order copy first
        lab, lab_affine = resample_to_spacing(lab.astype(np.uint8, copy=False), crop_affine, plan.spacing, order=0)
        assert np.allclose(lab_affine, out_affine)
    stats = []
    for i, scheme in enumerate(plan.normalization):
        out_chans[i], s = normalize(out_chans[i], scheme, ct_window=plan.ct_window,
                                    mr_percentiles=plan.mr_percentiles)
        stats.append(s)
    image = np.stack(out_chans).astype(np.float32, copy=False)
    meta = {
        "native": native,
        "canonical": {"affine": canon_affine.tolist(), "shape": list(canon[0][0].shape)},
        "crop_box": [[int(b.start), int(b.stop)] for b in box] if box is not None else None,
        "affine": out_affine.tolist(),
        "shape": list(image.shape[1:]),
        "spacing": [round(float(s), 6) for s in voxel_spacing(out_affine)],
        "axcodes": axcodes(out_affine),
        "normalization": stats,
    }
    return image, (lab.astype(np.uint8) if lab is not None else None), meta


def preprocess_record(images: list[np.ndarray], affine: np.ndarray, label: np.ndarray | None, record: dict,
                      plan: PreprocessPlan) -> tuple[dict[str, np.ndarray], dict]:
    """One ingest record's case file contents: (arrays ``image`` [and ``label``], metadata).

    The same for the preprocess stage and for ingest working ahead of it
    (medflow.data.decoded), so both give the same bytes. Raises a CaseError
    naming the first image if the result is not RAS at the plan's spacing.
    """
    image, lab, meta = preprocess_case(images, affine, label, plan)
    if meta["axcodes"] != "RAS" or not np.allclose(meta["spacing"], plan.spacing, atol=SPACING_TOLERANCE):
        raise CaseError(record["images"][0], f"preprocessing produced {meta['axcodes']} at {meta['spacing']} mm")
    meta.update({k: record[k] for k in RECORD_FIELDS})
    return ({"image": image} if lab is None else {"image": image, "label": lab}), meta
