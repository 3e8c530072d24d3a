"""Class weights for imbalanced classification: scikit-learn's 'balanced' rule, wired into fit."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.training import trainer


def test_balanced_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 12 + [1] * 3 + [2] * 1)
    ours = trainer.class_weights(y.tolist(), 3)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert [ours[c] for c in range(3)] == pytest.approx(ref.tolist())
    assert trainer.class_weights([0, 0, 2], 3)[1] == 1.0  # a class absent from training keeps weight 1


def test_train_stage_passes_weights_to_fit(tmp_path, monkeypatch):
    from medflow.core.loading import load_config
    from medflow.core.runner import run_pipeline
    from tests.helpers import make_cls_dataset, write_pipeline

    seen = {}
    real_fit = trainer.fit

    def spy(*args, **kwargs):
        seen["class_weight"] = kwargs.get("class_weight")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(trainer, "fit", spy)
    root = make_cls_dataset(tmp_path / "cls", n=16)
    lines = (root / "manifest.csv").read_text().splitlines()
    # make it imbalanced: drop most 'lesion' cases (odd indices), keeping whole patients
    kept = [lines[0]] + [r for r in lines[1:] if "normal" in r or r.split(",")[2] in ("pat0", "pat1", "pat2")]
    (root / "manifest.csv").write_text("\n".join(kept) + "\n")
    extra = """
preprocess: {spacing: [2.0, 2.0, 2.0], crop_to_foreground: false}
loader: {mode: 3d, patch_size: [8, 8, 8], crop: center, samples_per_case: 1, batch_size: 4}
model: {name: logistic, params: {downsample: 1}}
train: {epochs: 1, monitor: val_accuracy, class_weights: balanced, preview_cases: 1}
"""
    path = write_pipeline(tmp_path / "p.yaml", root, layout="csv", stages="[ingest, preprocess, split, train]",
                          extra=extra)
    cfg = load_config(path, ["dataset.classes=[normal, lesion]", "split.test_fraction=0.0", "split.folds=1"])
    run_pipeline(cfg)
    weights = seen["class_weight"]
    assert set(weights) == {0, 1} and weights[1] > 1.0 > weights[0]  # the minority class counts more
