"""What a reviewer gets from one tracked run: names, figures/, the per-case table, report.html, medflow report."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
from medflow.cli.main import main
from medflow.cli.review import UI_ENV, ui_command
from mlflow import MlflowClient
from tests.helpers import make_msd, read_splits, run_evaluation
from tests.pipelines.tasks.evaluation.test_segmentation import EXTRA


def _text(html: str) -> str:
    return re.sub(r"generated [0-9T:-]+", "", html)


def test_a_tracked_run_is_ready_for_review(tmp_path, monkeypatch, capsys):
    root = make_msd(tmp_path / "msd", n=6)
    store, cfg, ev = run_evaluation(tmp_path, root, EXTRA, ["split.test_fraction=0.34"])
    client = MlflowClient(store)
    run = client.get_run(ev.run_id)
    parent_id = run.data.tags["mlflow.parentRunId"]
    parent = client.get_run(parent_id)
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.run_name == "test · unet2d · fold 0" and run.info.run_name == "test · unet2d · fold 0 · evaluate"

    # figures under their review names on the parent, the per-case table as an MLflow table
    figures = {a.path for a in client.list_artifacts(parent_id, "figures")}
    assert figures == {f"figures/{n}" for n in ("confusion.png", "montage.png", "training_curves.png",
                                                "augmentation_preview.png")}
    assert {a.path for a in client.list_artifacts(ev.run_id, "figures")} == {"figures/confusion.png",
                                                                              "figures/montage.png"}
    mlflow.set_tracking_uri(store)
    table = client.load_table(exp.experiment_id, "tables/per_case.json", run_ids=[parent_id])
    test_ids = read_splits(tmp_path)["test"]
    assert sorted(table["case_id"]) == sorted(test_ids) and {"mean_dice", "multi_otsu_mean_dice"} <= set(table)
    # headline figures beside the baseline's, names that sort together; the stage's own metrics stay
    m = parent.data.metrics
    assert m["test/mean_dice"] == m["test_mean_dice"] and m["test/baseline/mean_dice"] == m["multi_otsu_test_mean_dice"]
    assert {"test/dice_cube", "test/baseline/dice_cube", "test/mean_hd95_mm"} <= set(m)
    assert "stage/manifest.json" in {a.path for a in client.list_artifacts(ev.run_id, "stage")}

    # report.html on the parent: self-contained, every section there
    page = Path(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path="report.html",
                                                    dst_path=str(tmp_path / "dl"))).read_text()
    assert "http://" not in page.replace("http://127.0.0.1", "") and "https://" not in page  # nothing to fetch
    assert page.count('src="data:image/png;base64,') == 4
    for needle in ('id="verdict"', "multi_otsu baseline on test mean_dice", 'id="per-case"', 'id="fingerprint"',
                   "inference plan", "pipeline configuration", "Training curves", 'class="sortable"'):
        assert needle in page, needle
    for case_id in test_ids:
        assert f'<td data-v="{case_id}">' in page

    # medflow report writes the same page, from the run id or from the pipeline's finished stages
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["report", parent_id, "--out", str(tmp_path / "r1")]) == 0
    assert _text((tmp_path / "r1" / "report.html").read_text()) == _text(page)
    assert main(["report", str(tmp_path / "p.yaml"), "--set", "split.test_fraction=0.34", "--out",
                 str(tmp_path / "r2")]) == 0
    from_yaml = (tmp_path / "r2" / "report.html").read_text()
    assert 'id="per-case"' in from_yaml and from_yaml.count("data:image/png") == 4
    assert main(["report", "0" * 32, "--out", str(tmp_path / "r3")]) != 0
    assert "no MLflow run" in capsys.readouterr().err
    assert not (tmp_path / "r3" / "report.html").exists()


def test_ui_turns_off_what_a_local_team_does_not_use():
    cmd, env = ui_command("sqlite:////tmp/x.db", 5123)
    assert cmd[1:4] == ["-m", "mlflow", "ui"] and ["--host", "127.0.0.1"] == cmd[cmd.index("--host"):][:2]
    assert "--workers" in cmd and cmd[cmd.index("--workers") + 1] == "1"
    assert all(env[k] == v for k, v in UI_ENV.items()) and env["MLFLOW_ENABLE_AI_GATEWAY"] == "false"


def test_report_from_a_pipeline_that_never_ran(tmp_path, capsys):
    from tests.helpers import write_pipeline

    path = write_pipeline(tmp_path / "p.yaml", make_msd(tmp_path / "msd", n=4))
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) != 0
    assert "no stage of this pipeline has finished" in capsys.readouterr().err
