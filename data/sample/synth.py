"""Synthetic subjects from the MNI152 2009a template: the draw and its application.

A subject is the template seen through a random smooth deformation, rotation
and scaling, with an MR bias field, a gamma change and Rician noise, stored on
its own grid (spacing and orientation drawn too). :func:`draw_subject` makes
every random choice from one seed; :func:`synthesize` applies them and is a pure
function of (template, params), so a subject can be rebuilt exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from scipy.special import erfc

ORIENTATIONS = ("RAS", "LAS", "LPS")
LESION_KINDS = ("normal", "hyperintense_lesion", "hypointense_lesion")


@dataclass(frozen=True)
class Template:
    """Template image and tissue labels on the template grid.

    Attributes:
        image: (X, Y, Z) float32 T1 intensities in [0, 1].
        label: (X, Y, Z) uint8: 0 background, 1 CSF/other, 2 GM, 3 WM.
        affine: (4, 4) voxel-to-world matrix (RAS).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class SubjectParams:
    """Every random choice for one subject (JSON-serializable via ``asdict``)."""

    seed: int
    rotation_deg: tuple[float, float, float]
    scale: float
    displacement_max_mm: float
    bias_strength: float
    gamma: float
    noise_frac: float
    spacing: tuple[float, float, float]
    orientation: str
    lesion: dict | None = field(default=None)

    def to_json(self) -> dict:
        return asdict(self)


def tissue_labels(gm: np.ndarray, wm: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """Labels from probability maps: inside the mask, 1 + argmax(1 - gm - wm, gm, wm); 0 outside."""
    probs = np.stack([1.0 - gm - wm, gm, wm])
    label = (1 + np.argmax(probs, axis=0)).astype(np.uint8)
    label[~brain_mask.astype(bool)] = 0
    return label


def draw_subject(seed_seq: np.random.SeedSequence, spacings, lesion_kind: str | None = None) -> SubjectParams:
    """Draw one subject's parameters from ``seed_seq`` (ranges follow the sample-data spec)."""
    rng = np.random.default_rng(seed_seq)
    lesion = None
    if lesion_kind is not None and lesion_kind != "normal":
        lesion = {
            "kind": lesion_kind,
            "semi_axes_mm": [float(a) for a in rng.uniform(4.0, 10.0, 3)],
            "contrast": float(rng.uniform(0.2, 0.5)),
            "rotation_quat": [float(q) for q in Rotation.random(random_state=rng).as_quat()],
            "edge_sigma_mm": 1.0,
            "centre_draw": float(rng.random()),  # picks the centre among GM/WM voxels
        }
    return SubjectParams(
        seed=int(rng.integers(2**31)),
        rotation_deg=tuple(float(a) for a in rng.uniform(-10, 10, 3)),
        scale=float(rng.uniform(0.9, 1.1)),
        displacement_max_mm=float(rng.uniform(2.0, 6.0)),
        bias_strength=0.2,
        gamma=float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))),
        noise_frac=float(rng.uniform(0.02, 0.06)),
        spacing=tuple(float(s) for s in spacings[int(rng.integers(len(spacings)))]),
        orientation=ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))],
        lesion=lesion,
    )


