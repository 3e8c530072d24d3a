"""The evaluate stage hands the trained model's plan, with its own inference settings, to the task."""

from __future__ import annotations

import pytest

from medflow.core.engine import RunContext, StageDir, StageFailed, StageOutput
from medflow.core.loading import load_config
from medflow.stages import evaluate
from tests.helpers import make_msd, write_pipeline


def _out(tmp_path, name, manifest):
    (tmp_path / name).mkdir(exist_ok=True)
    return StageOutput(name, tmp_path / name, {"digest": name, **manifest})


def test_it_needs_exactly_one_trained_model(tmp_path):
    with pytest.raises(StageFailed, match="expected one trained model upstream, found 0"):
        evaluate.trained({"split": _out(tmp_path, "split", {})})
    both = {n: _out(tmp_path, n, {"inference_model": "model.keras"}) for n in ("train", "train_recon")}
    with pytest.raises(StageFailed, match="found 2"):
        evaluate.trained(both)


def test_a_train_folder_without_a_plan_fails_in_one_line(tmp_path):
    cfg = load_config(write_pipeline(tmp_path / "p.yaml", make_msd(tmp_path / "msd", n=2)))
    upstream = {"train": _out(tmp_path, "train", {"inference_model": "model.keras"})}
    out = StageDir(tmp_path / "stages", "evaluate", "k" * 16)
    with pytest.raises(StageFailed, match=r"train: no plan.json"):
        evaluate.run(cfg, upstream, out, RunContext())
