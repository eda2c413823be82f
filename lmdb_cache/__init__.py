"""A persistent, memory-mapped cache of decoded images in LMDB.

Build one from a folder with ``build-cache SRC`` (or :func:`build_cache`), or write records
yourself with :class:`CacheWriter`; read it with :func:`open_cache`, check it with
``validate-cache`` (or :func:`validate_cache`). Coordinates: :mod:`lmdb_cache.geometry`;
a PyTorch dataset: :mod:`lmdb_cache.torch` (the only module that imports torch).

The package is five rooms, each imported through the names below (never directly by users):
``format`` (the on-disk contract), ``read``, ``write``, ``check`` and ``cli``; the modules
beside them (errors, geometry, images, annotations, draw, reporting) serve all five.
"""

from ._version import __version__
from .check.copy import CopyResult, copy_cache
from .check.diff import StoreDiff, diff_caches
from .check.findings import Finding, ValidationReport
from .check.freshness import changed_sources
from .check.validate import validate_cache
from .errors import (
    BuildLockedError,
    CacheError,
    CacheNotFoundError,
    CorruptRecordError,
    DiskFullError,
    FormatVersionError,
    ImageDecodeError,
    KeysChangedError,
    MissingImageError,
    NotACacheError,
    SettingsMismatchError,
    StaleCacheError,
    StoreDamagedError,
    TruncatedStoreError,
)
from .format.keyindex import KeyList, KeyOrder
from .format.versions import FORMAT_VERSION
from .images import DecodedImage, decode_file
from .read.reader import CacheReader, open_cache
from .read.records import Record
from .write.build import build_cache
from .write.writer import BuildResult, CacheWriter

__all__ = [
    "FORMAT_VERSION",
    "BuildLockedError",
    "BuildResult",
    "CacheError",
    "CacheNotFoundError",
    "CacheReader",
    "CacheWriter",
    "CopyResult",
    "CorruptRecordError",
    "DecodedImage",
    "DiskFullError",
    "Finding",
    "FormatVersionError",
    "ImageDecodeError",
    "KeyList",
    "KeyOrder",
    "KeysChangedError",
    "MissingImageError",
    "NotACacheError",
    "Record",
    "SettingsMismatchError",
    "StaleCacheError",
    "StoreDamagedError",
    "StoreDiff",
    "TruncatedStoreError",
    "ValidationReport",
    "build_cache",
    "changed_sources",
    "copy_cache",
    "decode_file",
    "diff_caches",
    "open_cache",
    "validate_cache",
    "__version__",
]
