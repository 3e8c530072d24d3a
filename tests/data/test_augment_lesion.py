"""lesion_synth: where the lesion goes, its sign per class, the mask, and the class binding."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.augment import Chain, build_transform
from medflow.data.augment.lesion import lesion_profile

CLASSES = ["normal", "bright", "dark"]
SPEC = {"name": "lesion_synth", "p": 1.0, "classes": {"bright": (0.3, 0.5), "dark": (-0.5, -0.3)},
        "semi_axes": (2.0, 3.0), "edge": 0.5}


def head(nd: int = 3):
    """A (1, *S) 'head': tissue at 1 +- 0.05 inside, air at -2 on the first quarter of axis 0."""
    shape = (32, 28, 24)[:nd]
    image = np.random.default_rng(1).normal(1.0, 0.05, (1, *shape)).astype(np.float32)
    image[:, : shape[0] // 4] = -2.0
    return image, np.zeros(shape, np.uint8)


def test_profile_is_an_ellipsoid_with_a_soft_edge():
    soft = lesion_profile((21, 21, 21), (10, 10, 10), (6.0, 3.0, 3.0), np.eye(3), edge=0.5)
    assert soft[10, 10, 10] > 0.99 and soft[0, 0, 0] < 1e-6
    inside = soft > 0.5
    assert inside[15, 10, 10] and not inside[17, 10, 10]  # semi-axis 6 along axis 0
    assert inside[10, 12, 10] and not inside[10, 14, 10]  # semi-axis 3 along axis 1
    assert abs(inside.sum() - 4 / 3 * np.pi * 6 * 3 * 3) < 0.15 * 4 / 3 * np.pi * 6 * 3 * 3  # voxels on the surface (0.5) are out
    turned = lesion_profile((21, 21, 21), (10, 10, 10), (6.0, 3.0, 3.0), np.eye(3)[[1, 0, 2]], edge=0.5)
    np.testing.assert_allclose(turned, soft.transpose(1, 0, 2), atol=1e-5)


@pytest.mark.parametrize("nd", [2, 3])
def test_lesion_class_gets_a_marked_lesion_of_its_sign_in_tissue(nd):
    image, mask = head(nd)
    chain = Chain.from_config([SPEC], nd, CLASSES)
    for seed in range(6):
        for target, sign in ((1, 1.0), (2, -1.0)):
            out, lab, applied = chain(image, mask, seed, target)
            assert applied[0][0] == "lesion_synth"
            marked = lab == 1
            assert marked.sum() >= 8 and set(np.unique(lab)) == {0, 1}
            assert not marked[: image.shape[1] // 4].any()  # tissue only, never the air
            ratio = (out[0][marked] + 2.0) / (image[0][marked] + 2.0)  # relative to the sample's minimum
            assert sign * (np.median(ratio) - 1.0) > 0.15  # |c| >= 0.3 times the profile, >= 0.5 in the mask
            outside = lab == 0  # only the soft edge (profile <= 0.5, |c| <= 0.5) changes outside the mask
            assert np.all(np.abs(out[0][outside] - image[0][outside]) <= 0.25 * (image[0][outside] + 2.0) + 1e-5)


def test_other_classes_unlabelled_and_unmarkable_samples_are_untouched():
    image, mask = head()
    chain = Chain.from_config([SPEC], 3, CLASSES)
    for target in (0, None):
        out, lab, _ = chain(image, mask, 3, target)
        np.testing.assert_array_equal(out, image)
        np.testing.assert_array_equal(lab, mask)
    out, lab, _ = chain(image, None, 3, 1)  # no mask: a lesion there could not be marked
    np.testing.assert_array_equal(out, image)
    assert lab is None


def test_existing_mask_is_kept_and_replay_is_exact():
    image, mask = head()
    mask[20:24, 10:14, 10:14] = 1
    chain = Chain.from_config([SPEC], 3, CLASSES)
    out, lab, applied = chain(image, mask, 9, 1)
    assert (lab[mask == 1] == 1).all() and lab.sum() > mask.sum()
    again = chain(image, mask, 9, 1)
    np.testing.assert_array_equal(again[0], out)
    np.testing.assert_array_equal(again[1], lab)
    assert again[2] == applied


def test_without_classes_every_sample_gets_the_contrast_range():
    image, mask = head()
    chain = Chain.from_config([{"name": "lesion_synth", "p": 1.0, "contrast": (0.4, 0.4)}], 3, [])
    out, lab, applied = chain(image, mask, 2, None)
    assert applied[0][1]["contrast"] == 0.4 and lab.any()


@pytest.mark.parametrize("classes,message", [
    (["normal", "other"], "lesion_synth: classes ['bright', 'dark'] are not in dataset.classes"),
    ([], "lesion_synth: classes needs a classification dataset"),
])
def test_class_binding_errors(classes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_transform(SPEC, 3, classes)


def test_config_names_the_transform_and_class(tmp_path):
    from medflow.core.config import PipelineConfig

    raw = {"name": "x", "stages": ["ingest"], "dataset": {"root": str(tmp_path), "layout": "csv",
                                                          "classes": ["normal", "bright"]},
           "augment": {"transforms": [SPEC]}}
    with pytest.raises(Exception, match=r"augment.transforms.0: lesion_synth: classes \['dark'\]"):
        PipelineConfig.model_validate(raw)
