"""A PyTorch dataset over a cache store: the only module of ``lmdb_cache`` that imports torch.

::

    from torch.utils.data import DataLoader
    from lmdb_cache.torch import CacheDataset, collate

    dataset = CacheDataset("data/train.lmdb")
    loader = DataLoader(dataset, batch_size=32, num_workers=4, collate_fn=collate)
    for images, metas, extras in loader:
        ...  # images: (N, H, W, 3) uint8 when all have one size; extras["label"]: a tensor

The dataset holds a reader, which each process opens for itself on first use (``fork``,
``spawn`` and ``forkserver`` workers all work) and which shares one page-cache copy of the
pixels between every worker and rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset, default_collate
except ImportError as e:  # a light install: lmdb_cache alone does not need torch
    raise ImportError(
        "lmdb_cache.torch needs PyTorch, which is not installed: pip install torch (or "
        'pip install "lmdb-image-cache[ocr]"; see the README for CPU and CUDA builds)'
    ) from e

from .errors import MissingImageError
from .format.keyindex import KeyList, KeyOrder
from .read.reader import open_cache


class CacheDataset(Dataset):
    """``(image, meta, extra)`` for each key of a cache store.

    Args:
        path: The store (``build-cache`` output, or one written by ``CacheWriter``).
        keys: The keys to serve, in this order; None: every key in storage order.
        transform: Called on each image, a ``(H, W, 3)`` uint8 tensor (owned, writable);
            what it returns is the sample's image. It must be picklable for ``spawn`` and
            ``forkserver`` workers (a module-level function or a callable object).
        verify: Check each image's CRC-32 on read (see ``open_cache``).
        readahead: False for a store larger than the page cache: the kernel does not read
            around each fault, and each batch (``__getitems__``, what a ``DataLoader`` with a
            batch size calls) is named to it first (``CacheReader.prefetch``).

    Raises:
        CacheNotFoundError, NotACacheError, FormatVersionError, StoreDamagedError: see
            ``open_cache``.
        MissingImageError: a key of ``keys`` is not in the store (the first one is named).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        keys: Sequence[str] | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
        *,
        verify: bool = False,
        readahead: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.reader = open_cache(self.path, verify=verify, readahead=readahead)
        # No list of str: a million of them would be copied page by page into every worker as
        # their reference counts change. Every key: positions go through the store's key index
        # (one page-cache copy for all processes), checked to name the keys they named here;
        # a store without one (built by an older version) gives a compact copy (``KeyList``).
        self.keys: KeyList | None = None
        self.order: KeyOrder | None = None
        self._count = 0
        if keys is None:
            order = self.reader.key_order()
            if order.stored:
                self.order, self._count = order, order.count
            else:
                self.keys = self.reader.key_list()
        else:
            for key in keys:
                if key not in self.reader:
                    self.reader.close()
                    raise MissingImageError(key, self.path)
            self.keys = KeyList.from_keys(keys)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.keys) if self.keys is not None else self._count

    def key(self, index: int) -> str:
        """The key of sample ``index``.

        Raises:
            IndexError: no such sample.
            KeysChangedError: the store's keys changed since the dataset was made.
        """
        if self.keys is not None:
            return self.keys[index]
        return self.reader.key_at(index, self.order)

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, dict[str, Any], dict[str, Any]]]:
        """The samples of a batch; without read-around, the batch is named to the kernel
        first."""
        keys = [self.key(i) for i in indices]
        if not self.reader.readahead:
            self.reader.prefetch(keys)
        return [self._sample(key) for key in keys]

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        return self._sample(self.key(index))

    def _sample(self, key: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        record = self.reader[key]
        image: Any = torch.from_numpy(record.image)
        if self.transform is not None:
            image = self.transform(image)
        return image, record.meta, record.extra


def collate(
    samples: list[tuple[Any, dict[str, Any], dict[str, Any]]],
) -> tuple[Any, list[dict[str, Any]], Any]:
    """Batch ``CacheDataset`` samples for a ``DataLoader`` (``collate_fn=collate``).

    Returns:
        ``(images, metas, extras)``: images stacked into one tensor when they share a shape
        (a list otherwise); the metadata maps as a list; the extras collated by torch's
        ``default_collate`` (``extras["label"]`` becomes a tensor) when they share their
        keys and types, a list of maps otherwise.
    """
    images = [s[0] for s in samples]
    metas = [s[1] for s in samples]
    extras = [s[2] for s in samples]
    if all(isinstance(i, torch.Tensor) for i in images) and len({i.shape for i in images}) == 1:
        batch_images: Any = torch.stack(images)
    elif all(isinstance(i, np.ndarray) for i in images) and len({i.shape for i in images}) == 1:
        batch_images = torch.from_numpy(np.stack(images))
    else:
        batch_images = images
    try:
        batch_extras = default_collate(extras)
    except (TypeError, RuntimeError, KeyError):
        batch_extras = extras
    return batch_images, metas, batch_extras
