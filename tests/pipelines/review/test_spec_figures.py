"""Run names, headline-versus-baseline figures and verdicts, review figures."""

from __future__ import annotations

import numpy as np

from medflow.core.loading import load_config
from medflow.review.figures import (
    case_grid_figure,
    difference_map,
    ortho_montage_figure,
    training_curves_figure,
)
from medflow.review.spec import comparison, headline_row, headline_table, parent_metrics, run_label, verdict
from medflow.tracking.runs import ui_url
from tests.helpers import write_pipeline


def test_run_labels_say_what_a_run_is(tmp_path):
    cfg = load_config(write_pipeline(tmp_path / "p.yaml", tmp_path), ["model.name=unet2d", "train.fold=1"])
    assert run_label(cfg) == "test · unet2d · fold 1"
    assert run_label(cfg, "evaluate") == "test · unet2d · fold 1 · evaluate"
    assert run_label(cfg, "ingest") == "test · ingest"  # data stages do not depend on the model


def test_parent_metrics_sort_network_and_baseline_together():
    review = {"split": "test", "baseline": "multi_otsu",
              "metrics": [comparison("mean_dice", 0.9, 0.8), comparison("mean_hd95_mm", 2.0, float("nan"), False),
                          comparison("dice_cube", 0.7, None)]}
    assert parent_metrics(review) == {"test/mean_dice": 0.9, "test/baseline/mean_dice": 0.8,
                                      "test/mean_hd95_mm": 2.0, "test/dice_cube": 0.7}


def test_verdict_reads_the_direction_of_the_first_figure():
    win = {"split": "test", "baseline": "fbp_hann", "metrics": [comparison("psnr", 28.0, 25.5)]}
    assert verdict(win).startswith("the network beats the fbp_hann baseline on test psnr: 28 vs 25.5 (+2.5)")
    loss = {"split": "val", "baseline": "multi_otsu", "metrics": [comparison("hd95", 5.0, 3.0, False)]}
    assert verdict(loss).startswith("the network loses to the multi_otsu baseline on val hd95")
    alone = {"split": "test", "baseline": None, "metrics": [comparison("accuracy", 0.8)]}
    assert "no baseline" in verdict(alone)


def test_headline_rows_give_the_network_s_advantage_whichever_way_is_better():
    win = headline_row("reconstruction", "fbpconvnet",
                       {"split": "test", "baseline": "fbp_hann", "metrics": [comparison("psnr", 28.0, 25.5)]})
    assert (win["metric"], win["margin"], win["verdict"]) == ("test psnr", 2.5, "beats")
    lower = headline_row("s", "unet2d", {"split": "test", "baseline": "multi_otsu",
                                         "metrics": [comparison("mean_hd95_mm", 5.0, 3.0, False)]})
    assert (lower["margin"], lower["verdict"]) == (-2.0, "loses")
    assert headline_row("c", "segcls", {"split": "test", "baseline": None,
                                        "metrics": [comparison("accuracy", 0.8)]})["verdict"] == "no baseline"
    assert headline_row("c", "segcls", None)["verdict"] == "not evaluated"
    lines = headline_table([win, lower]).splitlines()
    assert lines[0].split() == ["pipeline", "model", "headline", "network", "baseline", "margin", "verdict"]
    assert lines[1].split() == ["reconstruction", "fbpconvnet", "test", "psnr", "28", "25.5", "fbp_hann", "+2.5",
                                "beats"]
    assert lines[1].index("+2.5") == lines[2].index("-2")  # columns line up


def test_ui_links_open_the_model_training_pages():
    assert ui_url() == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    assert ui_url("http://h:1/", "3", "abc") == "http://h:1/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_url(experiment_id="3").endswith("/#/experiments/3/runs?workflowType=machine_learning")


def test_difference_map_tells_false_positives_from_misses():
    truth = np.array([0, 1, 1, 2, 0, 2])
    pred = np.array([1, 1, 0, 1, 0, 2])
    wrong, missed = difference_map(truth, pred)
    assert wrong.tolist() == [True, False, False, True, False, False]  # background called 1; class 2 called 1
    assert missed.tolist() == [False, False, True, False, False, False]


def test_review_figures_draw(tmp_path):
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1), "dice": 0.1 * e, "val_dice": 0.09 * e,
                "learning_rate": 0.001, "epoch_seconds": 3.0} for e in range(4)]
    fig = training_curves_figure(history)
    titles = {ax.get_title() for ax in fig.axes if ax.axison}
    assert titles == {"loss", "dice", "learning_rate"}  # train and validation share a panel; timings left out
    loss_ax = next(ax for ax in fig.axes if ax.get_title() == "loss")
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train", "validation"]
    truth = np.zeros((12, 10, 8), int)
    truth[3:8, 3:7, 2:6] = 1
    pred = np.roll(truth, 1, axis=0)
    row = {"title": "c", "image": np.random.default_rng(0).random((12, 10, 8)), "truth": truth, "pred": pred,
           "centre": [5, 5, 4]}
    fig = ortho_montage_figure([row, {**row, "spacing": (1.0, 1.0, 4.0)}], ["background", "cube"])
    assert len([ax for ax in fig.axes if ax.get_title()]) == 12  # 2 cases x 3 planes x (contours, difference)
    # anisotropic voxels keep their proportions: the coronal plane (x across, z up) of 1 x 4 mm voxels
    assert fig.axes[0].get_aspect() == 1.0 and fig.axes[8].get_aspect() == 4.0
    fig = case_grid_figure([np.ones((6, 6, 4))] * 3, ["a", "b", "c"], [True, False, True], cols=2)
    framed = [ax for ax in fig.axes if ax.axison]
    assert len(framed) == 3
    assert framed[1].spines["top"].get_edgecolor()[:3] != framed[0].spines["top"].get_edgecolor()[:3]
