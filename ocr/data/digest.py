"""Digests of what a training step is fed, cheap enough to take at every step.

Two digests describe a step (or an epoch), each an order-independent sum modulo 2^64 of one
64-bit hash per sample, so it does not depend on which rank, worker or slot of the batch
took a sample, and the ranks' parts add up:

* ``samples``: the hash of each sample's (key, augmentation seed). No pixel is read: equal
  ``samples`` means the same images with the same random transforms.
* ``data``: the hash of each sample's (key, content checksum), the checksum taken over the
  bytes of its transformed image and DBNet maps where the sample was built (a DataLoader
  worker, ``content_checksum``). Equal ``data`` means the model was fed the same inputs; two
  runs with equal ``data`` and different losses differ in the compute alone.

The sums travel between ranks as four 16-bit limbs in int64 (``to_limbs``), so a plain
all-reduce adds them exactly.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

MASK = (1 << 64) - 1
LIMBS = 4


def _hash(*parts: Any) -> int:
    text = "\x00".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def sample_hash(key: str, seed: int | None) -> int:
    """The hash of one sample's key and augmentation seed."""
    return _hash("sample", key, seed)


def data_hash(key: str, checksum: int | None) -> int:
    """The hash of one sample's key and content checksum."""
    return _hash("data", key, checksum)


def _crc(arrays: Iterable[Any]) -> int:
    crc = 0
    for array in arrays:
        data = np.ascontiguousarray(array)
        crc = zlib.crc32(data.data, crc)
    return crc


def content_checksum(sample: Any) -> int:
    """64 bits over what the model is fed of ``sample``: a CRC-32 of its image's bytes and
    one of its DBNet maps' bytes (0 without maps). A few milliseconds per 640-pixel sample."""
    maps = sample.targets.values() if sample.targets is not None else ()
    return (_crc([sample.image]) << 32) | _crc(maps)


def add(total: int, value: int) -> int:
    """``total + value`` modulo 2^64."""
    return (total + value) & MASK


def to_hex(value: int) -> str:
    """A digest as the 16 hex digits the logs show."""
    return f"{value & MASK:016x}"


def to_limbs(value: int) -> list[int]:
    """A digest as four 16-bit numbers, low first (exact under an integer sum of ranks)."""
    return [(value >> (16 * i)) & 0xFFFF for i in range(LIMBS)]


def from_limbs(limbs: Iterable[int]) -> int:
    """The sum modulo 2^64 of digests whose limbs were added (``to_limbs``)."""
    return sum(int(limb) << (16 * i) for i, limb in enumerate(limbs)) & MASK
