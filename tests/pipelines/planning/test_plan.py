"""medflow plan: the plan file from a real fingerprint, --plan FILE / auto applied under --set, the plan in
MLflow and in medflow status; the machine measurement."""

from __future__ import annotations

import json

import pytest
import yaml

from medflow.cli.main import EXIT_CONFIG, main
from medflow.core.loading import load_config
from medflow.planning.plan import plan_overrides
from medflow.planning.rules import Machine
from tests.helpers import make_msd, write_pipeline

MACHINE = Machine(cores=2, memory_gib=24.0, gflops_2d=40.0, gflops_3d=25.0)


@pytest.fixture
def fixed_machine(monkeypatch):
    monkeypatch.setattr("medflow.planning.machine.measure", lambda seconds=2.0: MACHINE)


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    root = make_msd(tmp_path / "msd", n=4, shape=(24, 20, 16))
    extra = ("loader: {mode: 2d, patch_size: [16, 16], samples_per_case: 2, batch_size: 2}\n"
             "train: {epochs: 1, monitor: val_dice, val_samples_per_case: 1, preview_cases: 1}\n")
    return write_pipeline(tmp_path / "p.yaml", root, extra=extra, stages="[ingest, preprocess, split, train]")


def test_plan_file_reads_as_overrides_with_a_reason_per_line(pipeline, tmp_path, capsys, fixed_machine):
    out = tmp_path / "plan.yaml"
    assert main(["plan", str(pipeline), "--budget", "3m", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# medflow plan for test, budget 3m\n# machine: 2 cores, 24 GiB")
    assert "# data: 4 cases, median spacing 1.5 x 0.8 x 2.5 mm" in text  # from the ingest fingerprint
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert all("   # " in line for line in body)  # every choice says why
    plan = yaml.safe_load(text)
    assert plan["train.epochs"] is None and plan["train.budget"] == "3m"
    assert {"preprocess.spacing", "loader.mode", "loader.patch_size", "loader.batch_size", "model.params.depth",
            "model.params.filters"} <= set(plan)
    cfg = load_config(pipeline, plan_overrides(out))  # every key is a valid --set
    assert cfg.train.budget == "3m" and cfg.model.params["depth"] == plan["model.params.depth"]
    assert list(cfg.loader.patch_size) == plan["loader.patch_size"]


def test_plan_rejects_a_bad_budget_in_one_line(pipeline, capsys):
    assert main(["plan", str(pipeline), "--budget", "3 minutes"]) == EXIT_CONFIG
    assert "budget '3 minutes'" in capsys.readouterr().err


def test_run_with_a_plan_file_applies_it_under_set_and_logs_it(pipeline, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    plan = tmp_path / "edited.yaml"
    plan.write_text("# a plan a person edited\npreprocess.spacing: [3.0, 3.0, 3.0]   # coarse\n"
                    "loader.patch_size: [8, 8]\nmodel.params.depth: 1\ntrain.epochs: null\ntrain.budget: 9m\n")
    assert main(["run", str(pipeline), "--plan", str(plan), "--stage", "preprocess",
                 "--set", "loader.patch_size=[16, 16]"]) == 0
    capsys.readouterr()
    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("test").experiment_id])
                 if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.params["plan/train.budget"] == '"9m"'
    assert parent.data.params["plan/preprocess.spacing"] == "[3.0, 3.0, 3.0]"
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plan")] == ["plan/edited.yaml"]
    (pre,) = (tmp_path / "ws" / "stages" / "preprocess").iterdir()
    assert json.loads((pre / "plan.json").read_text())["spacing"] == [3.0, 3.0, 3.0]  # the plan reached the stage
    assert parent.data.params["loader.patch_size"] == "[16, 16]"  # and --set had the last word
    assert main(["run", str(pipeline), str(pipeline), "--plan", str(plan)]) == EXIT_CONFIG  # one pipeline a file
    assert "a plan file is for one pipeline" in capsys.readouterr().err


def test_run_plan_auto_writes_the_plan_and_status_shows_it(pipeline, tmp_path, capsys, fixed_machine):
    assert main(["run", str(pipeline), "--plan", "auto", "--set", "train.budget=2m", "--stage", "split"]) == 0
    written = tmp_path / "ws" / "plans" / "test.yaml"
    assert yaml.safe_load(written.read_text())["train.budget"] == "2m"  # the packaged epochs gave way
    capsys.readouterr()
    assert main(["status", str(pipeline)]) == 0
    out = capsys.readouterr().out
    assert f"plan: {written}" in out and "medflow plan for test, budget 2m" in out


def test_machine_measures_positive_rates(monkeypatch):
    from medflow.planning import machine as probe

    # Smaller probe networks than the real ones: the test checks the arithmetic, not this machine's rate.
    monkeypatch.setattr(probe, "PROBES", {"2d": ((32, 32), 2, 4, 2), "3d": ((16, 16, 16), 2, 4, 1)})
    machine = probe.measure(seconds=0.2)
    assert machine.cores >= 1 and machine.memory_gib > 0 and machine.gflops_2d > 0 and machine.gflops_3d > 0
