"""Degenerate content and geometry outliers, on arrays."""

from __future__ import annotations

import numpy as np

from medflow.data.fingerprint import content_problem, geometry_outliers, label_outside
from tests.helpers import cube_case


def test_a_dark_lesion_inside_the_anatomy_is_not_outside_it():
    image, _ = cube_case((24, 24, 24), lo=(4, 4, 4), hi=(20, 20, 20))
    image[10:13, 10:13, 10:13] = 100  # a hypointense lesion: below Otsu, but enclosed by the bright cube
    problem, mask = content_problem(image)
    assert problem is None and not mask[11, 11, 11]
    lesion = np.zeros(image.shape, np.uint8)
    lesion[10:13, 10:13, 10:13] = 1
    assert not label_outside(mask, lesion)
    lesion[:] = 0
    lesion[0:2, 0:2, 0:2] = 1  # in the background corner
    assert label_outside(mask, lesion)
    assert not label_outside(mask, np.zeros_like(lesion))  # an empty label is not misplaced


def test_geometry_outliers_name_spacing_and_orientation():
    fp = {"spacing_ras": [1.0, 1.0, 1.0], "axcodes": "RAS"}
    records = [("a", fp), ("b", fp), ("c", fp), ("thick", {**fp, "spacing_ras": [1.0, 1.0, 5.0]}),
               ("flipped", {**fp, "axcodes": "LPS"})]
    got = {o["case_id"]: o["problem"] for o in geometry_outliers(records)}
    assert got == {"thick": "spacing 1x1x5 mm where the median is 1x1x1 mm",
                   "flipped": "orientation LPS where most cases are RAS"}
    assert geometry_outliers(records[:2]) == []
