"""Lesion masks of a classification dataset: validated at ingest like a label map, resampled with
nearest neighbour at preprocess, moved with the image by augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.data.casefile import read_case
from medflow.training.inputs import build_source
from tests.helpers import make_affine, save, write_pipeline

SHAPE = (12, 10, 8)
AFFINE = make_affine((2.0, 2.0, 3.0), "LAS")


def _dataset(root: Path) -> Path:
    """Six lesion cases (bright cube, its mask) and six normal ones, plus four with broken masks."""
    rows = ["path,label,patient_id,mask"]
    rng = np.random.default_rng(0)
    for i in range(16):
        image = rng.normal(100, 5, SHAPE).astype(np.float32)
        image[1:-1, 1:-1, 1:-1] += 50
        mask = np.zeros(SHAPE, np.uint8)
        lesion = i % 2 == 1
        if lesion:
            mask[3:7, 3:6, 2:5] = 1
            image[mask == 1] += 300
        save(root / "images" / f"s{i:02d}.nii.gz", image, AFFINE, np.int16)
        mask_rel = f"masks/s{i:02d}.nii.gz" if lesion else ""
        if i == 13:
            save(root / mask_rel, mask[:, :, :-1], AFFINE, np.uint8)  # another grid
        elif i == 15:
            save(root / mask_rel, mask * 2, AFFINE, np.uint8)  # not a 0/1 mask
        elif i == 11:
            mask_rel = "../outside.nii.gz"
        elif i == 9:
            mask_rel = ""  # a lesion case without a mask: weakly labelled, valid
        elif lesion:
            save(root / mask_rel, mask, AFFINE, np.uint8)
        rows.append(f"images/s{i:02d}.nii.gz,{'lesion' if lesion else 'normal'},pat{i},{mask_rel}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("masks")
    root = _dataset(tmp / "ds")
    extra = """
preprocess: {spacing: [1.0, 1.0, 1.5], crop_to_foreground: false}
loader: {mode: 3d, patch_size: [12, 10, 8], crop: center}
augment: {seed: 4, transforms: [{name: flip, p: 1.0, axes: [0, 1, 2]}]}
"""
    cfg = load_config(write_pipeline(tmp / "p.yaml", root, layout="csv", extra=extra))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDFLOW_WORKSPACE", str(tmp / "ws"))
        results, _ = run_pipeline(cfg)
        outputs = {r.name: Path(r.path) for r in results}
    return {"cfg": cfg, "outputs": outputs, "tmp": tmp}


def test_bad_masks_are_quarantined_in_one_line_each(ran):
    quarantine = {q["case_id"]: q for q in json.loads((ran["outputs"]["ingest"] / "quarantine.json").read_text())}
    assert set(quarantine) == {"s11", "s13", "s15"}
    assert "mask" in quarantine["s11"]["error"] and "outside" in quarantine["s11"]["error"]
    assert "mask shape (12, 10, 7) does not match image shape (12, 10, 8)" in quarantine["s13"]["problem"]
    assert quarantine["s15"]["problem"] == "mask values [2] outside the mask values 0 and 1"
    assert quarantine["s13"]["path"].endswith("masks/s13.nii.gz")
    manifest = json.loads((ran["outputs"]["ingest"] / "manifest.json").read_text())
    assert "s09" in manifest["cases"]  # no mask: kept, weakly labelled


def test_preprocess_resamples_the_mask_with_nearest_neighbour(ran):
    pre = ran["outputs"]["preprocess"]
    arrays, meta = read_case(pre / "cases" / "s01.npz")
    mask, image = arrays["label"], arrays["image"][0]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert image.shape == mask.shape == (24, 20, 16)  # 2 x 2 x 3 mm -> 1 x 1 x 1.5 mm
    assert image[mask == 1].mean() > image[mask == 0].mean() + 2  # the mask still marks the bright lesion
    assert 0.8 < mask.sum() / (36 * 8) < 1.25  # 4 x 3 x 3 voxels of 12 mm^3, now of 1.5 mm^3
    assert "label" not in read_case(pre / "cases" / "s02.npz")[0] and "label" not in read_case(pre / "cases" / "s09.npz")[0]


def test_augmentation_moves_the_mask_with_the_image(ran):
    pre = json.loads((ran["outputs"]["preprocess"] / "manifest.json").read_text())
    from medflow.core.engine import StageOutput

    source = build_source(ran["cfg"], StageOutput("preprocess", ran["outputs"]["preprocess"], pre), ["s01", "s03"],
                          cache="none")
    # the first draw that flips at least one axis (each axis flips with probability 0.5)
    index = next(k for k in range(20) if source.sample("s01", 0, k).applied[0][1]["axes"])
    plain, moved = source.sample("s01", 0, index, augment=False), source.sample("s01", 0, index)
    assert plain.label.sum() == moved.label.sum() > 0
    assert not np.array_equal(plain.label, moved.label)  # flipped...
    bright = moved.image[..., 0] > np.percentile(moved.image[..., 0], 95)
    assert (bright & (moved.label == 1)).sum() > 0.8 * bright.sum()  # ...together with the lesion
