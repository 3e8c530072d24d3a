"""The cached ellipses dataset (data/ct/ellipses.py): content, parallel build, resume, reuse."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from medflow.core.progress import Progress
from medflow.data.ct.ellipses import MANIFEST, EllipsesSpec, build, load_split, make_sample

SPEC = EllipsesSpec(size=32, angles=12, counts={"train": 5, "validation": 2, "test": 3}, chunk=2)


def _progress(total):
    return Progress(total, "ellipses", unit="image", stream=io.StringIO())


def test_sample_shapes_and_fbp_approximates_the_phantom():
    sino, rec, gt = make_sample(EllipsesSpec(), "test", 0)
    assert sino.shape == (182, 30) and rec.shape == gt.shape == (128, 128)
    assert sino.dtype == rec.dtype == gt.dtype == np.float32
    psnr = peak_signal_noise_ratio(gt, rec, data_range=float(gt.max() - gt.min()))
    assert 18.0 < psnr < 30.0  # FBP from 30 noisy angles: DIVal reports 24.2 dB on average


def test_build_in_parallel_equals_serial_and_is_reused(tmp_path):
    a = build(tmp_path / "a", SPEC, workers=2, progress=_progress(10))
    b = build(tmp_path / "b", SPEC, workers=1, progress=_progress(10))
    assert a["counts"] == {"train": 5, "validation": 2, "test": 3}
    assert [c["sha256"] for c in a["chunks"]["train"]] == [c["sha256"] for c in b["chunks"]["train"]]
    train = load_split(tmp_path / "a", "train")
    assert train["sinogram"].shape == (5, 46, 12) and train["gt"].shape == (5, 32, 32)
    assert np.array_equal(train["index"], np.arange(5))
    sino, rec, gt = make_sample(SPEC, "train", 3)
    assert np.array_equal(train["sinogram"][3], sino) and np.array_equal(train["gt"][3], gt)
    # The splits are different phantoms.
    assert not np.array_equal(load_split(tmp_path / "a", "test")["gt"][0], train["gt"][0])
    # A finished build is reused as it stands; a different spec in the same folder is refused.
    progress = _progress(10)
    assert build(tmp_path / "a", SPEC, workers=1, progress=progress) == a
    assert progress.skipped == 10
    with pytest.raises(ValueError, match="different spec"):
        build(tmp_path / "a", EllipsesSpec(size=32, angles=13, counts=SPEC.counts, chunk=2), workers=1,
              progress=_progress(10))


def test_an_interrupted_build_resumes_chunk_by_chunk(tmp_path):
    folder = tmp_path / "ds"
    build(folder, SPEC, workers=1, progress=_progress(10))
    reference = json.loads((folder / MANIFEST).read_text())
    # Simulate a kill: manifest not yet written, one chunk missing, a temp file left behind.
    (folder / MANIFEST).unlink()
    (folder / "train" / "chunk_00001.npz").unlink()
    (folder / "train" / ".tmp-partial.npz").write_bytes(b"half")
    progress = _progress(10)
    resumed = build(folder, SPEC, workers=1, progress=progress)
    assert progress.skipped == 8  # only the missing chunk's 2 images were made again
    assert resumed == reference


def test_bad_specs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="oversample 2"):
        build(tmp_path / "x", EllipsesSpec(oversample=2, counts={"train": 1}), workers=1, progress=_progress(1))
    with pytest.raises(ValueError, match="splits"):
        build(tmp_path / "y", EllipsesSpec(counts={"training": 1}), workers=1, progress=_progress(1))
