"""Dataset fingerprint: what the data look like before any choice is made about them.

Like nnU-Net's fingerprint, it records per case the geometry (shape, spacing,
orientation) and a sample of foreground intensities, and for the dataset the
medians, percentiles and class frequencies that preprocessing and review need.
"""

from __future__ import annotations

import numpy as np

from medflow.data.geometry import axcodes, canonical_spacing, foreground_bbox, voxel_spacing
from medflow.data.intensity import foreground_mask, percentiles_linear

# Foreground intensities kept per case for the dataset percentiles (nnU-Net keeps 10k too).
SAMPLES_PER_CASE = 10_000
PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)
# An image whose Otsu foreground is smaller than this has no anatomy to learn from (stray bright voxels).
MIN_FOREGROUND_VOXELS, MIN_FOREGROUND_SHARE = 27, 0.001


def case_fingerprint(
    image: np.ndarray, affine: np.ndarray, label: np.ndarray | None, *, seed: int, n_classes: int = 0,
    mask: np.ndarray | None = None,
) -> dict:
    """Fingerprint one case.

    Args:
        image: (X, Y, Z) first channel of the image, in file orientation.
        affine: (4, 4) voxel-to-world matrix.
        label: (X, Y, Z) integer label map, or None.
        seed: seeds the intensity subsample, so the fingerprint is reproducible.
        n_classes: number of label values counted (0..n_classes-1).
        mask: (X, Y, Z) the image's Otsu foreground when the caller has it (ingest's content check);
            None computes it.

    Returns:
        JSON-serializable dict: shape, spacing, axcodes, intensity stats and a
        ``samples`` list of foreground intensities, plus ``class_voxels`` for labels.
    """
    fg = label > 0 if label is not None and label.any() else np.ones(image.shape, dtype=bool)
    values = image[fg]  # native dtype: a float64 copy of a whole volume costs more than the statistics
    rng = np.random.default_rng(seed)
    sample = rng.choice(values, size=min(SAMPLES_PER_CASE, values.size), replace=False)
    out = {
        "shape": [int(s) for s in image.shape],
        "spacing": [round(float(s), 6) for s in voxel_spacing(affine)],
        "spacing_ras": [round(float(s), 6) for s in canonical_spacing(affine)],
        "axcodes": axcodes(affine),
        "extent_mm": foreground_extent(image, affine, mask),
        "intensity": {
            "min": float(values.min()), "max": float(values.max()),
            "mean": float(values.mean(dtype=np.float64)), "sd": float(values.std(dtype=np.float64)),
            **dict(zip(("p0.5", "p99.5"), map(float, percentiles_linear(values, [0.5, 99.5])))),
        },
        "samples": [float(v) for v in np.sort(sample)],
    }
    if label is not None:
        counts = _class_voxels(label, n_classes)
        out["class_voxels"] = [int(c) for c in counts]
    return out


def _class_voxels(label: np.ndarray, n_classes: int) -> np.ndarray:
    """Voxels per label value 0..max(n_classes - 1, label.max()), as ``np.bincount`` counts them.

    A few comparisons cost a seventh of bincount's cast of the whole (X, Y, Z) map to
    intp; bincount remains for many classes or values at or above ``n_classes``.
    """
    if 0 < n_classes <= 8:
        counts = np.array([np.count_nonzero(label == k) for k in range(n_classes)], dtype=np.int64)
        if counts.sum() == label.size:
            return counts
    return np.bincount(label.ravel(order="K").astype(np.intp, copy=False), minlength=n_classes)


def content_problem(image: np.ndarray) -> tuple[str | None, np.ndarray | None]:
    """(why the image cannot train anything, or None; its foreground mask when it can).

    A constant image has no intensity range (normalization would make it all zeros), and an
    image whose Otsu foreground is a few stray voxels has no anatomy to learn from.
    """
    lo, hi = float(image.min()), float(image.max())
    if not hi > lo:
        return f"no intensity range: every voxel is {lo:g}", None
    mask = foreground_mask(image)
    n = int(np.count_nonzero(mask))
    if n < max(MIN_FOREGROUND_VOXELS, MIN_FOREGROUND_SHARE * image.size):
        return (f"no usable foreground: {n} of {image.size} voxels above the Otsu threshold "
                f"(at least {max(MIN_FOREGROUND_VOXELS, round(MIN_FOREGROUND_SHARE * image.size))} needed)"), None
    return None, mask


