"""Step digests: order-independent sums that add up across ranks, and content checksums."""

from __future__ import annotations

import hashlib
import random

import numpy as np

from ocr.data import digest
from ocr.data.sample import DBNetMaps


class _Fed:
    def __init__(self, image, targets=None):
        self.image, self.targets = image, targets


def _independent(pairs):
    # The definition, written out: blake2b-64 of each pair, summed modulo 2^64.
    total = 0
    for key, seed in pairs:
        text = f"sample\x00{key}\x00{seed}".encode()
        total += int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
    return total % 2**64


def test_samples_digest_is_the_sum_of_the_pairs_in_any_order():
    pairs = [(f"img_{i}.jpg", 1000 + i) for i in range(20)]
    shuffled = random.Random(3).sample(pairs, len(pairs))
    totals = []
    for order in (pairs, shuffled):
        total = 0
        for key, seed in order:
            total = digest.add(total, digest.sample_hash(key, seed))
        totals.append(total)
    assert totals[0] == totals[1] == _independent(pairs)
    assert digest.to_hex(totals[0]) == f"{_independent(pairs):016x}"
    other = digest.add(0, digest.sample_hash("img_0.jpg", 999))
    assert other != digest.add(0, digest.sample_hash("img_0.jpg", 1000))


def test_limbs_of_each_rank_add_up_to_the_digest_of_the_union():
    rng = random.Random(1)
    parts = [rng.getrandbits(64) for _ in range(7)]
    summed = [sum(limbs) for limbs in zip(*(digest.to_limbs(p) for p in parts), strict=True)]
    assert digest.from_limbs(summed) == sum(parts) % 2**64


def test_content_checksum_changes_with_one_pixel_or_one_map_value():
    image = np.zeros((8, 8, 3), np.uint8)
    maps = DBNetMaps(
        *(np.zeros((8, 8), dtype) for dtype in (np.uint8, np.uint8, np.float32, np.uint8))
    )
    base = digest.content_checksum(_Fed(image, maps))
    assert base == digest.content_checksum(_Fed(image.copy(), maps))
    changed = image.copy()
    changed[7, 7, 2] = 1
    assert digest.content_checksum(_Fed(changed, maps)) != base
    maps.thresh_map[0, 0] = 0.5
    assert digest.content_checksum(_Fed(image, maps)) != base
    assert digest.content_checksum(_Fed(image)) >> 32 == base >> 32
