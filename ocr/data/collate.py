"""Samples to a batch, driven by the declared field types of ``ocr.data.sample``.

A field declared ``Stacked[...]`` becomes one tensor with a new first axis, ``HostStacked[...]``
one numpy array, a dataclass field (the DBNet maps) is collated field by field, every other
field becomes a list. In a DataLoader worker the stacked tensors are allocated in shared
memory, so sending the batch to the main process moves no pixels; in the main process with
CUDA they are allocated pinned.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import cache
from typing import Annotated, Any, get_args, get_origin, get_type_hints

import numpy as np
import torch
from torch.utils.data import get_worker_info

from .sample import HOST_STACK, STACK, Batch, Sample


def empty_batch(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch: shared memory in a DataLoader worker, pinned
    memory in the main process when CUDA is available, ordinary memory otherwise."""
    shape = tuple(int(s) for s in shape)
    if get_worker_info() is not None:
        # As torch's default_collate does: the worker's result then travels as a handle.
        proto = torch.empty(0, dtype=dtype)
        storage = proto._typed_storage()._new_shared(math.prod(shape), device=proto.device)
        return proto.new(storage).resize_(*shape)
    return torch.empty(shape, dtype=dtype, pin_memory=torch.cuda.is_available())


@cache
def _field_kinds(cls: Any) -> dict[str, Any]:
    """Each field's marker (``STACK``, ``HOST_STACK``) or None, from its declared type."""
    hints = get_type_hints(cls, include_extras=True)
    kinds = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        markers = get_args(hint)[1:] if get_origin(hint) is Annotated else ()
        kinds[f.name] = next((m for m in markers if m in (STACK, HOST_STACK)), None)
    return kinds


def _stack(values: list[Any]) -> torch.Tensor:
    first = torch.as_tensor(values[0])
    out = empty_batch((len(values), *first.shape), first.dtype)
    for slot, value in zip(out, values, strict=True):
        slot.copy_(torch.as_tensor(value))
    return out


def _collate_dataclass(
    items: list[Any], into: type | None = None, filled: dict[str, Any] | None = None
) -> Any:
    cls: Any = type(items[0])
    values: dict[str, Any] = dict(filled or {})
    for name, kind in _field_kinds(cls).items():
        if name in values:
            continue
        column = [getattr(item, name) for item in items]
        if kind is STACK:
            values[name] = _stack(column)
        elif kind is HOST_STACK:
            values[name] = np.stack(column)
        elif all(v is None for v in column):
            values[name] = None
        elif dataclasses.is_dataclass(column[0]):
            if any(v is None for v in column):
                raise ValueError(f"field {name!r} is set in some samples and None in others")
            values[name] = _collate_dataclass(column)
        else:
            values[name] = column
    return (into or cls)(**values)


def collate(samples: Sequence[Sample] | Batch, **filled: Any) -> Batch:
    """Stack ``Stacked`` fields into tensors, keep the others as lists.

    A ``Batch`` (what ``OCRDataset.__getitems__`` returns) passes through unchanged.

    Args:
        samples: The samples, in batch order.
        **filled: Batch fields already built (e.g. ``image=`` a tensor whose slots the
            samples' images were written into); taken as they are.

    Raises:
        ValueError: an empty list, or the DBNet maps present in some samples only.
    """
    if isinstance(samples, Batch):
        return samples
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    return _collate_dataclass(list(samples), into=Batch, filled=filled)
