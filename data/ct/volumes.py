"""Sinograms from users' CT volumes: NIfTI in HU -> axial slices -> parallel-beam measurements.

Each volume is reoriented to RAS (so axial slices are [:, :, k], x to the right),
resampled in-plane to square ``pixel_mm`` pixels, and cut or padded (with air,
-1000 HU) to ``size`` x ``size`` about the volume's centre. Each slice then goes
through :func:`medflow.data.ct.physics.simulate_hu_slice`: HU -> attenuation, line
integrals, an optional detector count and Poisson photon noise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medflow.data.casefile import read_case, write_case
from medflow.data.ct.physics import midpoint_angles, n_detectors, simulate_hu_slice
from medflow.data.geometry import resample_to_spacing, to_canonical
from medflow.data.nifti import read_nifti

AIR_HU = -1000.0


@dataclass(frozen=True)
class CtGeometry:
    """The acquisition simulated for every slice (travels with the sinograms)."""

    size: int = 256
    pixel_mm: float = 1.0
    angles: int = 180
    detectors: int | None = None  # None: one per pixel over the padded diagonal
    photons: float | None = 1e5  # incident photons per detector bin; None: noiseless

    def to_json(self) -> dict:
        d = asdict(self)
        d["angles_deg"] = midpoint_angles(self.angles).tolist()
        d["detectors"] = self.detectors or n_detectors(self.size)
        return d


def axial_slices(path, size: int, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(Z, size, size) float32 HU slices of a CT NIfTI, and the (4, 4) affine of the cut grid.

    Raises:
        medflow.data.nifti.CaseError (one line naming the file) for unreadable or invalid volumes.
    """
    vol = read_nifti(path)
    data, affine = to_canonical(np.asarray(vol.data, dtype=np.float32), vol.affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    data, affine = resample_to_spacing(data, affine, [pixel_mm, pixel_mm, spacing[2]], order=1)
    out = np.full((size, size, data.shape[2]), AIR_HU, dtype=np.float32)
    src, dst = [], []
    for n in data.shape[:2]:  # centre crop or pad on each in-plane axis
        lo = (n - size) // 2
        src.append(slice(max(lo, 0), max(lo, 0) + min(n, size)))
        dst.append(slice(max(-lo, 0), max(-lo, 0) + min(n, size)))
    out[dst[0], dst[1]] = data[src[0], src[1]]
    shift = np.eye(4)
    shift[:2, 3] = [s.start - d.start for s, d in zip(src, dst)]
    return np.moveaxis(out, 2, 0), affine @ shift


def volume_sinograms(path, geometry: CtGeometry, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulated measurements of every axial slice of a CT volume.

    Returns:
        (sinograms (Z, D, A) float32, slices (Z, size, size) float32 in HU, affine (4, 4) of the slices).
    """
    slices, affine = axial_slices(path, geometry.size, geometry.pixel_mm)
    angles = midpoint_angles(geometry.angles)
    sinos = np.stack([simulate_hu_slice(s, geometry.pixel_mm, angles, geometry.detectors, geometry.photons, rng)
                      for s in slices]).astype(np.float32)
    return sinos, slices, affine


def assign_splits(files: list[Path], seed: int, val_fraction: float, test_fraction: float) -> dict[str, list[Path]]:
    """Whole volumes (patients) to train / validation / test, by a seeded permutation of the sorted files.

    Each split gets at least one volume when there are three or more.
    """
    files = sorted(files)
    if len(files) < 3:
        raise ValueError(f"need at least 3 CT volumes for train, validation and test, found {len(files)}")
    order = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    n_test = max(1, round(test_fraction * len(files)))
    n_val = max(1, round(val_fraction * len(files)))
    if n_test + n_val >= len(files):
        n_test, n_val = 1, 1
    return {"test": sorted(order[:n_test]), "validation": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def _volume_chunk(job) -> dict:
    """Simulate one volume's slices and write its chunk; returns a summary or the one-line problem."""
    from medflow.data.ct.physics import fbp_geometry
    from medflow.data.nifti import CaseError

    path, dest, geometry, geo, seed, slice_step, index0 = job
    try:
        rng = np.random.default_rng([seed, index0])
        sinos, slices, affine = volume_sinograms(path, geometry, rng)
    except (CaseError, ValueError) as err:
        return {"path": str(path), "error": str(err)}
    keep = np.arange(0, len(slices), slice_step)
    recon = np.stack([fbp_geometry(sinos[k], geo) for k in keep])
    write_case(dest, {"sinogram": sinos[keep], "fbp": recon, "gt": slices[keep],
                      "index": (index0 + keep).astype(np.int64)},
               {"source": str(path), "affine": affine.tolist(), "slices": keep.tolist()})
    return {"path": str(path), "slices": int(len(keep))}


def build_ct(folder: Path, files: dict[str, list[Path]], geometry: CtGeometry, *, fbp_filter: str,
             frequency_scaling: float, seed: int, slice_step: int, workers: int, progress, mapper=None) -> dict:
    """The (sinogram, FBP, HU slice) dataset of CT volumes, one chunk per volume (resumable, reused).

    A volume that cannot be read is left out with a one-line problem in the manifest's
    ``quarantine``; the others carry on.
    """
    from medflow.data.ct.ellipses import MANIFEST, SPLITS, write_manifest
    from medflow.data.ct.physics import hu_scale
    from medflow.data.sample.build import run_jobs

    folder = Path(folder)
    spec = {"source": "ct_volumes", "geometry": asdict(geometry), "fbp_filter": fbp_filter,
            "frequency_scaling": frequency_scaling, "seed": seed, "slice_step": slice_step,
            "files": {s: [str(p) for p in files[s]] for s in SPLITS}}
    if (folder / MANIFEST).exists():
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest["spec"] != spec:
            raise ValueError(f"{folder}: holds a CT dataset with a different spec")
        progress.skip(sum(len(v) for v in files.values()))
        return manifest
    scale, offset = hu_scale(geometry.pixel_mm)
    geo = {**geometry.to_json(), "beam": "parallel", "image_size": geometry.size, "units": "HU",
           "fbp_filter": fbp_filter, "frequency_scaling": frequency_scaling, "fbp_scale": scale, "fbp_offset": offset}
    jobs = [(path, folder / split / f"{i:05d}.npz", geometry, geo, seed, slice_step, i * 100_000)
            for split in SPLITS for i, path in enumerate(files[split])]
    todo = [j for j in jobs if not j[1].exists()]
    progress.skip(len(jobs) - len(todo))
    problems = [r for r in run_jobs(_volume_chunk, todo, workers, progress, mapper=mapper) if "error" in r]
    bad = {p["path"] for p in problems}
    chunks = {s: [j[1] for j in jobs if j[1].parent.name == s and str(j[0]) not in bad and j[1].exists()]
              for s in SPLITS}
    counts = {s: int(sum(read_case(p, ("index",))[0]["index"].size for p in chunks[s])) for s in SPLITS}
    empty = [s for s in SPLITS if counts[s] == 0]
    if empty:
        raise ValueError(f"{folder}: no readable CT volume left for {', '.join(empty)} "
                         f"({len(problems)} quarantined: {'; '.join(p['error'] for p in problems)})")
    return write_manifest(folder, spec, geo, counts, chunks, {"quarantine": problems})
