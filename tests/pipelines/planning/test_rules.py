"""The planner's rules on fingerprints of very different datasets: each plan is sane and fits memory."""

from __future__ import annotations

import math

import pytest

from medflow.planning.rules import (
    BYTES_PER_VOXEL_FILTER,
    MEMORY_SHARE,
    MIN_SAMPLES,
    Machine,
    plan_images,
    plan_volumes,
    unet_flops,
)

SLOW = Machine(cores=2, memory_gib=24.0, gflops_2d=20.0, gflops_3d=12.0)
FAST = Machine(cores=2, memory_gib=24.0, gflops_2d=80.0, gflops_3d=50.0)


def fingerprint(spacing, extent, n=20):
    return {"n_cases": n, "spacing_ras": {"median": list(spacing)}, "extent_mm": {"median": list(extent)}}


def choices(plan) -> dict:
    return {c.key: c.value for c in plan["choices"]}


def fits_memory(c: dict, machine: Machine) -> bool:
    need = math.prod(c["loader.patch_size"]) * c["model.params.filters"] * BYTES_PER_VOXEL_FILTER
    return c["loader.batch_size"] * need <= MEMORY_SHARE * machine.memory_gib * 2**30


def divisible(c: dict) -> bool:
    return all(s % 2 ** c["model.params.depth"] == 0 for s in c["loader.patch_size"])


def test_unet_flops_grow_with_width_and_size():
    base = unet_flops((64, 64), 3, 16)
    assert unet_flops((64, 64), 3, 32) == pytest.approx(4 * base, rel=0.05)  # quadratic in width
    assert unet_flops((128, 128), 3, 16) == pytest.approx(4 * base)  # linear in pixels


def test_brain_mr_at_1mm_trains_2d_axial_slices_covering_the_head():
    c = choices(plan := plan_volumes(fingerprint([1, 1, 1], [139, 176, 151]), FAST, 1800, whole_volume=False))
    assert c["loader.mode"] == "2d" and c["loader.slice_axis"] == 2
    assert c["preprocess.spacing"] == [1, 1, 1]  # 30 minutes afford full resolution
    assert c["loader.patch_size"][0] >= 139 and c["loader.patch_size"][1] >= 176
    assert c["model.params.filters"] >= 16 and divisible(c) and fits_memory(c, FAST)
    assert plan["samples"] >= MIN_SAMPLES["2d"]


def test_a_short_budget_on_a_slow_machine_coarsens_the_spacing_first():
    c = choices(plan_volumes(fingerprint([1, 1, 1], [139, 176, 151]), SLOW, 120, whole_volume=False))
    assert c["preprocess.spacing"][0] > 1.0 and c["loader.patch_size"][0] < 160
    assert divisible(c) and fits_memory(c, SLOW)


def test_anisotropic_mr_slices_across_the_thick_axis_and_keeps_it():
    c = choices(plan_volumes(fingerprint([0.7, 5.0, 0.7], [180, 200, 180]), SLOW, 1800, whole_volume=False))
    assert c["loader.mode"] == "2d" and c["loader.slice_axis"] == 1
    assert c["preprocess.spacing"][1] == 5.0  # the thick axis is never resampled
    assert len(c["loader.patch_size"]) == 2 and divisible(c) and fits_memory(c, SLOW)


def test_thin_2d_like_volumes_slice_across_their_few_slices():
    c = choices(plan_volumes(fingerprint([0.5, 0.5, 4.0], [120, 120, 12]), SLOW, 600, whole_volume=False))
    assert c["loader.mode"] == "2d" and c["loader.slice_axis"] == 2 and divisible(c)


def test_tiny_isotropic_ct_trains_3d_on_the_whole_volume():
    c = choices(plan_volumes(fingerprint([1.5, 1.5, 1.5], [60, 60, 45]), SLOW, 600, whole_volume=False))
    assert c["loader.mode"] == "3d" and len(c["loader.patch_size"]) == 3
    assert all(p >= e / 1.5 for p, e in zip(c["loader.patch_size"], [60, 60, 45]))
    assert c["loader.batch_size"] <= 2 and c["model.params.depth"] >= 2 and divisible(c) and fits_memory(c, SLOW)


def test_classification_whole_heads_at_most_64_voxels_an_axis():
    c = choices(plan_volumes(fingerprint([2, 2, 2], [150, 180, 160], n=150), SLOW, 1800, whole_volume=True))
    assert c["loader.mode"] == "3d" and max(c["loader.patch_size"]) <= 64
    assert c["preprocess.spacing"][0] >= 180 / 64 and divisible(c) and fits_memory(c, SLOW)


def test_ellipse_images_plan_depth_width_and_batch():
    c = choices(plan_images(128, 3200, FAST, 3600))
    assert c["model.params.depth"] == 4 and c["model.params.filters"] in (16, 32) and c["loader.batch_size"] == 16
    small = choices(plan_images(64, 640, SLOW, 90))
    assert small["model.params.depth"] == 4 and small["loader.batch_size"] <= 8


def test_every_choice_carries_a_reason():
    for plan in (plan_volumes(fingerprint([1, 1, 3.5], [200, 200, 150]), SLOW, 300, whole_volume=False),
                 plan_images(256, 100, SLOW, 60)):
        assert all(c.reason and "\n" not in c.reason for c in plan["choices"])


@pytest.mark.parametrize("machine", [SLOW, FAST])
@pytest.mark.parametrize("budget", [60, 600, 7200])
def test_patches_are_multiples_of_the_poolings_for_any_geometry(machine, budget):
    # Extents whose rounded size gains a power of two (117 px -> 128 px) once caught the depth out.
    for spacing in ([1, 1, 1], [1.2, 1.2, 1.2], [0.7, 0.7, 3.0], [0.8, 5.0, 0.8], [2, 2, 2]):
        for extent in ([144, 179, 152], [140, 175, 117], [60, 60, 45], [300, 300, 300], [100, 100, 20]):
            for whole in (False, True):
                c = choices(plan_volumes(fingerprint(spacing, extent), machine, budget, whole_volume=whole))
                assert divisible(c) and fits_memory(c, machine), (spacing, extent, whole, c)
