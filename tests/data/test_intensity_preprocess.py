"""Intensity normalization and the whole per-case preprocessing on arrays."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.geometry import voxel_to_world
from medflow.data.intensity import clip_hu, foreground_mask, percentiles_linear, zscore_foreground
from medflow.data.preprocess import preprocess_case, scheme_for_channel
from tests.helpers import cube_case, make_affine, preprocess_plan


def test_clip_hu():
    out = clip_hu(np.array([-2000.0, -1000.0, 0.0, 1000.0, 3000.0]), (-1000, 1000))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="lo < hi"):
        clip_hu(np.zeros(3), (5, 5))


def test_zscore_over_foreground():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 1, (20, 20, 20)).astype(np.float32)  # background noise
    mask = np.zeros(img.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    img[mask] = rng.normal(500, 50, mask.sum())
    img[7, 7, 7] = 1e6  # one spike must not dominate the statistics
    out, stats = zscore_foreground(img, mask, (1, 99))
    assert stats["clip"][1] < 1e5
    assert out[mask].mean() == pytest.approx(0.0, abs=1e-4)
    assert out[mask].std() == pytest.approx(1.0, abs=1e-3)


def _reference_zscore(image, percentiles=(0.5, 99.5)):
    """zscore_foreground as it was written before it was made faster: the outputs must not move a bit."""
    mask = foreground_mask(image)
    values = image[mask] if mask.any() else image.ravel()
    lo, hi = np.percentile(values, percentiles)
    clipped = np.clip(image.astype(np.float32, copy=False), lo, hi)
    fg = np.clip(values.astype(np.float32), lo, hi)
    mean, sd = float(fg.mean()), float(fg.std())
    out = ((clipped - mean) / max(sd, 1e-8)).astype(np.float32, copy=False)
    return out, {"clip": [float(lo), float(hi)], "mean": mean, "sd": sd}


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_zscore_is_bit_identical_to_the_whole_volume_expression(layout):
    rng = np.random.default_rng(3)
    image = rng.gamma(2.0, 100.0, size=(70, 61, 52)).astype(np.float32)
    image[20:50, 15:45, 10:40] += 400.0  # a bright "head" for Otsu
    image = {"C": image, "F": np.asfortranarray(image), "strided": image[::-1, :, ::2]}[layout]
    out, stats = zscore_foreground(image)
    ref, ref_stats = _reference_zscore(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.array_equal(out, ref) and out.tobytes() == ref.tobytes() and stats == ref_stats


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
@pytest.mark.parametrize("percentiles", [(0.5, 99.5), (0, 100), (99.9, 0.1, 50), (3.0,)])
def test_percentiles_linear_equals_numpy_bit_for_bit(dtype, percentiles):
    rng = np.random.default_rng(int(np.dtype(dtype).itemsize * 10 + len(percentiles)))
    for n in (10, 70_000, 1_300_001):
        if np.dtype(dtype).kind == "f":
            values = rng.gamma(2.0, 3.0, n).astype(dtype)
        else:
            info = np.iinfo(dtype)
            values = rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)
        ties = rng.integers(0, 7, n).astype(dtype)  # many equal values at the ranks that matter
        for v in (values, ties):
            got, want = percentiles_linear(v, percentiles), np.percentile(v, percentiles)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (n, v[:5])


def test_percentiles_linear_falls_back_on_nan():
    values = np.random.default_rng(0).normal(size=100_000).astype(np.float32)
    values[17] = np.nan
    assert np.isnan(percentiles_linear(values, (0.5, 99.5))).all()


def test_scheme_for_channel():
    assert scheme_for_channel("CT", "auto", "auto") == "ct"
    assert scheme_for_channel("MRI", "auto", "auto") == "mr"
    assert scheme_for_channel("T1", "CT", "auto") == "ct"
    assert scheme_for_channel("CT", "auto", "none") == "none"


def test_preprocess_flipped_anisotropic_case():
    aff = make_affine((0.8, 1.6, 2.5), "LPS", origin=(40.0, 20.0, -10.0))
    image, label = cube_case((40, 20, 12), lo=(10, 5, 3), hi=(25, 12, 7))
    plan = preprocess_plan(normalization=("mr",), crop_margin=1)
    out, lab, meta = preprocess_case([image], aff, label, plan)
    assert out.shape[0] == 1 and out.dtype == np.float32 and lab.dtype == np.uint8
    assert out.shape[1:] == lab.shape
    assert meta["axcodes"] == "RAS" and meta["spacing"] == [1.0, 1.0, 1.0]
    assert set(np.unique(lab)) == {0, 1, 2}
    # The cube's centre of mass stays at the same world point (within a voxel).
    def centre(lbl, affine):
        return voxel_to_world(affine, [np.argwhere(lbl == 1).mean(0)])[0]
    np.testing.assert_allclose(centre(lab, np.array(meta["affine"])), centre(label, aff), atol=1.0)
    # The bright cube is still bright after normalization, and sits under its label.
    assert out[0][lab == 1].mean() > out[0][lab == 0].mean() + 1.0
    assert meta["native"]["axcodes"] == "LPS" and meta["native"]["shape"] == [40, 20, 12]
