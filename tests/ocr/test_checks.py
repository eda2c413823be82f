"""check_number and is_number: what counts as a number, bounds, and the messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ocr.checks import check_number, is_number


@pytest.mark.parametrize("integer", [False, True], ids=["number", "integer"])
@pytest.mark.parametrize("flag", [True, False], ids=["true", "false"])
def test_bools_are_refused(flag, integer):
    kind = "an integer" if integer else "a number"
    with pytest.raises(TypeError, match=f"^x must be {kind}, got bool$"):
        check_number("x", flag, integer=integer)


@pytest.mark.parametrize(
    "value",
    [3, 2.5, np.int64(3), np.uint8(3), np.float32(2.5), np.float64(2.5)],
    ids=["int", "float", "np-int64", "np-uint8", "np-float32", "np-float64"],
)
def test_numbers_and_numpy_scalars_are_returned_unchanged(value):
    assert check_number("x", value) is value


@pytest.mark.parametrize(
    "value", ["1", None, [1], 1j, np.array([1.0])], ids=["str", "none", "list", "complex", "array"]
)
def test_non_numbers_are_refused_naming_the_type(value):
    with pytest.raises(TypeError, match=f"^x must be a number, got {type(value).__name__}$"):
        check_number("x", value)


@pytest.mark.parametrize("value", [3, np.int64(3)], ids=["int", "np-int64"])
def test_integers_pass_the_integer_check(value):
    assert check_number("n", value, integer=True) is value


@pytest.mark.parametrize("value", [3.0, np.float64(3.0)], ids=["float", "np-float64"])
def test_integral_floats_are_not_integers(value):
    with pytest.raises(TypeError, match="^n must be an integer, got"):
        check_number("n", value, integer=True)


def test_numpy_integers_are_refused_without_numpy():
    with pytest.raises(TypeError, match="^n must be an int, got int64$"):
        check_number("n", np.int64(3), integer=True, numpy=False)


def test_numpy_float32_is_refused_without_numpy():
    with pytest.raises(TypeError, match="^x must be a number, got float32$"):
        check_number("x", np.float32(1.0), numpy=False)


def test_numpy_float64_is_a_float_even_without_numpy():
    # np.float64 subclasses float, as it always did for the sites that take int and float.
    value = np.float64(1.0)
    assert check_number("x", value, numpy=False) is value


@pytest.mark.parametrize("value", [1, 10**30], ids=["minimum", "huge"])
def test_the_minimum_and_above_are_accepted(value):
    assert check_number("n", value, integer=True, minimum=1) == value


def test_one_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match="^n must be >= 1, got 0$"):
        check_number("n", 0, integer=True, minimum=1)


def test_exclusive_minimum_refuses_the_minimum_itself():
    with pytest.raises(ValueError, match=r"^x must be > 0, got 0\.0$"):
        check_number("x", 0.0, minimum=0, exclusive_minimum=True)


def test_exclusive_minimum_accepts_the_smallest_float_above_it():
    tiny = math.nextafter(0.0, 1.0)
    assert check_number("x", tiny, minimum=0, exclusive_minimum=True) == tiny


def test_the_maximum_itself_is_accepted():
    assert check_number("x", 1.0, maximum=1) == 1.0


def test_the_next_float_above_the_maximum_is_refused():
    with pytest.raises(ValueError, match="^x must be <= 1, got 1.0000000000000002$"):
        check_number("x", math.nextafter(1.0, 2.0), maximum=1)


def test_exclusive_maximum_refuses_the_maximum_itself():
    with pytest.raises(ValueError, match=r"^x must be < 1, got 1\.0$"):
        check_number("x", 1.0, maximum=1, exclusive_maximum=True)


@pytest.mark.parametrize(
    ("exclusive_minimum", "exclusive_maximum", "interval"),
    [(False, False, r"\[0, 1\]"), (True, False, r"\(0, 1\]"), (True, True, r"\(0, 1\)")],
    ids=["closed", "half-open", "open"],
)
def test_both_bounds_are_named_as_an_interval(exclusive_minimum, exclusive_maximum, interval):
    with pytest.raises(ValueError, match=f"^p must be in {interval}, got 2$"):
        check_number(
            "p",
            2,
            minimum=0,
            maximum=1,
            exclusive_minimum=exclusive_minimum,
            exclusive_maximum=exclusive_maximum,
        )


@pytest.mark.parametrize("value", [float("nan"), np.float32("nan")], ids=["float", "np-float32"])
def test_nan_fails_every_bound(value):
    with pytest.raises(ValueError, match="^p must be in"):
        check_number("p", value, minimum=0, maximum=1)


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_finite_refuses_infinity_and_nan(value):
    with pytest.raises(ValueError, match="^x must be a finite number >= 0, got"):
        check_number("x", value, minimum=0, finite=True)


def test_unbounded_infinity_passes_without_finite():
    assert check_number("x", float("inf")) == float("inf")


def test_expected_replaces_the_description_of_the_range():
    with pytest.raises(ValueError, match="^width must be at least 1, got 0$"):
        check_number("width", 0, integer=True, minimum=1, expected="at least 1")


@pytest.mark.parametrize(
    ("value", "kwargs", "result"),
    [
        (True, {}, False),
        (np.bool_(True), {}, False),
        (1, {}, True),
        (1.5, {"integer": True}, False),
        (np.int32(1), {"integer": True}, True),
        (np.int32(1), {"integer": True, "numpy": False}, False),
        (np.float16(1), {"numpy": False}, False),
    ],
    ids=["bool", "np-bool", "int", "float-not-integer", "np-int", "np-int-no-numpy", "np-half"],
)
def test_is_number(value, kwargs, result):
    assert is_number(value, **kwargs) is result
