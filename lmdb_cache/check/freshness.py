"""Has a source image changed since it was cached? The cheap check, run at every start-up.

A record keeps the fingerprint of the file it was decoded from (``source_size``,
``source_mtime_ns``, ``source_sha256``). Comparing the first two with ``os.stat`` costs one
system call per image and reads no image bytes, so a consumer can afford it for every key each
time it starts. It is deliberately strict: a file whose bytes are unchanged but whose mtime
moved (a ``touch``, a copy without ``-p``) is reported too; ``build-cache`` then re-hashes it,
finds the same content, and only refreshes the fingerprint (no decode), which clears it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..errors import MissingImageError
from ..read.reader import CacheReader


def changed_sources(
    reader: CacheReader, root: str | os.PathLike[str], keys: Iterable[str]
) -> list[str]:
    """The keys whose source file differs in size or mtime from the one that was cached.

    Only keys that are in the cache and whose file ``root/key`` can be stat'ed are compared.
    Any other key is skipped, not reported: a key absent from the cache is the caller's
    concern (it has its own error), and a file that cannot be seen (a node that holds only
    the cache, a folder it may not list) leaves nothing to compare the cache with.

    Args:
        reader: An open cache.
        root: The folder the cache was built from (keys are paths relative to it).
        keys: The keys to check, e.g. the annotated images.

    Returns:
        The changed keys, in the order of ``keys``.

    Raises:
        CorruptRecordError: a record's metadata does not pass the schema (the same error a
            read of that image would raise).
    """
    base = os.fspath(root)
    if not os.path.isdir(base):
        return []  # a cache-only machine: spares one failing stat per key
    # This loop runs once per image at every start-up: locals, and a prefix instead of
    # os.path.join per key (keys are relative POSIX paths, which os.stat takes everywhere).
    prefix = os.path.join(base, "")
    stat, meta_of = os.stat, reader.meta_uncached
    changed = []
    for key in keys:
        try:
            # One lookup: ``key in reader`` first would read the same record twice.
            meta = meta_of(key)
        except MissingImageError:
            continue
        if "source_size" not in meta:  # written from an array: no file to compare with
            continue
        try:
            st = stat(prefix + key)
        except OSError:
            continue
        if st.st_size != meta["source_size"] or st.st_mtime_ns != meta["source_mtime_ns"]:
            changed.append(key)
    return changed
