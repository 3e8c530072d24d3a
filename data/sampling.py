"""Draw training samples from preprocessed volumes: 2D slices or 3D patches.

A patch is centred on a foreground voxel with probability ``foreground_ratio``
(nnU-Net's oversampling) and anywhere otherwise; 2D mode takes the slice
through that point. Volumes smaller than the patch are padded (image with each
channel's minimum, label with 0). Arrays are channels-first: image (C, X, Y, Z),
label (X, Y, Z); a 2D sample is (C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FG_POINTS = 20_000  # foreground voxels kept per case to centre patches on


@dataclass(frozen=True)
class SamplerConfig:
    """How samples are cut. ``patch_size`` has 2 entries in 2D mode and 3 in 3D mode."""

    mode: str  # '2d' or '3d'
    patch_size: tuple[int, ...]
    slice_axis: int  # 2D mode: the axis sliced (the loader section of medflow.core.config has the defaults)
    foreground_ratio: float
    crop: str  # 'random' or 'center'

    @property
    def ndim(self) -> int:
        return 2 if self.mode == "2d" else 3


def foreground_points(label: np.ndarray | None, seed: int = 0) -> np.ndarray:
    """Up to FG_POINTS voxel coordinates (N, 3) of label > 0, a seeded subsample."""
    if label is None:
        return np.zeros((0, 3), dtype=np.int32)
    flat = np.flatnonzero(label > 0)
    if flat.size > FG_POINTS:
        flat = np.sort(np.random.default_rng(seed).choice(flat, FG_POINTS, replace=False))
    return np.stack(np.unravel_index(flat, label.shape), axis=1).astype(np.int32)


def draw_centre(shape: tuple[int, ...], fg: np.ndarray, cfg: SamplerConfig, rng: np.random.Generator) -> list[int]:
    """Pick the voxel the sample is centred on (the sampler's random draw)."""
    if cfg.crop == "center":
        return [s // 2 for s in shape]
    if len(fg) and rng.random() < cfg.foreground_ratio:
        return fg[rng.integers(len(fg))].tolist()
    return [int(rng.integers(s)) for s in shape]


def _window(centre: int, size: int, extent: int) -> tuple[int, int]:
    """Start/stop of a window of ``size`` around ``centre`` kept inside [0, extent) when it fits."""
    start = centre - size // 2
    if extent >= size:
        start = min(max(start, 0), extent - size)
    return start, start + size


def _cut(arr: np.ndarray, bounds: list[tuple[int, int]], fill) -> np.ndarray:
    """arr[..., bounds] with out-of-range parts filled (leading axes are kept whole)."""
    lead = arr.ndim - len(bounds)
    shape = arr.shape[:lead] + tuple(b - a for a, b in bounds)
    out = np.full(shape, fill, dtype=arr.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for (a, b), n in zip(bounds, arr.shape[lead:]):
        src.append(slice(max(a, 0), min(b, n)))
        dst.append(slice(max(a, 0) - a, max(a, 0) - a + max(min(b, n) - max(a, 0), 0)))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def cut_sample(image: np.ndarray, label: np.ndarray | None, centre: list[int], cfg: SamplerConfig):
    """Cut the 2D slice or 3D patch around ``centre``.

    Returns:
        (image (C, *P), label (*P) or None) with P = cfg.patch_size.
    """
    spatial = image.shape[1:]
    fill = image.reshape(image.shape[0], -1).min(axis=1)
    if cfg.mode == "2d":
        axis = cfg.slice_axis
        image = np.take(image, centre[axis], axis=axis + 1)
        label = np.take(label, centre[axis], axis=axis) if label is not None else None
        spatial = tuple(s for i, s in enumerate(spatial) if i != axis)
        centre = [c for i, c in enumerate(centre) if i != axis]
    bounds = [_window(c, p, n) for c, p, n in zip(centre, cfg.patch_size, spatial)]
    out = np.stack([_cut(ch, bounds, f) for ch, f in zip(image, fill)])
    lab = _cut(label, bounds, 0) if label is not None else None
    return out, lab


def paste_sample(patch: np.ndarray, shape: tuple[int, ...], centre: list[int], cfg: SamplerConfig,
                 fill: float = 0.0) -> np.ndarray:
    """The inverse of :func:`cut_sample` for a 3D patch map: (*P) -> (*shape), ``fill`` outside the patch.

    A map computed on a patch (an explanation, a lesion probability) goes back onto the
    preprocessed grid it was cut from; parts of the patch that were padding are dropped.
    """
    if cfg.mode == "2d":
        raise ValueError("paste_sample takes 3D patches")
    bounds = [_window(c, p, n) for c, p, n in zip(centre, cfg.patch_size, shape)]
    out = np.full(shape, fill, dtype=patch.dtype)
    src, dst = [], []
    for (a, b), n in zip(bounds, shape):
        dst.append(slice(max(a, 0), min(b, n)))
        src.append(slice(max(a, 0) - a, max(a, 0) - a + max(min(b, n) - max(a, 0), 0)))
    out[tuple(dst)] = patch[tuple(src)]
    return out
