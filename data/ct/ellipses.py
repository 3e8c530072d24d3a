"""The cached (sinogram, FBP, ground truth) dataset of DIVal-style ellipse phantoms.

One sample (:func:`make_sample`) is a pure function of (spec, split, index):
phantom -> sinogram measured from the ``oversample`` x finer phantom -> additive
Gaussian noise -> FBP. :func:`build` writes the samples of each split in chunks,
in parallel, each chunk an atomic, deterministic ``.npz`` (data/casefile), and
``dataset.json`` last, so an interrupted build resumes chunk by chunk and a
finished one is reused.

Layout under the build folder::

    train/chunk_00000.npz   sinogram (n, D, A), fbp (n, S, S), gt (n, S, S) float32, index (n,)
    validation/...          D = n_detectors(S), A = len(angles)
    test/...
    dataset.json            the spec, the geometry, counts and chunk checksums
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medflow.data.atomic import write_atomic
from medflow.data.casefile import file_sha256, read_case, write_case
from medflow.data.ct.phantoms import draw_ellipses, phantom, phantom_seed
from medflow.data.ct.physics import add_gaussian_noise, fbp, midpoint_angles, n_detectors, simulate_oversampled
from medflow.data.sample.build import run_jobs

SPLITS = ("train", "validation", "test")
MANIFEST = "dataset.json"
FORMAT_VERSION = 1  # bump when a sample's content changes


@dataclass(frozen=True)
class EllipsesSpec:
    """Everything that decides the samples' content (DIVal's 10 % regime by default)."""

    size: int = 128
    angles: int = 30
    oversample: int = 3
    noise: float = 0.025
    fbp_filter: str = "hann"
    frequency_scaling: float = 1.0
    seed: int = 0
    counts: dict = field(default_factory=lambda: {"train": 3200, "validation": 320, "test": 320})
    chunk: int = 64

    def geometry(self) -> dict:
        """The acquisition a model trained on this data expects (travels with exported models)."""
        return {"beam": "parallel", "image_size": self.size, "image_extent": [-1.0, 1.0],
                "angles_deg": midpoint_angles(self.angles).tolist(), "detectors": n_detectors(self.size),
                "detector_pitch_px": 1.0, "units": "line integrals in pixel units (scikit-image radon, circle=False)",
                "fbp_filter": self.fbp_filter, "frequency_scaling": self.frequency_scaling,
                "fbp_scale": 1.0, "fbp_offset": 0.0}


def make_sample(spec: EllipsesSpec, split: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sample.

    Returns:
        (sinogram (D, A), fbp (S, S), gt (S, S)), float32.
    """
    rng = np.random.default_rng(phantom_seed(spec.seed, split, index))
    gt, fine = phantom(draw_ellipses(rng), spec.size, spec.oversample)
    angles = midpoint_angles(spec.angles)
    sino = add_gaussian_noise(simulate_oversampled(fine, spec.size, angles), rng, spec.noise)
    return sino.astype(np.float32), fbp(sino, angles, spec.size, spec.fbp_filter, spec.frequency_scaling), gt


def _chunk_path(folder: Path, split: str, c: int) -> Path:
    return folder / split / f"chunk_{c:05d}.npz"


def _write_chunk(job) -> str:
    spec, folder, split, c = job
    start = c * spec.chunk
    indices = np.arange(start, min(start + spec.chunk, spec.counts[split]))
    sino, rec, gt = zip(*(make_sample(spec, split, int(i)) for i in indices))
    arrays = {"sinogram": np.stack(sino), "fbp": np.stack(rec), "gt": np.stack(gt), "index": indices.astype(np.int64)}
    return write_case(_chunk_path(folder, split, c), arrays, {"split": split, "chunk": c})


def _n_chunks(spec: EllipsesSpec, split: str) -> int:
    return -(-spec.counts.get(split, 0) // spec.chunk)


def spec_dict(spec: EllipsesSpec) -> dict:
    return {"format": FORMAT_VERSION, **asdict(spec)}


def build(folder: Path, spec: EllipsesSpec, *, workers: int, progress, mapper=None) -> dict:
    """Build (or finish, or reuse) the dataset in ``folder``; return its manifest.

    A folder holding a different spec is refused rather than mixed: callers key
    folders by the spec (the stage engine does). ``mapper``: see :func:`medflow.data.sample.build.run_jobs`.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["spec"] != spec_dict(spec):
            raise ValueError(f"{folder}: holds an ellipses dataset with a different spec")
        progress.skip(sum(spec.counts.values()))
        return manifest
    unknown = set(spec.counts) - set(SPLITS)
    if unknown or spec.oversample % 2 == 0 or spec.chunk < 1:
        raise ValueError(f"bad ellipses spec: splits {sorted(unknown)}, oversample {spec.oversample}, chunk {spec.chunk}")
    jobs, done = [], 0
    for split in SPLITS:
        for c in range(_n_chunks(spec, split)):
            if _chunk_path(folder, split, c).exists():
                done += min(spec.chunk, spec.counts[split] - c * spec.chunk)
            else:
                jobs.append((spec, folder, split, c))
    progress.skip(done)
    run_jobs(_write_chunk, jobs, workers, progress,
             ticks=lambda job: min(job[0].chunk, job[0].counts[job[2]] - job[3] * job[0].chunk), mapper=mapper)
    chunks = {split: [_chunk_path(folder, split, c) for c in range(_n_chunks(spec, split))] for split in SPLITS}
    return write_manifest(folder, spec_dict(spec), spec.geometry(),
                          {split: spec.counts.get(split, 0) for split in SPLITS}, chunks)


def write_manifest(folder: Path, spec: dict, geometry: dict, counts: dict, chunks: dict[str, list[Path]],
                   extra: dict | None = None) -> dict:
    """``dataset.json`` (atomically, last): spec, geometry, counts and each chunk's file and checksum."""
    manifest = {"spec": spec, "geometry": geometry, "counts": counts,
                "chunks": {split: [{"file": str(p.relative_to(folder)), "sha256": file_sha256(p)} for p in paths]
                           for split, paths in chunks.items()}, **(extra or {})}
    path = Path(folder) / MANIFEST
    with write_atomic(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


def load_split(folder: Path, split: str, names=("sinogram", "fbp", "gt")) -> dict[str, np.ndarray]:
    """All samples of ``split`` in index order: name -> (N, ...) float32 arrays (plus ``index``)."""
    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    parts = [read_case(folder / c["file"], tuple(names) + ("index",))[0] for c in manifest["chunks"][split]]
    if not parts:
        return {n: np.zeros((0,)) for n in (*names, "index")}
    return {n: np.concatenate([p[n] for p in parts]) for n in (*names, "index")}

