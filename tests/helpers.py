"""Test helpers: tiny synthetic NIfTI volumes with non-identity affines."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def make_affine(spacing=(1.5, 0.8, 2.5), codes="LPS", origin=(30.0, -12.0, 7.5), perm=(0, 1, 2)):
    """Affine with the given voxel size, axis directions and axis order (voxel axis i -> world axis perm[i])."""
    aff = np.zeros((4, 4))
    for i, (s, c) in enumerate(zip(spacing, codes)):
        aff[perm[i], i] = s * (1.0 if c in "RAS" else -1.0)
    aff[:3, 3] = origin
    aff[3, 3] = 1.0
    return aff


def save(path, data, affine, dtype=None):
    """Write a NIfTI with plain nibabel (independent of medflow's own writer)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data if dtype is None else data.astype(dtype)), affine)
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    nib.save(img, str(path))
    return path


def cube_case(shape=(16, 14, 12), lo=(4, 3, 3), hi=(10, 9, 8), seed=0):
    """Image with a bright cube (class 1) and a dimmer slab (class 2); returns (image, label)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 5, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
    label[hi[0]:hi[0] + 2, lo[1]:hi[1], lo[2]:hi[2]] = 2
    image[label == 1] += 400
    image[label == 2] += 200
    return image, label


def make_msd(root, n=4, affine=None, shape=(16, 14, 12), labels=None):
    """A tiny MSD dataset with ``n`` cube cases; returns the root."""
    root = Path(root)
    affine = make_affine() if affine is None else affine
    training = []
    for i in range(n):
        image, label = cube_case(shape, seed=i)
        save(root / "imagesTr" / f"case_{i:02d}.nii.gz", image, affine, np.int16)
        save(root / "labelsTr" / f"case_{i:02d}.nii.gz", label, affine, np.uint8)
        training.append({"image": f"./imagesTr/case_{i:02d}.nii.gz", "label": f"./labelsTr/case_{i:02d}.nii.gz"})
    meta = {"name": "Cubes", "modality": {"0": "MRI"},
            "labels": labels or {"0": "background", "1": "cube", "2": "slab"},
            "numTraining": n, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def add_msd_case(root, name, image_path=None, label_path=None):
    """Append a training entry to dataset.json (files written by the caller)."""
    meta = json.loads((Path(root) / "dataset.json").read_text())
    meta["training"].append({"image": image_path or f"./imagesTr/{name}.nii.gz",
                             "label": label_path or f"./labelsTr/{name}.nii.gz"})
    (Path(root) / "dataset.json").write_text(json.dumps(meta))


def write_pipeline(path, root, layout="msd", extra="", stages="[ingest, preprocess, split]"):
    path = Path(path)
    path.write_text(f"""
name: test
stages: {stages}
dataset:
  root: {root}
  layout: {layout}
preprocess:
  spacing: [1.0, 1.0, 1.0]
split:
  test_fraction: 0.25
  folds: 2
workers: 1
{extra}
""")
    return path


def make_cls_dataset(root, n=16, shape=(12, 10, 8), masks=False, weak=()):
    """A CSV classification dataset: class 'lesion' has a bright cube, 'normal' has none; 2 cases per patient.

    ``masks``: lesion cases get their cube's mask (a ``mask`` column), except those numbered in ``weak``.
    """
    root = Path(root)
    rows = ["path,label,patient_id" + (",mask" if masks else "")]
    for i in range(n):
        img, cube = cube_case(shape, lo=(3, 3, 2), hi=(7, 7, 5), seed=i)
        label = "lesion" if i % 2 else "normal"
        if label == "normal":
            img = np.random.default_rng(100 + i).normal(100, 5, shape).astype(np.float32)
            img[1:-1, 1:-1, 1:-1] += 50  # same head, no lesion
        else:
            img[1:-1, 1:-1, 1:-1] += 50
        save(root / "images" / f"s{i:02d}.nii.gz", img, make_affine((2.0, 2.0, 3.0), "LAS"), np.int16)
        mask = ""
        if masks and label == "lesion" and i not in weak:
            mask = f"masks/s{i:02d}.nii.gz"
            save(root / mask, (cube > 0).astype(np.uint8), make_affine((2.0, 2.0, 3.0), "LAS"), np.uint8)
        rows.append(f"images/s{i:02d}.nii.gz,{label},pat{i // 2}" + (f",{mask}" if masks else ""))
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


EVAL_STAGES = "[ingest, preprocess, split, train, evaluate]"


def read_splits(tmp_path):
    """The splits.json of the (single) split stage under ``tmp_path``'s workspace."""
    return json.loads(next((Path(tmp_path) / "workspace/stages/split").glob("*/splits.json")).read_text())


def run_evaluation(tmp_path, root, extra, overrides=(), layout="msd"):
    """Run ingest through evaluate on ``root`` into a SQLite store under ``tmp_path``.

    Returns:
        (store URI, resolved config, the evaluate stage's result).
    """
    from medflow.core.loading import load_config
    from medflow.core.runner import run_pipeline
    from medflow.tracking.runs import MlflowTracker

    store = f"sqlite:///{Path(tmp_path) / 's.db'}"
    path = write_pipeline(Path(tmp_path) / "p.yaml", root, layout=layout, stages=EVAL_STAGES, extra=extra)
    cfg = load_config(path, list(overrides))
    results, _ = run_pipeline(cfg, tracker=MlflowTracker(store))
    ev = results[-1]
    assert ev.name == "evaluate" and ev.state == "ran", ev
    return store, cfg, ev


def preprocess_plan(spacing=(1.0, 1.0, 1.0), normalization=("mr",), **changes):
    """A PreprocessPlan with the config schema's defaults (medflow.core.config) and ``changes``."""
    from medflow.core.config import PreprocessConfig
    from medflow.stages.preprocess import plan_from_config

    pre = PreprocessConfig(**changes)
    return plan_from_config(pre, spacing, normalization)


def sampler(mode, patch_size, **changes):
    """A SamplerConfig with the loader section's defaults (medflow.core.config) and ``changes``."""
    from medflow.core.config import LoaderConfig
    from medflow.data.sampling import SamplerConfig

    ld = LoaderConfig()
    kw = {"slice_axis": ld.slice_axis, "foreground_ratio": ld.foreground_ratio, "crop": ld.crop, **changes}
    return SamplerConfig(mode, tuple(patch_size), **kw)


def run_medflow(*args, env):
    """``python -m medflow.cli.main ARGS`` from the repository root, failing on a non-zero exit; the result."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "medflow.cli.main", *args], env=env, cwd=root, check=True,
                          capture_output=True, text=True)


def tracked_pipeline_run(tmp, pipeline_yaml: str):
    """Run a pipeline YAML text once into ``tmp`` (workspace and a SQLite store there), for a module fixture.

    Yields {tmp, cfg, results (stage name -> result), parent (run id), store}; the workspace variable is
    set while the fixture lives.
    """
    import pytest

    from medflow.core.loading import load_config
    from medflow.core.runner import run_pipeline
    from medflow.tracking.runs import MlflowTracker

    mp = pytest.MonkeyPatch()
    mp.setenv("MEDFLOW_WORKSPACE", str(tmp / "workspace"))
    store = f"sqlite:///{tmp / 'store.db'}"
    (tmp / "p.yaml").write_text(pipeline_yaml)
    cfg = load_config(tmp / "p.yaml")
    results, parent = run_pipeline(cfg, tracker=MlflowTracker(store))
    yield {"tmp": tmp, "cfg": cfg, "results": {r.name: r for r in results}, "parent": parent, "store": store}
    mp.undo()
