"""PolygonSet's whole-set geometry against hand-computed values, and the typed records."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from ocr.data.sample import TARGET_NAMES, Batch, DBNetMaps, PolygonSet, Sample

SQUARE = [[0, 0], [4, 0], [4, 4], [0, 4]]  # area 16, perimeter 16
TRIANGLE = [[10, 10], [13, 10], [10, 14]]  # area 6, perimeter 3 + 4 + 5 = 12


def test_polygons_are_views_of_one_array():
    polygons = PolygonSet.from_list([SQUARE, TRIANGLE])
    assert len(polygons) == 2 and polygons.points.shape == (7, 2)
    assert polygons.offsets.tolist() == [0, 4, 7]
    np.testing.assert_array_equal(polygons[1], TRIANGLE)
    np.testing.assert_array_equal(polygons[-1], TRIANGLE)
    assert np.shares_memory(polygons[0], polygons.points)
    assert [p.tolist() for p in polygons] == [SQUARE, TRIANGLE]


def test_areas_perimeters_and_bounds_are_hand_computed_values():
    polygons = PolygonSet.from_list([SQUARE, TRIANGLE])
    np.testing.assert_allclose(polygons.areas(), [16, 6])
    np.testing.assert_allclose(polygons.perimeters(), [16, 12])
    np.testing.assert_array_equal(polygons.bounds(), [[0, 0, 4, 4], [10, 10, 13, 14]])


def test_area_does_not_depend_on_the_winding():
    clockwise = PolygonSet.from_list([SQUARE[::-1]])
    assert clockwise.areas().tolist() == [16.0]


def test_transformed_moves_every_point_by_the_matrix():
    polygons = PolygonSet.from_list([SQUARE, TRIANGLE])
    matrix = np.array([[2, 0, 1], [0, 3, -1], [0, 0, 1]], dtype=np.float64)
    moved = polygons.transformed(matrix)
    np.testing.assert_array_equal(moved[1], [[21, 29], [27, 29], [21, 41]])
    np.testing.assert_allclose(moved.areas(), [16 * 6, 6 * 6])


def test_clipped_keeps_points_inside_the_frame():
    polygons = PolygonSet.from_list([[[-5, 2], [10, 2], [10, 30]]])
    np.testing.assert_array_equal(polygons.clipped(8, 20)[0], [[0, 2], [8, 2], [8, 20]])


def test_empty_set_has_empty_geometry():
    empty = PolygonSet.from_list([])
    assert len(empty) == 0 and empty.areas().shape == (0,) and empty.bounds().shape == (0, 4)


@pytest.mark.parametrize(
    ("points", "offsets", "match"),
    [
        (np.zeros((4, 3)), [0, 4], r"shape \(P, 2\)"),
        (np.zeros((4, 2)), [1, 4], "starting at 0"),
        (np.zeros((4, 2)), [0, 3], "end at the number of points"),
        (np.zeros((4, 2)), [0, 2, 2, 4], "increase"),
    ],
    ids=["three-columns", "offset-not-zero", "short", "empty-polygon"],
)
def test_inconsistent_arrays_are_refused(points, offsets, match):
    with pytest.raises(ValueError, match=match):
        PolygonSet(points, np.array(offsets))


def test_a_polygon_set_survives_pickling():
    polygons = PolygonSet.from_list([SQUARE, TRIANGLE], dtype=np.float32)
    assert pickle.loads(pickle.dumps(polygons)) == polygons


def test_batch_declares_the_fields_of_a_sample():
    names = [f.name for f in dataclasses.fields(Sample)]
    assert names == [f.name for f in dataclasses.fields(Batch)]


def test_target_names_are_the_maps_fields():
    assert TARGET_NAMES == ("prob_map", "prob_mask", "thresh_map", "thresh_mask")
    assert [f.name for f in dataclasses.fields(DBNetMaps)] == list(TARGET_NAMES)
