"""What a store says about itself, as of a reader's snapshot: the manifest, the settings, the
folder it was built from and its identity; the descriptive half of ``CacheReader``."""

from __future__ import annotations

from typing import Any

from ..format.settings import check_reproduces
from .handle import StoreHandle
from .identity import snapshot_identity


class StoreFacts:
    """The manifest's facts for a reader over ``_handle`` (set by it)."""

    _handle: StoreHandle
    path: str

    @property
    def info(self) -> dict[str, Any]:
        """The store's manifest as of this reader's snapshot: ``format``, ``format_version``,
        ``settings``, ``images``, ``failed``, ``total_bytes``, ``complete``, ``source_root``,
        ``created``, ``updated``, ``writer`` (``docs/format.md``). A copy: changing it changes
        nothing."""
        return dict(self._handle.snapshot().manifest)

    @property
    def manifest(self) -> dict[str, Any]:
        """The same as :attr:`info` (kept for code written against version 0.1)."""
        return self.info

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the pixels were made with: ``max_side``, ``resample``, Pillow version,
        ``codec`` and ``level``."""
        return dict(self._handle.snapshot().manifest["settings"])

    @property
    def source_root(self) -> str | None:
        """The folder the store was last built from (absolute), or None for a store written
        only from arrays."""
        return self._handle.snapshot().manifest.get("source_root") or None

    @property
    def identity(self) -> str:
        """The store's identity (32 hex digits) as of this snapshot, the same for equal settings
        and records whatever the build time, paths or order. O(1) from the manifest; O(n) once
        per snapshot for a store written before it kept a records digest (docs/format.md).

        Raises:
            CorruptRecordError, StoreDamagedError: that walk met a damaged record.
        """
        return snapshot_identity(self._handle.snapshot())

    def check_settings(self, max_side: int | None = None, resample: str = "bilinear") -> None:
        """Raise unless this store's pixels, capped by ``max_side`` with ``resample``, are
        exactly what decoding the sources with those settings gives.

        A full-size store reproduces any cap (apply ``lmdb_cache.images.cap_pixels`` with the
        same settings after reading); a capped store only its own cap and filter.

        Raises:
            SettingsMismatchError: naming both settings and the ``build-cache`` that fixes it.
        """
        check_reproduces(
            self._handle.snapshot().manifest["settings"], max_side, resample, self.path
        )
