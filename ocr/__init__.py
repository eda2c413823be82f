"""The OCR consumer of the cache: datasets, transforms, DBNet, training and evaluation.

Entry points: ``ocr-train`` and ``ocr-eval`` (``ocr.cli``), driven by ``configs/dbnet.yaml``.
"""

from lmdb_cache import open_cache

__all__ = ["open_cache"]
