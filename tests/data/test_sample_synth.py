"""Sample-data synthesis: the draw is seeded, the application pure, the grid as drawn."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.geometry import axcodes, voxel_spacing
from medflow.data.sample.build import SPACINGS, lesion_kinds, subject_seed
from medflow.data.sample.synth import (
    Template,
    draw_subject,
    output_grid,
    synthesize,
    synthesize_with_mask,
    tissue_labels,
)


@pytest.fixture(scope="module")
def tiny_template():
    """A 2 mm ball 'brain': WM core, GM shell, CSF rim, on a 40^3 grid."""
    shape = (40, 40, 40)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -39.0
    r = np.linalg.norm(np.indices(shape) - 19.5, axis=0) * 2.0
    wm = np.clip((24 - r) / 4, 0, 1)
    gm = np.clip(1 - np.abs(r - 28) / 4, 0, 1) * (1 - wm)
    mask = r < 34
    image = (0.3 * mask + 0.4 * gm + 0.7 * wm).astype(np.float32)
    return Template(image=image, label=tissue_labels(gm, wm, mask), affine=aff)


def test_tissue_labels():
    gm = np.array([0.7, 0.1, 0.2, 0.9])
    wm = np.array([0.2, 0.8, 0.1, 0.0])
    mask = np.array([True, True, True, False])
    np.testing.assert_array_equal(tissue_labels(gm, wm, mask), [2, 3, 1, 0])


def test_draw_is_seeded_and_in_range():
    a = draw_subject(subject_seed(0, "brain_tissue", 5), SPACINGS["brain_tissue"])
    assert a == draw_subject(subject_seed(0, "brain_tissue", 5), SPACINGS["brain_tissue"])
    assert a != draw_subject(subject_seed(0, "brain_tissue", 6), SPACINGS["brain_tissue"])
    draws = [draw_subject(subject_seed(1, "brain_tissue", i), SPACINGS["brain_tissue"]) for i in range(200)]
    assert all(-10 <= r <= 10 for d in draws for r in d.rotation_deg)
    assert all(0.9 <= d.scale <= 1.1 and 0.8 <= d.gamma <= 1.25 and 0.02 <= d.noise_frac <= 0.06 for d in draws)
    assert {d.orientation for d in draws} == {"RAS", "LAS", "LPS"}
    assert {d.spacing for d in draws} == set(SPACINGS["brain_tissue"])


def test_output_grid_orientation(tiny_template):
    aff, shape = output_grid(tiny_template, (2.0, 2.0, 4.0), "LPS")
    assert axcodes(aff) == "LPS"
    np.testing.assert_allclose(voxel_spacing(aff), [2.0, 2.0, 4.0])
    assert shape == (40, 40, 20)


def test_synthesize(tiny_template):
    params = draw_subject(subject_seed(0, "brain_tissue", 1), ((2.0, 2.0, 2.0),), lesion_kind=None)
    image, label, aff = synthesize(tiny_template, params)
    assert image.shape == label.shape and image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert axcodes(aff) == params.orientation
    again = synthesize(tiny_template, params)
    np.testing.assert_array_equal(image, again[0])
    # WM is brighter than GM after bias, gamma and noise
    assert np.median(image[label == 3]) > np.median(image[label == 2])


@pytest.mark.parametrize("kind,sign", [("hyperintense_lesion", 1), ("hypointense_lesion", -1)])
def test_lesion_changes_intensity(tiny_template, kind, sign):
    base = draw_subject(subject_seed(0, "brain_lesion", 2), ((2.0, 2.0, 2.0),), lesion_kind=kind)
    plain = type(base)(**{**base.to_json(), "lesion": None})
    with_lesion, label, _ = synthesize(tiny_template, base)
    without, _, _ = synthesize(tiny_template, plain)
    diff = with_lesion - without
    assert sign * diff.sum() > 0
    assert np.abs(diff).max() > 0.1
    _, _, mask, _ = synthesize_with_mask(tiny_template, base)
    assert mask.dtype == np.uint8 and 0 < mask.sum() < mask.size // 10
    # the mask is where the lesion is: the change inside it dwarfs the change outside it
    assert sign * diff[mask == 1].mean() > 10 * abs(diff[mask == 0].mean())
    assert synthesize_with_mask(tiny_template, plain)[2].sum() == 0


def test_lesion_classes_balanced():
    kinds = lesion_kinds(0, 150)
    assert set(np.unique(kinds, return_counts=True)[1]) == {50}
    assert kinds == lesion_kinds(0, 150) and kinds != lesion_kinds(1, 150)
