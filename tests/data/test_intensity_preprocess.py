"""Intensity normalization and the whole per-case preprocessing on arrays."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.geometry import voxel_to_world
from medflow.data.intensity import clip_hu, zscore_foreground
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