def label_outside(mask: np.ndarray, label: np.ndarray) -> bool:
    """True when the label has foreground and none of it touches the image's foreground ``mask``
    (a label of another scan, or one flipped in a conversion).

    The mask is grown by two voxels and its holes filled first: a dark lesion or a ventricle lies
    below the Otsu threshold but inside the anatomy, and must not count as outside.
    """
    from scipy.ndimage import binary_dilation, binary_fill_holes

    fg = label > 0
    if not fg.any() or np.any(fg & mask):
        return False
    body = binary_fill_holes(binary_dilation(mask, iterations=2))
    return not bool(np.any(fg & body))


def geometry_outliers(records: list[tuple[str, dict]], factor: float = 2.0) -> list[dict]:
    """Cases far from the dataset's geometry: a RAS spacing ``factor`` times off the median on some axis,
    or an orientation other than the most common one. ``records`` are (case_id, case fingerprint).

    Returns:
        [{"case_id", "problem"}], one line each (a warning for review, not a quarantine).
    """
    if len(records) < 3:
        return []
    median = np.median([fp["spacing_ras"] for _, fp in records], axis=0)
    codes = [fp["axcodes"] for _, fp in records]
    common = max(sorted(set(codes)), key=codes.count)
    out = []
    for case_id, fp in records:
        ratio = np.asarray(fp["spacing_ras"]) / np.maximum(median, 1e-9)
        lines = []
        if np.any(ratio > factor) or np.any(ratio < 1 / factor):
            lines.append(f"spacing {'x'.join(f'{s:g}' for s in fp['spacing_ras'])} mm where the median is "
                         f"{'x'.join(f'{s:g}' for s in median)} mm")
        if fp["axcodes"] != common and codes.count(common) > len(codes) / 2:
            lines.append(f"orientation {fp['axcodes']} where most cases are {common}")
        if lines:
            out.append({"case_id": case_id, "problem": "; ".join(lines)})
    return out


def foreground_extent(image: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None) -> list[float]:
    """Size in mm, along R, A and S, of the box around the foreground (the Otsu mask preprocessing crops to,
    ``mask`` when given): what the planner sizes patches from."""
    mask = foreground_mask(image) if mask is None else mask
    box = foreground_bbox(mask) or tuple(slice(0, n) for n in image.shape)
    spacing = voxel_spacing(affine)
    out = [0.0, 0.0, 0.0]
    for b, s, code in zip(box, spacing, axcodes(affine)):
        out["RASLPI".index(code) % 3] = round(float((b.stop - b.start) * s), 3)
    return out


def aggregate(records: list[dict], class_names: dict[int, str], label_maps: bool) -> dict:
    """Combine per-case fingerprints into the dataset fingerprint.

    Args:
        records: one dict per valid case with the keys of :func:`case_fingerprint`
            plus ``target`` for classification.
        class_names: label value (or class index) -> name.
        label_maps: the classes are label-map values (segmentation: class voxel frequencies);
            else they are case targets (class counts).
    """
    if not records:
        return {"n_cases": 0}
    spacings = np.array([r["spacing_ras"] for r in records])
    shapes = np.array([r["shape"] for r in records])
    samples = np.concatenate([np.asarray(r["samples"]) for r in records])
    orient: dict[str, int] = {}
    for r in records:
        orient[r["axcodes"]] = orient.get(r["axcodes"], 0) + 1
    out = {
        "n_cases": len(records),
        "spacing_ras": {"median": np.median(spacings, axis=0).tolist(), "min": spacings.min(0).tolist(),
                    "max": spacings.max(0).tolist()},
        "shape": {"median": np.median(shapes, axis=0).tolist(), "min": shapes.min(0).tolist(),
                  "max": shapes.max(0).tolist()},
        "extent_mm": _stats([r["extent_mm"] for r in records if "extent_mm" in r]),
        "axcodes": dict(sorted(orient.items())),
        "intensity": {
            "mean": float(samples.mean()), "sd": float(samples.std()),
            **{f"p{p:g}": float(v) for p, v in zip(PERCENTILES, np.percentile(samples, PERCENTILES))},
        },
    }
    if label_maps:
        values = sorted(class_names)
        total = np.sum([[_at(r["class_voxels"], v) for v in values] for r in records], axis=0)
        frac = total / max(total.sum(), 1)
        out["class_frequency"] = {class_names[v]: round(float(f), 6) for v, f in zip(values, frac)}
    else:
        counts = {name: 0 for name in class_names.values()}
        for r in records:
            counts[r["target"]] += 1
        out["class_counts"] = counts
    return out


def _stats(rows: list) -> dict:
    if not rows:
        return {}
    a = np.asarray(rows, dtype=np.float64)
    return {"median": np.median(a, axis=0).tolist(), "min": a.min(0).tolist(), "max": a.max(0).tolist()}


def _at(counts: list[int], value: int) -> int:
    return counts[value] if 0 <= value < len(counts) else 0
