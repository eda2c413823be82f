"""Format versions: which ones this code reads, and the one rule that says which a store needs.

A store records the lowest version that can read it, so a reader of an older version refuses
the store by its version instead of misreading it: 2 for raw pixels, 3 once any record is
compressed (each codec names its own, ``Codec.format_version``), 4 while any record has an
``extra`` map or was written from an array (no source fingerprint). See docs/format.md,
"Versioning rule".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import FormatVersionError, NotACacheError
from . import codecs

FORMAT_NAME = "lmdb-image-cache"
FORMAT_VERSION = 2
COMPRESSED_FORMAT_VERSION = 3
EXTENDED_FORMAT_VERSION = 4


def readable_versions() -> tuple[int, ...]:
    """The versions this code reads: 2, 4 and every registered codec's."""
    known = {codec.format_version for codec in codecs.registered()}
    return tuple(sorted({FORMAT_VERSION, EXTENDED_FORMAT_VERSION} | known))


READABLE_VERSIONS = readable_versions()


def required_version(codec_versions: Iterable[int], extended: bool) -> int:
    """The version a store needs: the highest of the versions of the codecs it holds or is
    being written with, and :data:`EXTENDED_FORMAT_VERSION` while it holds an extended record
    (an ``extra`` map, or no source fingerprint); at least :data:`FORMAT_VERSION`."""
    needed = set(codec_versions) | ({EXTENDED_FORMAT_VERSION} if extended else set())
    return max(needed, default=FORMAT_VERSION)


def check_format(manifest: Any, path: str) -> None:
    """Raise unless ``manifest`` names this package's format at the version this code reads.

    Raises:
        NotACacheError: the manifest is not this package's.
        FormatVersionError: another format version.
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise NotACacheError(
            f"'{path}' is an LMDB store but not an image cache (its manifest does not name "
            f"format {FORMAT_NAME!r}); build one with 'build-cache SRC -o {path}'"
        )
    readable = readable_versions()
    if manifest.get("format_version") not in readable:
        raise FormatVersionError(path, manifest.get("format_version"), readable)
