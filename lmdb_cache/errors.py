"""Exceptions raised by the cache.

Every data problem derives from :class:`CacheError`; the precise subclasses also inherit the
builtin that fits, so ``except KeyError`` or ``except ValueError`` keep working for callers
that do not know this package.
"""

from __future__ import annotations

import os


class CacheError(Exception):
    """Base class for every problem with a cache store or its sources."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """The path given as a cache holds no cache store."""


class NotACacheError(CacheError, ValueError):
    """The path is an LMDB environment (or something else) but not one this package wrote."""


class FormatVersionError(CacheError, ValueError):
    """The store was written in a format version this code does not read."""

    def __init__(self, path: str, found: object, expected: int | tuple[int, ...]) -> None:
        self.path = path
        self.found = found
        self.expected = expected
        if isinstance(expected, tuple):
            names = [str(v) for v in expected]
            reads = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        else:
            reads = str(expected)
        super().__init__(
            f"cache '{path}' has format {found!r}, this version reads {reads}; "
            f"rebuild it with 'build-cache SRC -o {path} --rebuild'"
        )


class CorruptRecordError(CacheError, ValueError):
    """A record's metadata or pixels do not pass the schema or checksum checks."""

    def __init__(self, key: str, reason: str, path: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.path = path
        where = f" in cache '{path}'" if path else ""
        super().__init__(
            f"record {key!r}{where} is corrupt: {reason}; "
            "run 'validate-cache' to list every damaged record and rebuild the cache"
        )


class MissingImageError(CacheError, KeyError):
    """A key asked of a reader is not in the store."""

    def __init__(self, key: str, path: str) -> None:
        self.key = key
        self.path = path
        super().__init__(key)

    def __str__(self) -> str:
        return (
            f"image {self.key!r} is not in cache '{self.path}'; keys are POSIX paths relative to "
            "the folder given to build-cache (re-run build-cache if the image was added since)"
        )


class SettingsMismatchError(CacheError, ValueError):
    """An update was asked with settings that differ from those the store was built with."""


class ImageDecodeError(CacheError, ValueError):
    """A source file could not be decoded into an image."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot decode '{path}': {reason}")


class StoreDamagedError(CacheError, ValueError):
    """The store's files are damaged below the record level (LMDB pages, a short file)."""


class TruncatedStoreError(StoreDamagedError):
    """``data.mdb`` is shorter than its own meta page says it must be (an interrupted copy)."""

    def __init__(self, store: str, size: int, required: int, source: str = "SRC") -> None:
        self.path = store
        self.data_file = os.path.join(store, "data.mdb")
        self.size = size
        self.required = required
        super().__init__(
            f"'{self.data_file}' is {size} bytes but its LMDB meta page needs at least "
            f"{required} bytes: the file is truncated (an interrupted copy?) or its meta page "
            f"is damaged; copy the store again, or rebuild it with 'build-cache {source} -o "
            f"{store} --rebuild --max-side N' (N: the cap it was built with, or 'none'; a "
            "damaged store's own settings cannot be read)"
        )


class BuildLockedError(CacheError, RuntimeError):
    """Another ``build-cache`` is writing the same store."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"cache '{path}' is being written by {who} (build-cache); wait for it to finish "
            "or stop it, then run again"
        )


class StaleCacheError(CacheError, ValueError):
    """Source images changed after they were cached: the cache would serve old pixels."""

    def __init__(self, path: str, keys: list[str], command: str) -> None:
        self.path = path
        self.keys = list(keys)
        self.command = command
        shown = ", ".join(repr(k) for k in self.keys[:5])
        more = f" and {len(self.keys) - 5} more" if len(self.keys) > 5 else ""
        super().__init__(
            f"{len(self.keys)} source image(s) changed since cache '{path}' was built "
            f"({shown}{more}): it would serve their old pixels; update it with '{command}'"
        )


class KeysChangedError(CacheError, RuntimeError):
    """The store's keys changed under positions taken from an earlier state of it: a position
    would name another image."""

    def __init__(self, path: str, then: int, now: int) -> None:
        super().__init__(
            f"cache '{path}' holds other keys than when its positions were taken ({then} "
            f"keys then, {now} now), so position i names another image: make the dataset "
            "again (a new DataLoader), or give it its keys"
        )
        self.path = path


class DiskFullError(CacheError, OSError):
    """The device holding the store ran out of space while a build wrote it."""


def damaged(path: str, what: str, error: BaseException) -> StoreDamagedError:
    """The error for an LMDB failure inside a store (a damaged page)."""
    return StoreDamagedError(
        f"cache '{path}' is damaged: LMDB failed {what} ({type(error).__name__}: {error}); run "
        f"'validate-cache {path}' for the full list, and rebuild it with 'build-cache SRC -o "
        f"{path} --rebuild'"
    )


def key_type_error(key: object) -> TypeError:
    """The error for a key that is not a str (keys are relative POSIX paths)."""
    hint = "; for the record at a position use reader.record_at(i)" if isinstance(key, int) else ""
    return TypeError(f"cache keys are str (relative POSIX paths), got {type(key).__name__}{hint}")
