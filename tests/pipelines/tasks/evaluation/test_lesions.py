"""Lesion-wise detection, lesion Dice and explanation mass, counted on toy masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.tasks.evaluation.lesions import explanation_figures, lesion_figures


def _vol():
    return np.zeros((16, 16, 16), np.float32)


def test_lesion_figures_count_found_missed_and_false_lesions():
    truth_a, pred_a = _vol().astype(np.uint8), _vol()
    truth_a[2:5, 2:5, 2:5] = 1        # found (half overlapped)
    truth_a[10:12, 10:12, 10:12] = 1  # missed
    pred_a[3:6, 2:5, 2:5] = 0.9
    pred_a[12:15, 1:3, 1:3] = 0.8     # a false positive
    truth_n, pred_n = _vol().astype(np.uint8), _vol()
    pred_n[5:7, 5:7, 5:7] = 0.7       # a false positive on a normal subject
    pred_n[0:2, 0:2, 0:2] = 0.4       # below threshold
    out = lesion_figures({"a": pred_a, "n": pred_n, "w": _vol()}, {"a": truth_a, "n": truth_n, "w": None})
    assert out["lesions"] == 2 and out["cases_with_masks"] == 2  # the weak case is left out
    assert out["detection_sensitivity"] == pytest.approx(0.5)
    assert out["false_positives_per_case"] == pytest.approx(1.0)
    p = pred_a > 0.5
    expected = 2 * np.logical_and(p, truth_a > 0).sum() / (p.sum() + truth_a.sum())
    assert out["lesion_dice"] == pytest.approx(expected)  # only case a has a lesion
    empty = lesion_figures({}, {"w": None})
    assert np.isnan(empty["lesion_dice"]) and np.isnan(empty["detection_sensitivity"])


def test_explanation_figures_against_chance():
    mask = _vol().astype(np.uint8)
    mask[4:8, 4:8, 4:8] = 1
    on, off = _vol(), _vol()
    on[4:8, 4:8, 4:8], on[0, 0, 0] = 1.0, 0.5
    off[10:14, 10:14, 10:14] = 1.0
    good = explanation_figures({"a": on}, {"a": mask, "n": np.zeros_like(mask)})
    assert good["explanation_mass_in_lesion"] == pytest.approx(64 / 64.5) and good["cases"] == 1
    assert good["explanation_mass_chance"] == pytest.approx(64 / 16**3)
    assert good["explanation_peak_in_lesion"] == 1.0
    bad = explanation_figures({"a": off}, {"a": mask})
    assert bad["explanation_mass_in_lesion"] == 0.0 and bad["explanation_peak_in_lesion"] == 0.0
    blank = explanation_figures({"a": _vol()}, {"a": mask})  # a map that says nothing points nowhere
    assert blank["explanation_mass_in_lesion"] == 0.0 and blank["explanation_peak_in_lesion"] == 0.0
