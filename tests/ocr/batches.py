"""Comparing samples and batches field by field (every declared field, to the bit)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ocr.data.sample import PolygonSet


def assert_values_equal(x: Any, y: Any, where: str) -> None:
    if dataclasses.is_dataclass(x):
        assert type(x) is type(y), where
        for f in dataclasses.fields(x):
            assert_values_equal(getattr(x, f.name), getattr(y, f.name), f"{where}.{f.name}")
    elif isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype, where
        assert torch.equal(x, y), where
    elif isinstance(x, np.ndarray):
        assert isinstance(y, np.ndarray) and x.dtype == y.dtype, where
        np.testing.assert_array_equal(x, y, err_msg=where)
    elif isinstance(x, PolygonSet):
        assert isinstance(y, PolygonSet) and x.points.dtype == y.points.dtype, where
        assert x == y, where
    elif isinstance(x, list):
        assert isinstance(y, list) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            assert_values_equal(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


def assert_batches_equal(a: list[Any], b: list[Any]) -> None:
    """Two lists of batches (or samples) hold the same values in every field."""
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert_values_equal(x, y, f"batch {i}")
