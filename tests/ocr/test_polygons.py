"""Polygon area and perimeter: hand-computed values, and one polygon against a whole set."""

from __future__ import annotations

import numpy as np
import pytest

from ocr.data.polygons import (
    polygon_area,
    polygon_areas,
    polygon_perimeter,
    polygon_perimeters,
)
from ocr.data.sample import PolygonSet

TRIANGLE = np.array([[10, 10], [13, 10], [10, 14]], dtype=np.float64)  # area 6, perimeter 12


def test_area_and_perimeter_of_a_triangle_are_the_hand_computed_values():
    assert polygon_area(TRIANGLE) == 6.0
    assert polygon_perimeter(TRIANGLE) == 12.0


def test_one_polygon_gives_the_bits_of_the_set_functions():
    rng = np.random.default_rng(0)
    polygons = [rng.uniform(-500, 500, (int(rng.integers(1, 9)), 2)) for _ in range(200)]
    polygons = [p.astype(np.float32) if i % 2 else p for i, p in enumerate(polygons)]
    points = PolygonSet.from_list(polygons)
    single_areas = [polygon_area(p) for p in polygons]
    single_perimeters = [polygon_perimeter(p) for p in polygons]
    assert single_areas == polygon_areas(points.points, points.offsets).tolist()
    assert single_perimeters == polygon_perimeters(points.points, points.offsets).tolist()


@pytest.mark.parametrize(
    "box",
    [
        [[106.0, 0.0], [106.0, 0.0], [106.0, 27.576005977357347], [106.0, 0.9621631057546942]],
        [[0.1, 33.3], [17.77, 33.3], [250.123, 33.3], [3.3, 33.3]],
    ],
    ids=["on-a-vertical-border", "on-a-horizontal-border"],
)
def test_a_box_clipped_onto_a_border_has_exactly_zero_area(box):
    # The plain shoelace sum leaves ~1e-13 here; DBPostProcess drops such boxes by area == 0.
    assert polygon_area(np.array(box)) == 0.0


@pytest.mark.parametrize(
    "points", [np.zeros((0, 2)), np.zeros((4, 3)), np.zeros(8)], ids=["empty", "3-columns", "flat"]
)
def test_a_malformed_polygon_is_refused(points):
    with pytest.raises(ValueError, match=r"must have shape \(N, 2\) with N >= 1"):
        polygon_area(points)