def output_grid(template: Template, spacing, orientation: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A grid covering the template's field of view at ``spacing`` with axes along ``orientation``.

    Returns:
        (affine (4, 4), shape (X, Y, Z)).
    """
    shape = np.array(template.image.shape)
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    world = corners @ template.affine[:3, :3].T + template.affine[:3, 3]
    lo, hi = world.min(0), world.max(0)
    signs = np.array([1.0 if c in "RAS" else -1.0 for c in orientation])
    spacing = np.asarray(spacing, dtype=np.float64)
    out_shape = tuple(int(n) for n in np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(signs * spacing)
    affine[:3, 3] = np.where(signs > 0, lo, hi)
    return affine, out_shape


def _smooth_field(rng, shape, spacing, smooth_mm: float, n: int, coarse_mm: float = 4.0) -> np.ndarray:
    """``n`` smooth random fields (n, X, Y, Z), each scaled so the largest |value| is 1 overall."""
    step = np.maximum(1, np.round(coarse_mm / np.asarray(spacing))).astype(int)
    coarse_shape = tuple(int(np.ceil(s / st)) + 1 for s, st in zip(shape, step))
    sigma = smooth_mm / (step * np.asarray(spacing))
    coarse = np.stack([ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma, mode="reflect")
                       for _ in range(n)])
    peak = np.max(np.sqrt((coarse**2).sum(0))) if n > 1 else np.max(np.abs(coarse))
    coarse /= max(peak, 1e-12)
    # Upsample by exact linear interpolation of the coarse lattice (voxel i <-> coarse i/step).
    return np.stack([ndimage.affine_transform(c.astype(np.float32), 1.0 / step, output_shape=shape, order=1,
                                              mode="nearest") for c in coarse])


def _world_grid(affine, shape) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    return (affine[:3, :3].astype(np.float32) @ idx + affine[:3, 3:4].astype(np.float32)).reshape((3, *shape))


def synthesize(template: Template, params: SubjectParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply ``params`` to ``template``.

    Returns:
        (image (X, Y, Z) float32 in about [0, 1.2], label (X, Y, Z) uint8, affine (4, 4)).
    """
    image, label, _, affine = synthesize_with_mask(template, params)
    return image, label, affine


def synthesize_with_mask(template: Template, params: SubjectParams):
    """:func:`synthesize` plus the lesion mask.

    Returns:
        (image, label, mask (X, Y, Z) uint8: 1 where the soft lesion ellipsoid is above half its
        peak, all 0 without a lesion, affine).
    """
    rng = np.random.default_rng(params.seed)
    affine, shape = output_grid(template, params.spacing, params.orientation)
    world = _world_grid(affine, shape)  # (3, X, Y, Z) mm
    centre = template.affine[:3, :3] @ ((np.array(template.image.shape) - 1) / 2) + template.affine[:3, 3]
    # Backward map: subject point x samples the template at c + (R S)^-1 (x - c) + u(x).
    rot = Rotation.from_euler("xyz", params.rotation_deg, degrees=True).as_matrix()
    back = np.linalg.inv(rot * params.scale)
    disp = _smooth_field(rng, shape, params.spacing, smooth_mm=8.0, n=3) * params.displacement_max_mm
    src = np.einsum("ij,j...->i...", back.astype(np.float32), world - centre[:, None, None, None].astype(np.float32))
    src += centre[:, None, None, None].astype(np.float32) + disp
    inv_t = np.linalg.inv(template.affine).astype(np.float32)
    vox = np.einsum("ij,j...->i...", inv_t[:3, :3], src) + inv_t[:3, 3, None, None, None]
    del src, disp
    image = ndimage.map_coordinates(template.image, vox, order=1, mode="constant", cval=0.0)
    label = ndimage.map_coordinates(template.label, vox, order=0, mode="constant", cval=0).astype(np.uint8)
    del vox
    mask = np.zeros(shape, dtype=np.uint8)
    if params.lesion is not None:
        soft = _lesion_profile(params.lesion, world, label)
        sign = 1.0 if params.lesion["kind"] == "hyperintense_lesion" else -1.0
        image *= 1.0 + (sign * params.lesion["contrast"] * soft).astype(np.float32)
        mask = (soft > 0.5 * float(soft.max())).astype(np.uint8)
    bias = _smooth_field(rng, shape, params.spacing, smooth_mm=50.0, n=1, coarse_mm=8.0)[0]
    image *= 1.0 + params.bias_strength * bias
    image = np.power(np.clip(image, 0, None), params.gamma, dtype=np.float32)
    sigma = params.noise_frac * float(image.max())
    noise = rng.standard_normal((2, *shape), dtype=np.float32) * sigma
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # Rician: magnitude of complex Gaussian
    return image.astype(np.float32), label, mask, affine


def _lesion_profile(lesion: dict, world: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Soft-edged ellipsoid (X, Y, Z) in [0, 1] (1 deep inside), centred on a GM/WM voxel."""
    candidates = np.flatnonzero((label == 2) | (label == 3))
    if candidates.size == 0:
        raise ValueError("no GM/WM voxel to centre a lesion on")
    flat = candidates[min(int(lesion["centre_draw"] * candidates.size), candidates.size - 1)]
    centre = world.reshape(3, -1)[:, flat]
    rot = Rotation.from_quat(lesion["rotation_quat"]).as_matrix()
    return soft_ellipsoid(world - centre[:, None, None, None], lesion["semi_axes_mm"], rot, lesion["edge_sigma_mm"])


def soft_ellipsoid(offsets: np.ndarray, semi_axes, rotation, edge: float) -> np.ndarray:
    """A soft-edged ellipsoid (*S) float32 in [0, 1]: 1 deep inside, 0.5 on the surface.

    Args:
        offsets: (n, *S) float32 vectors from the centre to each point (mm or voxels).
        semi_axes: (n,) semi-axes, in the offsets' unit.
        rotation: (n, n) orthonormal matrix whose columns are the ellipsoid's axes.
        edge: Gaussian edge width (sd) > 0, in the offsets' unit.
    """
    n = offsets.shape[0]
    axes = np.asarray(semi_axes, dtype=np.float32).reshape((n,) + (1,) * (offsets.ndim - 1))
    local = np.einsum("ji,j...->i...", np.asarray(rotation, dtype=np.float32), offsets)  # R^T (x - c)
    r = np.sqrt(np.sum((local / axes) ** 2, axis=0)) + 1e-6
    grad = np.sqrt(np.sum((local / axes**2) ** 2, axis=0)) / r + 1e-6
    dist = (r - 1.0) / grad  # first-order distance to the surface
    return (0.5 * erfc(dist / (np.sqrt(2.0) * edge))).astype(np.float32)
