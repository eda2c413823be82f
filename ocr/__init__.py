"""The OCR training consumer of the cache: datasets, transforms, DBNet, training loop.

Grows with the next issues; for now it exposes the cache reader it is built on.
"""

from lmdb_cache import open_cache

__all__ = ["open_cache"]
