"""A persistent, memory-mapped cache of decoded images in LMDB.

Build one from a folder with ``build-cache SRC`` (or :func:`build_cache`), or write records
yourself with :class:`CacheWriter`; read it with :func:`open_cache`, check it with
``validate-cache`` (or :func:`validate_cache`). Coordinates: :mod:`lmdb_cache.geometry`;
a PyTorch dataset: :mod:`lmdb_cache.torch` (the only module that imports torch).
"""

__version__ = "0.1.0"

from .build import build_cache  # noqa: E402
from .copy import CopyResult, copy_cache  # noqa: E402
from .errors import (  # noqa: E402
    BuildLockedError,
    CacheError,
    CacheNotFoundError,
    CorruptRecordError,
    DiskFullError,
    FormatVersionError,
    ImageDecodeError,
    MissingImageError,
    NotACacheError,
    SettingsMismatchError,
    StaleCacheError,
    StoreDamagedError,
    TruncatedStoreError,
)
from .images import DecodedImage, decode_file  # noqa: E402
from .reader import CacheReader, open_cache  # noqa: E402
from .records import Record  # noqa: E402
from .schema import FORMAT_VERSION  # noqa: E402
from .validate import ValidationReport, validate_cache  # noqa: E402
from .writer import BuildResult, CacheWriter  # noqa: E402

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
    "FormatVersionError",
    "ImageDecodeError",
    "MissingImageError",
    "NotACacheError",
    "Record",
    "SettingsMismatchError",
    "StaleCacheError",
    "StoreDamagedError",
    "TruncatedStoreError",
    "ValidationReport",
    "build_cache",
    "copy_cache",
    "decode_file",
    "open_cache",
    "validate_cache",
    "__version__",
]
