"""The planner's rules: from what the data look like, the machine and a time budget to a plan.

In the spirit of nnU-Net's experiment planner, with the time budget as a first-class input:

* target spacing: the dataset's median spacing (nnU-Net), coarsened in steps of 1.25x (at most 2x)
  when the budget cannot show the network enough samples at full resolution;
* 2D or 3D: 2D slices across the thickest axis when the spacing is anisotropic (max/min > 3) or the
  resampled volume is too large for 3D on this machine; whole-volume 3D when it is small;
* patch: the whole resampled slice or volume, rounded up to a multiple of 2**depth, capped;
* depth: as many poolings as keep the bottleneck at least 4 voxels wide (nnU-Net), at most 5;
* width: 16 base filters (2 cores train a 32-filter U-Net at a quarter of the rate), 8 when 16
  cannot see enough samples in the budget, 32 when the budget affords four times that;
* batch: the largest power of two up to the task's cap whose activations fit a quarter of memory;
* steps: what the measured rate affords in the budget (the trainer re-times on the real data).

Each rule returns :class:`Choice` rows: the ``--set`` key, its value and a one-line reason.
Every function here is pure: the data description, the machine and the budget come in as arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ANISOTROPY_2D = 3.0  # nnU-Net's threshold for treating the thick axis differently
BOTTLENECK = 4  # voxels across the deepest feature map, at least (nnU-Net's minimum edge)
MAX_DEPTH = 5
MAX_SLICE = 256  # px: larger slices are cut into patches and stitched by the sliding window
MAX_WHOLE_3D = 96**3  # voxels at full resolution: above this, segmentation trains 2D slices
# Training samples the budget must show the network. 2D: on the demo brains' validation fold, 2100 slices
# (a 2-minute budget) reached val Dice 0.56 at 1.25 mm and 0.63-0.67 at 1.5 mm; finer slices need more.
MIN_SAMPLES = {"2d": 4000, "3d": 400}
BYTES_PER_VOXEL_FILTER = 64  # activations kept for the backward pass: ~8 float32 tensors a level, pyramid summed
MEMORY_SHARE = 0.25
TRAIN_FLOPS = 3.0  # a training step costs about three forward passes


@dataclass(frozen=True)
class Machine:
    """What the plan is made for: cores, memory, and measured training rates (GFLOP/s) of 2D and 3D U-Nets."""

    cores: int
    memory_gib: float
    gflops_2d: float
    gflops_3d: float

    def line(self) -> str:
        return (f"{self.cores} cores, {self.memory_gib:.0f} GiB, U-Net training at {self.gflops_2d:.1f} GFLOP/s "
                f"(2D) and {self.gflops_3d:.1f} GFLOP/s (3D), measured")


@dataclass(frozen=True)
class Choice:
    key: str
    value: object
    reason: str


def unet_flops(shape: tuple[int, ...], depth: int, filters: int, in_channels: int = 1, max_filters: int = 320) -> float:
    """Forward multiply-add FLOPs (x2) of one sample through a U-Net (two 3^n convs a level, both paths)."""
    nd, k = len(shape), 3 ** len(shape)
    voxels, total, prev = math.prod(shape), 0.0, in_channels
    for level in range(depth + 1):
        f = min(filters * 2**level, max_filters)
        v = voxels / (2**nd) ** level
        total += 2.0 * v * k * (prev * f + f * f)  # encoder (the bottleneck is level == depth)
        if level < depth:
            total += 2.0 * v * k * (2 * f * f + f * f)  # decoder: concat(skip, up) -> f, then f -> f
        prev = f
    return total


def depth_for(shape: tuple[int, ...]) -> int:
    """Poolings that keep the smallest axis at least BOTTLENECK voxels (1 to MAX_DEPTH)."""
    return max(1, min(MAX_DEPTH, int(math.floor(math.log2(max(min(shape), 1) / BOTTLENECK)))))


def round_up(shape, multiple: int, cap: int | None = None) -> tuple[int, ...]:
    """Each axis rounded up to a multiple of ``multiple`` (and at most ``cap``, itself rounded down)."""
    out = [int(math.ceil(s / multiple) * multiple) for s in shape]
    if cap is not None:
        out = [min(s, cap // multiple * multiple) for s in out]
    return tuple(max(s, multiple) for s in out)


def batch_for(voxels: int, filters: int, memory_gib: float, cap: int) -> int:
    """Largest power of two <= cap whose activations fit MEMORY_SHARE of the memory (at least 1)."""
    per_sample = voxels * filters * BYTES_PER_VOXEL_FILTER
    fit = MEMORY_SHARE * memory_gib * 2**30 / per_sample
    return max(1, min(cap, 2 ** int(math.floor(math.log2(max(fit, 1))))))


def _affordable(shape, depth, filters, rate_gflops, budget_s) -> float:
    """Training samples a budget affords at a measured rate (90 % of it: validation, checkpoints)."""
    return 0.9 * budget_s * rate_gflops * 1e9 / (TRAIN_FLOPS * unet_flops(shape, depth, filters))


def _width(shape, depth, rate, budget_s, need) -> tuple[int, float, str]:
    for filters in (32, 16):
        n = _affordable(shape, depth, filters, rate, budget_s)
        if filters == 32 and n >= 4 * need or filters == 16 and n >= need:
            why = "the budget affords 4x the samples it needs" if filters == 32 else "the base width on a CPU"
            return filters, n, why
    return 8, _affordable(shape, depth, 8, rate, budget_s), f"16 filters would see under {need} samples"


def plan_volumes(fp: dict, machine: Machine, budget_s: float, *, whole_volume: bool) -> dict:
    """Spacing, 2D/3D, patch, depth, width, batch and expected samples for a volume dataset.

    Args:
        fp: the dataset fingerprint (``spacing_ras`` and ``extent_mm`` medians, ``n_cases``).
        whole_volume: classification: always 3D on the whole (centred) volume.

    Returns:
        ``{"choices": [Choice, ...], "samples": expected training samples, "mode": "2d" | "3d"}``.
    """
    spacing = [float(s) for s in fp["spacing_ras"]["median"]]
    extent = [float(e) for e in fp["extent_mm"]["median"]]
    aniso = max(spacing) / min(spacing)
    thick = int(max(range(3), key=lambda a: spacing[a]))
    choices = []
    axis = 2 if aniso <= ANISOTROPY_2D else thick
    full = [max(1, int(round(e / s))) for e, s in zip(extent, spacing)]
    # 2D or 3D is decided at full resolution: coarsening for the budget must not turn a 2D dataset 3D.
    three_d = whole_volume or (aniso <= ANISOTROPY_2D and math.prod(full) <= MAX_WHOLE_3D)
    mode = "3d" if three_d else "2d"
    rate = machine.gflops_3d if three_d else machine.gflops_2d
    # Whole volumes are already as coarse as 64 voxels an axis allows (lesions are 8-20 mm): the width gives.
    for factor in (1.0,) if whole_volume else (1.0, 1.25, 1.5, 2.0):
        target = [round(s * factor, 3) if aniso <= ANISOTROPY_2D or a != thick else s
                  for a, s in enumerate(spacing)]
        if whole_volume:  # whole 3D heads on 2 cores: isotropic, at most 64 voxels an axis
            target = [max(max(target), math.ceil(max(extent) / 64 * 1000) / 1000)] * 3
        size = [max(1, int(round(e / t))) for e, t in zip(extent, target)]
        raw = tuple(size) if three_d else tuple(s for a, s in enumerate(size) if a != axis)
        depth = depth_for(raw)  # from the unrounded size: rounding up must not add a pooling it is not a multiple for
        shape = round_up(raw, 2**depth, None if three_d else MAX_SLICE)
        filters, samples, width_why = _width(shape, depth, rate, budget_s, MIN_SAMPLES[mode])
        if filters >= 16:
            break
    if factor == 1.0 and target == spacing:
        choices.append(Choice("preprocess.spacing", target, f"the median spacing of {fp['n_cases']} cases"))
    elif factor == 1.0:
        choices.append(Choice("preprocess.spacing", target, f"median {spacing} coarsened so the whole volume "
                                                            f"is at most 64 voxels an axis"))
    else:
        choices.append(Choice("preprocess.spacing", target, f"median {spacing} x{factor}: at full resolution "
                                                            f"the budget shows under {MIN_SAMPLES[mode]} samples"))
    if three_d:
        why = ("the whole volume" if whole_volume
               else f"isotropic (max/min spacing {aniso:.2f}) and {math.prod(full)} voxels fit 3D")
        choices.append(Choice("loader.mode", "3d", why))
    else:
        why = (f"anisotropic spacing (max/min {aniso:.1f} > {ANISOTROPY_2D:g}): slices across the thick axis"
               if aniso > ANISOTROPY_2D else f"{math.prod(full)} voxels a volume are too many for 3D on 2 cores")
        choices += [Choice("loader.mode", "2d", why),
                    Choice("loader.slice_axis", axis, "the thickest axis" if aniso > ANISOTROPY_2D
                           else "axial slices of near-isotropic volumes")]
    cover = "the whole volume" if three_d else ("the whole slice" if max(raw) <= MAX_SLICE
                                               else f"slices over {MAX_SLICE} px are cut into patches")
    choices.append(Choice("loader.patch_size", list(shape), f"{cover}, a multiple of 2^{depth}"))
    cap = 2 if three_d else 16
    batch = batch_for(math.prod(shape), filters, machine.memory_gib, cap)
    choices.append(Choice("loader.batch_size", batch, f"activations of {batch} samples within "
                                                      f"{MEMORY_SHARE:.0%} of {machine.memory_gib:.0f} GiB"
                                                      + (f" (cap {cap})" if batch == cap else "")))
    choices.append(Choice("model.params.depth", depth, f"a bottleneck of at least {BOTTLENECK} voxels"))
    choices.append(Choice("model.params.filters", filters, width_why))
    return {"choices": choices, "samples": samples, "mode": mode}


def plan_images(size: int, n_train: int, machine: Machine, budget_s: float) -> dict:
    """Depth, width and batch for a 2D image-to-image network on ``size`` x ``size`` images."""
    shape = (size, size)
    depth = min(4, depth_for(shape))
    filters, samples, width_why = _width(shape, depth, machine.gflops_2d, budget_s, MIN_SAMPLES["2d"])
    batch = batch_for(size * size, filters, machine.memory_gib, 16)
    # Small training sets want more updates per pass; 8 ended level with 16 on validation (demo, 640 images).
    if n_train < 2000:
        batch = min(batch, 8)
    choices = [
        Choice("model.params.depth", depth, f"a bottleneck of at least {BOTTLENECK} px (at most 4)"),
        Choice("model.params.filters", filters, width_why),
        Choice("loader.batch_size", batch, f"{n_train} training images: more updates per pass"
                                           if n_train < 2000 else "activations within memory"),
    ]
    return {"choices": choices, "samples": samples, "mode": "2d"}


def budget_choices(budget: str, samples: float, batch: int) -> list[Choice]:
    """``train.epochs: null`` and ``train.budget``, with the steps the measured rate affords."""
    return [Choice("train.epochs", None, "the budget decides the epochs"),
            Choice("train.budget", budget, f"about {int(samples / max(batch, 1))} steps of {batch} at the "
                                           f"measured rate (the trainer re-times on the real data)")]
