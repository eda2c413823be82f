"""One writer's work on an open store: outcomes stored in add order, bounded commits, re-encoding
kept records, and the final commit.

:class:`WriteSession` is what a :class:`~.writer.CacheWriter` drives; ``build`` drives the
same session through its named methods to bring a store in line with a folder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ImageDecodeError
from ..format import codecs
from ..format.schema import display_key, encode_key
from ..format.settings import pixel_ceiling
from ..images import DecodedImage, cap_pixels, to_rgb_array
from ..reporting import Progress
from .commits import Batch, recode
from .decoding import decode_task, encode, pixel_meta
from .index import RecordIndex
from .outcomes import Decoded, Failed, Outcome, Unchanged
from .pipeline import DecodePipeline
from .results import BuildResult
from .store import WriteStore

# ``extra`` of a source decoded again by a build: the record keeps the extra it had.
KEEP_EXTRA: Any = object()


class WriteSession:
    """The store, index, pending batch and decoding pipeline of one writer.

    Args:
        store: The store written (the rebuild's new one for a rebuild).
        batch: Pending writes, with the index of what the store holds.
        pipeline: The decoding processes.
        settings: The writer's settings (``settings.choose_settings``).
        result: What the writer did, filled in as it goes.
        errors: ``"raise"`` or ``"record"`` (see ``CacheWriter``).
        limits: ``(bytes, images)`` after which a transaction is committed.
        progress: Told of each record stored.
    """

    def __init__(
        self,
        store: WriteStore,
        batch: Batch,
        pipeline: DecodePipeline,
        settings: dict[str, Any],
        result: BuildResult,
        *,
        errors: str,
        limits: tuple[int, int],
        progress: Progress,
    ) -> None:
        self.store = store
        self.batch = batch
        self.index: RecordIndex = batch.index
        self.pipeline = pipeline
        self.settings = settings
        self.result = result
        self._errors = errors
        self._limits = limits
        self._progress = progress

    # --- adding and removing ----------------------------------------------------------------

    def add_file(self, key: str, path: str, known_sha256: str | None, extra: Any) -> None:
        """Decode ``path`` into ``key`` (in a worker when there are any) unless its content
        hash is ``known_sha256``; ``extra`` :data:`KEEP_EXTRA` keeps the record's own."""
        args = (
            path,
            key,
            self.settings["max_side"],
            self.settings["resample"],
            known_sha256,
            self.settings["codec"],
            self.settings["level"],
            pixel_ceiling(self.settings),
        )
        for outcome, tag in self.pipeline.submit(decode_task, args, extra):
            self._store(outcome, tag)

    def add_array(self, key: str, image: Any, extra: Any) -> None:
        """Store ``image`` (see ``CacheWriter.add``) under ``key``, behind the files in flight.

        Raises:
            TypeError, ValueError: not an image array, or over the store's pixel ceiling.
        """
        pixels, mode = to_rgb_array(image)
        height, width = pixels.shape[:2]
        ceiling = pixel_ceiling(self.settings)
        if width * height > ceiling:
            raise ValueError(
                f"image {display_key(key)!r} is {width}x{height} = {width * height} pixels, over "
                f"the store's ceiling of {ceiling} (max_pixels)"
            )
        capped = cap_pixels(pixels, self.settings["max_side"], self.settings["resample"])
        if capped is pixels or np.shares_memory(capped, image):
            capped = capped.copy()  # the caller may change its array before the commit
        decoded = DecodedImage(np.ascontiguousarray(capped), width, height, 1, mode, None)
        stored, fields = encode(decoded.pixels, self.settings["codec"], self.settings["level"])
        outcome = Decoded(key, pixel_meta(decoded) | fields, stored)
        for ready, tag in self.pipeline.put(outcome, extra):
            self._store(ready, tag)

    def remove(self, key: str) -> bool:
        """Delete ``key``'s record (and any failure noted for it); whether there was one."""
        self.flush()  # an add of this key still in flight must not land afterwards
        self.batch.succeed(key)
        if key not in self.index:
            return False
        self.delete(encode_key(key))
        return True

    def delete(self, ekey: bytes) -> None:
        """Remove whatever is stored under an LMDB key (a record whose metadata may be bad)."""
        if self.batch.delete(ekey) is not None:
            self.result.removed += 1

    def fail(self, key: str, reason: str) -> None:
        """Note in the store that the source of ``key`` could not be stored, and why."""
        self.batch.fail(key, reason)

    def keep_failures(self, keys: set[bytes]) -> None:
        """Drop every noted failure whose (failures database) key is not in ``keys``."""
        self.batch.drop_failures(keep=keys)

    def pending_recodes(self, skip: set[str]) -> list[str]:
        """Keys (not in ``skip``) whose records are in another codec or level than the writer's."""
        return self.index.needing_recode(self.settings["codec"], self.settings["level"], skip)

    def recode_kept(self, skip: set[str] | None = None) -> None:
        """Encode again, from their stored pixels, the records whose codec or level is not the
        writer's (never by decoding a source again)."""
        codec, level = self.settings["codec"], self.settings["level"]
        for key in self.pending_recodes(skip or set()):
            meta = self.index.meta(key)
            assert meta is not None  # listed by the index just now
            recode(self.store, self.batch, key, meta, codec, level)
            self.result.recoded += 1
            self._progress.advance(1)
            self._maybe_commit()

    # --- ending -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Store every result still in flight."""
        for outcome, tag in self.pipeline.drain(0):
            self._store(outcome, tag)

    def finish(self) -> None:
        """Store what is in flight, encode kept records again if the codec changed, and commit
        with the manifest marked complete."""
        self.flush()
        self.recode_kept()
        self.batch.commit(final=True)
        self.result.failures = sorted((display_key(k), r) for k, r in self.batch.reasons.items())
        self.result.images = len(self.index)
        self.result.total_bytes = self.index.total_bytes

    # --- storing outcomes -------------------------------------------------------------------

    def _store(self, outcome: Outcome, extra: Any) -> None:
        key = outcome.key
        old = self.index.meta(key)
        if isinstance(outcome, Failed):
            if self._errors == "raise":
                raise ImageDecodeError(key, outcome.reason)
            self.batch.fail(key, outcome.reason)
            if old is not None:  # the source changed into something undecodable
                self.batch.delete(encode_key(key))
        elif isinstance(outcome, Unchanged):
            if old is None:
                raise RuntimeError(f"{key!r} was decoded as unchanged but holds no record")
            self._put(key, {**old, **outcome.fingerprint}, None)
            self.result.touched += 1
        else:
            meta, stored = outcome.meta, outcome.stored
            if extra is KEEP_EXTRA:
                extra = None if old is None else old.get("extra")
            if extra is not None:
                meta["extra"] = extra
            self._put(key, meta, stored.data if isinstance(stored, np.ndarray) else stored)
            if old is None:
                self.result.added += 1
            else:
                self.result.updated += 1
        self.batch.images += 1
        self._progress.advance(1)
        self._maybe_commit()

    def _put(self, key: str, meta: dict, data: Any) -> None:
        """Queue a record; ``data`` None: the stored pixels stay (only the metadata changed)."""
        codec, level = self.settings["codec"], self.settings["level"]
        if data is None and codecs.needs_recode(meta, codec, level):
            recode(self.store, self.batch, key, meta, codec, level)
            self.result.recoded += 1
        elif data is None:
            self.batch.put_meta(key, meta)
        else:
            self.batch.put(key, meta, data)
        self.batch.succeed(key)

    def _maybe_commit(self) -> None:
        if self.batch.bytes >= self._limits[0] or self.batch.images >= self._limits[1]:
            self.batch.commit()
