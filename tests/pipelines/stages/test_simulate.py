"""The simulate stage: a keyed, resumable cache of (sinogram, FBP, truth) triples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medflow.core.engine import StageFailed
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.data.ct.ellipses import load_split
from medflow.data.ct.physics import fbp_geometry

PIPELINE = """
name: sim
stages: [simulate]
simulate: {size: 16, angles: 6, train: 6, validation: 2, test: 2, chunk: 4}
workers: 1
"""


def _run(tmp_path, monkeypatch, text=PIPELINE, overrides=()):
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "ws"))
    (tmp_path / "p.yaml").write_text(text)
    results, _ = run_pipeline(load_config(tmp_path / "p.yaml", list(overrides)))
    return results[0]


def test_triples_are_consistent_and_the_rerun_is_skipped(tmp_path, monkeypatch):
    first = _run(tmp_path, monkeypatch)
    folder = Path(first.path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 6, "validation": 2, "test": 2}
    geometry = manifest["geometry"]
    assert geometry["image_size"] == 16 and len(geometry["angles_deg"]) == 6
    test = load_split(folder / "data", "test")
    assert test["sinogram"].shape == (2, geometry["detectors"], 6) and test["gt"].shape == (2, 16, 16)
    # the stored FBP input is the geometry's FBP of the stored (noisy) sinogram
    np.testing.assert_allclose(test["fbp"][0], fbp_geometry(test["sinogram"][0], geometry, geometry["fbp_filter"],
                                                            geometry.get("frequency_scaling", 1.0)), atol=1e-4)
    again = _run(tmp_path, monkeypatch)
    assert again.state == "skipped" and again.path == first.path
    other = _run(tmp_path, monkeypatch, overrides=["simulate.seed=1"])
    assert other.path != first.path


def test_ct_volumes_need_a_folder(tmp_path, monkeypatch):
    text = PIPELINE.replace("{size: 16,", f"{{source: ct_volumes, root: {tmp_path / 'none'}, size: 16,")
    with pytest.raises(StageFailed, match="simulate.root is not a folder"):
        _run(tmp_path, monkeypatch, text)
