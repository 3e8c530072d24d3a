"""The champion rule and the served signature, without a tracking store."""

from __future__ import annotations

from types import SimpleNamespace

from medflow.tracking.registry import champion_decision
from medflow.tracking.signature import export_signature, requirements


def _version(metric, value, version="3"):
    return SimpleNamespace(version=version, tags={"medflow.selection_metric": metric, "medflow.selection_value": value})


def test_the_alias_moves_only_on_a_better_comparable_value():
    assert champion_decision(None, "val_dice", 0.5, True) == (True, "val_dice=0.5; no champion yet")
    move, text = champion_decision(_version("val_dice", "0.6"), "val_dice", 0.5, True)
    assert not move and text.endswith("(higher is better): kept")
    move, text = champion_decision(_version("val_loss", "0.6"), "val_loss", 0.5, False)
    assert move and "vs champion v3 0.6 (lower is better): moved" in text
    move, text = champion_decision(_version("val_accuracy", "0.9"), "val_dice", 0.95, True)
    assert not move and "not comparable" in text


def test_signature_follows_the_family():
    seg = export_signature({"family": "segmentation", "input_shape": [16, 16, 2], "classes": ["bg", "gm"],
                            "channels": ["T1", "T2"]})
    names = [c.name for c in seg.outputs.inputs]
    assert names == ["case", "error", "labels_nifti_b64", "volume_ml_gm"]
    image = next(c for c in seg.inputs.inputs if c.name == "image")
    assert "Array(Array(Array(Array(double))))" in str(image.type)  # (X, Y, Z, C) for two channels
    rec = export_signature({"family": "reconstruction", "input_shape": [41, 12]})
    assert [c.name for c in rec.inputs.inputs] == ["case", "path", "sinogram"]
    assert [p.name for p in rec.params.params] == ["output_dir"]
    assert any(r.startswith("keras==") for r in requirements())
