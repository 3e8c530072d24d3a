"""The typed inference plan: JSON round trip, the bundle format of earlier releases, one-line errors."""

from __future__ import annotations

import json

import pytest

from medflow.inference.plan import InferencePlan, InferenceSettings, PlanError, Window, load_plan
from tests.helpers import preprocess_plan

# A bundle plan.json as the export stage of the previous release wrote it (keys unchanged since).
LEGACY = {
    "family": "segmentation", "classes": ["background", "gm"], "channels": ["MR"], "input_shape": [16, 16, 1],
    "preprocess": {"spacing": [1.0, 1.0, 1.0], "normalization": ["mr"], "ct_window": [-1000.0, 1000.0],
                   "mr_percentiles": [0.5, 99.5], "crop_to_foreground": True, "crop_margin": 2, "image_order": 1,
                   "orientation": "RAS"},
    "window": {"mode": "2d", "patch_size": [16, 16], "slice_axis": 2, "crop": "random"},
    "inference": {"overlap": 0.5, "batch_size": 8, "mirror_axes": [], "samples": 2, "seed": 0},
    "selection": {"metric": "best_val_dice", "stage": "train", "greater_is_better": True},
    "pipeline": "segmentation", "version": "abc", "metrics": {"best_val_dice": {"split": "val", "value": 0.5}},
}


def test_legacy_bundle_plan_parses_and_writes_back_key_for_key():
    plan = InferencePlan.from_json(LEGACY)
    assert plan.window == Window("2d", (16, 16), 2, "random")
    assert plan.inference == InferenceSettings(0.5, 8, (), 2, 0)
    assert plan.preprocess.spacing == (1.0, 1.0, 1.0) and plan.info["version"] == "abc"
    assert plan.to_json() == LEGACY


def test_round_trip_through_a_folder(tmp_path):
    plan = InferencePlan("classification", (8, 8, 8, 1), classes=("a", "b"), channels=("MR",),
                         preprocess=preprocess_plan(), window=Window("3d", (8, 8, 8), 2, "center"),
                         inference=InferenceSettings(0.5, 4, (), 1, 3), selection={"metric": "m"})
    plan.save(tmp_path)
    assert load_plan(tmp_path) == plan
    assert plan.with_inference(overlap=0.25).inference.overlap == 0.25 and plan.inference.overlap == 0.5


def test_reconstruction_plan_has_no_volume_sections():
    plan = InferencePlan("reconstruction", (41, 12), geometry={"detectors": 41})
    doc = plan.to_json()
    assert "preprocess" not in doc and "window" not in doc and doc["geometry"] == {"detectors": 41}
    assert InferencePlan.from_json(doc) == plan


@pytest.mark.parametrize("doc, problem", [
    ({"input_shape": [1]}, "no 'family'"),
    ({"family": "segmentation"}, "no 'input_shape'"),
    ({**LEGACY, "window": {"mode": "2d"}}, "invalid inference plan"),
])
def test_bad_plans_are_one_line_errors_naming_the_file(tmp_path, doc, problem):
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(PlanError, match=problem) as err:
        load_plan(tmp_path)
    assert str(tmp_path / "plan.json") in str(err.value) and "\n" not in str(err.value)


def test_missing_and_unreadable_plans(tmp_path):
    with pytest.raises(PlanError, match="no plan.json"):
        load_plan(tmp_path)
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(PlanError, match="unreadable plan"):
        load_plan(tmp_path)
