"""Every transform: shapes/dtypes, label set, identity at zero strength, seeding, label follows image."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.augment import REGISTRY, Chain, build_transform

# Parameters that make each transform do nothing (None: only p=0 can, e.g. a flip).
ZERO = {
    "flip": {"axes": []}, "affine": {"rotate_deg": 0, "scale": (1, 1), "translate": 0},
    "elastic": {"magnitude": 0}, "gamma": {"gamma": (1, 1)}, "bias_field": {"strength": 0},
    "rician_noise": {"sigma": (0, 0)}, "ct_lowdose_noise": {"dose": (1, 1)},
    "ghosting": {"intensity": (0, 0)}, "motion": {"rotate_deg": 0, "translate": 0},
    "kspace_spike": {"intensity": (0, 0)},
    "affine2d": {"rotate": 0, "scale": 1, "translate_percent": 0}, "elastic2d": {"alpha": 0},
    # albumentations' GridDistortion still resamples at distort_limit=0, so only p=0 is the identity
    "grid_distortion": None, "brightness_contrast": {"brightness_limit": 0, "contrast_limit": 0},
    "gauss_noise": {"std_range": (0, 0)}, "hflip": None, "vflip": None, "coarse_dropout": None,
    "coarse_dropout3d": None, "lesion_synth": {"contrast": (0, 0)},
}
# Clearly visible strengths for the "does something" checks.
STRONG = {
    "affine": {"rotate_deg": 20}, "elastic": {"magnitude": 3}, "gamma": {"gamma": (0.5, 0.6)},
    "rician_noise": {"sigma": (0.05, 0.1)}, "ct_lowdose_noise": {"dose": (0.1, 0.2), "base_sigma": 0.05},
    "affine2d": {"rotate": (10, 20)}, "gauss_noise": {"std_range": (0.1, 0.2)},
    "coarse_dropout": {"num_holes_range": (2, 3)}, "coarse_dropout3d": {"num_holes_range": (2, 3)},
    "lesion_synth": {"contrast": (0.5, 0.8)},
}
CASES = [(name, nd) for name, cls in sorted(REGISTRY.items()) for nd in cls.dims]


def cube_sample(nd: int, channels: int = 2):
    """Noisy image with a bright cube (label 1) and a slab (label 2); (C, *S) float32, (*S) uint8."""
    shape = (32, 28, 24)[:nd] if nd == 3 else (48, 40)
    rng = np.random.default_rng(0)
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(s // 3, 2 * s // 3) for s in shape)] = 1
    label[tuple([slice(2 * shape[0] // 3, 2 * shape[0] // 3 + 3)] + [slice(s // 3, 2 * s // 3) for s in shape[1:]])] = 2
    image = rng.normal(0, 0.1, (channels, *shape)).astype(np.float32)
    image[:, label == 1] += 3.0
    image[:, label == 2] += 1.5
    return image, label


def test_zero_table_covers_every_transform():
    assert set(ZERO) == set(REGISTRY)


@pytest.mark.parametrize("name,nd", CASES)
def test_shapes_dtypes_labels_and_seeding(name, nd):
    image, label = cube_sample(nd)
    chain = Chain([build_transform({"name": name, "p": 1.0, **STRONG.get(name, {})}, nd)])
    out, lab, applied = chain(image, label, seed=11)
    assert out.shape == image.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert lab.shape == label.shape and lab.dtype == label.dtype
    assert [a[0] for a in applied] == [name]
    if REGISTRY[name].kind == "intensity":
        np.testing.assert_array_equal(lab, label)  # the label is never touched
    else:
        assert set(np.unique(lab)) <= {0, 1, 2}
    again, lab2, _ = chain(image, label, seed=11)
    np.testing.assert_array_equal(again, out)
    np.testing.assert_array_equal(lab2, lab)
    if name not in ("hflip", "vflip"):  # a flip at p=1 has nothing left to draw
        others = [chain(image, label, seed=s)[0] for s in range(12, 20)]
        assert any(not np.array_equal(o, out) for o in others)  # the seed matters


@pytest.mark.parametrize("name,nd", CASES)
def test_identity_at_zero_strength(name, nd):
    image, label = cube_sample(nd)
    zero = ZERO[name]
    spec = {"name": name, "p": 1.0, **zero} if zero is not None else {"name": name, "p": 0.0}
    out, lab, _ = Chain([build_transform(spec, nd)])(image, label, seed=3)
    np.testing.assert_allclose(out, image, atol=1e-5)
    np.testing.assert_array_equal(lab, label)


@pytest.mark.parametrize("name,nd", [(n, d) for n, d in CASES if REGISTRY[n].kind == "spatial"])
def test_label_cube_stays_under_the_bright_cube(name, nd):
    image, label = cube_sample(nd, channels=1)
    chain = Chain([build_transform({"name": name, "p": 1.0, **STRONG.get(name, {})}, nd)])
    for seed in range(5):
        out, lab, _ = chain(image, label, seed)
        inside = out[0][lab == 1]
        assert inside.size > 0.5 * (label == 1).sum()
        # labelled voxels still sit on bright image (above half the cube's height, 1.5)
        assert np.mean(inside > 1.5) > 0.9
        assert np.mean(out[0][lab == 0] > 1.5) < 0.05


def test_chain_streams_are_independent():
    image, label = cube_sample(3)
    g = {"name": "gamma", "p": 1.0}
    alone = Chain([build_transform(g, 3)])(image, label, 5)[2]
    longer = Chain([build_transform(g, 3), build_transform({"name": "rician_noise"}, 3)])(image, label, 5)[2]
    assert longer[0] == alone[0]  # appending a transform does not change earlier draws


@pytest.mark.parametrize("spec,nd,message", [
    ({"name": "twirl"}, 2, "unknown transform 'twirl'"),
    ({"name": "affine", "rotate_deg": -5}, 3, "affine: rotate_deg: Input should be greater than or equal to 0"),
    ({"name": "gamma", "gamma": (2.0, 1.0)}, 2, "range needs lo <= hi"),
    ({"name": "elastic", "wobble": 1}, 2, "elastic: wobble: unknown parameter"),
    ({"name": "elastic2d"}, 3, "works on 2D samples, not 3D"),
    ({"name": "affine2d", "rotate": "lots"}, 2, "affine2d: rotate: Input should be a valid"),
    ({"name": "flip", "p": 1.5}, 2, "probability must be in [0, 1]"),
    ({"name": "lesion_synth", "classes": {"b": (0.5, 0.2)}}, 3, "lesion_synth: classes.b: range needs lo <= hi"),
    ({"name": "lesion_synth", "semi_axes": (0, 2)}, 3, "semi_axes: voxels > 0"),
])
def test_bad_specs(spec, nd, message):
    with pytest.raises(ValueError) as info:
        build_transform(spec, nd)
    assert message in str(info.value)


@pytest.mark.parametrize("name,nd", CASES)
def test_same_seed_same_output_inside_tf_data(name, nd):
    """big_vision's warning: eager and tf.data can differ. Here they must not."""
    import tensorflow as tf

    image, label = cube_sample(nd, channels=1)
    chain = Chain([build_transform({"name": name, "p": 1.0, **STRONG.get(name, {})}, nd)])

    def aug(seed):
        out, lab, _ = chain(image, label, int(seed))
        return out, lab

    seeds = np.array([7, 8, 7], dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda s: tf.numpy_function(aug, [s], (tf.float32, tf.uint8)), num_parallel_calls=2, deterministic=True)
    got = [(x.numpy(), y.numpy()) for x, y in ds]
    for (x, y), seed in zip(got, seeds):
        want_x, want_y = aug(seed)
        np.testing.assert_array_equal(x, want_x)
        np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(got[0][0], got[2][0])
