"""The OCR dataset: one class, three image sources chosen by config, each an ``ImageSource``.

* disk: decode each image on every read (``lmdb_cache.images.decode_file``);
* preload: decode every image once at start-up into a dict (the old approach, a baseline);
* cache: read the decoded pixels from an LMDB cache built by ``build-cache``.

Every source yields the same upright RGB uint8 image for a key, because all three apply the
same normalization (``lmdb_cache.images``) with the same ``max_side`` and ``resample``. A cache
is accepted only if its settings reproduce that image: the same resampling filter, and a cap
equal to the dataset's ``max_side`` (or no cap at all, in which case the dataset applies the
cap itself exactly as ``build-cache`` would). It is also refused when annotated source images
changed since it was built (size or mtime, see ``lmdb_cache.changed_sources``), since it would serve
their old pixels; ``cache_stale: warn`` serves them with one warning instead.
"""

from __future__ import annotations

import logging
import os
import shlex
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from lmdb_cache import (
    KeyList,
    MissingImageError,
    SettingsMismatchError,
    StaleCacheError,
    changed_sources,
    open_cache,
)
from lmdb_cache.geometry import upright_to_pixels
from lmdb_cache.images import cap_pixels, decode_file

from .collate import collate, empty_batch
from .digest import content_checksum
from .geometry import (
    orientation_matrix,
    polygons_in_upright_frame,
    upright_size,
)
from .sample import TARGET_DTYPES, TARGET_NAMES, Batch, DBNetMaps, Sample
from .table import AnnotationTable

log = logging.getLogger(__name__)


@dataclass
class LoadedImage:
    """An upright image from any source, with what is needed to move raw polygons onto it
    (the frames and matrices of ``lmdb_cache.geometry``)."""

    pixels: np.ndarray
    raw_width: int
    raw_height: int
    orientation: int

    @property
    def frame(self) -> dict[str, int]:
        """The fields ``lmdb_cache.geometry`` reads, as a record's metadata has them."""
        return {
            "orientation": self.orientation,
            "raw_width": self.raw_width,
            "raw_height": self.raw_height,
            "width": int(self.pixels.shape[1]),
            "height": int(self.pixels.shape[0]),
        }


# A cache that cannot reproduce the configured pixels (the rule is the cache's own:
# ``CacheReader.check_settings``).
CacheSettingsError = SettingsMismatchError


class ImageSource(Protocol):
    """Where a dataset's images come from: all the dataset asks of a source.

    A source is pickled into each DataLoader worker (fork, spawn or forkserver) with the
    dataset, and serves the same pixels there.
    """

    @property
    def name(self) -> str:
        """``disk``, ``preload`` or ``cache``, as a run reports its sources."""
        ...

    def check(self, keys: Sequence[str]) -> None:
        """The start-up checks that the source can serve ``keys`` (the annotated images) as
        configured; a source without any does nothing.

        Raises:
            MissingImageError: an image the source does not hold (and no fallback).
            StaleCacheError: sources changed since the cache was built.
        """
        ...

    def load(self, key: str) -> LoadedImage:
        """The upright image of ``key``, capped as configured.

        Raises:
            MissingImageError: ``key`` is not in the source (and no fallback).
        """
        ...

    def prefetch(self, keys: Sequence[str]) -> None:
        """Told the keys of a batch before they are loaded; a source that gains nothing from
        it does nothing."""
        ...

    def close(self) -> None:
        """Let go of what the source holds open (a cache's LMDB environment) once a dataset
        refuses it: LMDB will not open a store twice in one process, and the next step is
        often to rebuild that store in this same process (``build-cache``)."""
        ...


class DiskSource:
    """Decodes from the image folder on every read."""

    name = "disk"

    def __init__(self, root: str | os.PathLike[str], max_side: int | None, resample: str) -> None:
        self.root = Path(root)
        self.max_side = max_side
        self.resample = resample

    def check(self, keys: Sequence[str]) -> None:
        """Nothing to check: a missing file is an error when it is read."""

    def load(self, key: str) -> LoadedImage:
        d = decode_file(self.root / key, max_side=self.max_side, resample=self.resample)
        return LoadedImage(d.pixels, d.raw_width, d.raw_height, d.orientation)

    def close(self) -> None:
        """Nothing is held open."""

    def prefetch(self, keys: Sequence[str]) -> None:
        """Nothing to gain."""


class PreloadSource:
    """Decodes every image once, in this process, and keeps them in a dict."""

    name = "preload"

    def __init__(self, disk: DiskSource, keys: Sequence[str]) -> None:
        self.images = {key: disk.load(key) for key in keys}

    def check(self, keys: Sequence[str]) -> None:
        """Nothing to check: every image was decoded when the source was made."""

    def load(self, key: str) -> LoadedImage:
        return self.images[key]

    def close(self) -> None:
        """Nothing is held open."""

    def prefetch(self, keys: Sequence[str]) -> None:
        """Nothing to gain."""


class CacheSource:
    """Reads decoded pixels from an LMDB cache of ``image_path``, opened lazily in each worker
    process.

    Args:
        path: The ``.lmdb`` built by ``build-cache``.
        max_side: The dataset's cap; the cache must reproduce it (``check_settings``).
        resample: The dataset's filter, likewise.
        fallback: Where an image missing from the cache is read from, with one warning; None:
            a missing image is an error (``cache_fallback: error``).
        image_path: The folder the cache stands for: freshness is checked against it.
        stale: ``"error"`` or ``"warn"``: what ``check`` does when annotated sources changed
            since the cache was built (``cache_stale``).
        readahead: False for a cache larger than the page cache: no read-around on faults,
            and each batch named to the kernel first (``cache_readahead``, docs/sizing.md).

    Raises:
        CacheSettingsError: the cache cannot reproduce the configured pixels.
    """

    name = "cache"

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_side: int | None,
        resample: str,
        fallback: DiskSource | None,
        *,
        image_path: str | os.PathLike[str],
        stale: str = "error",
        readahead: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.reader = open_cache(self.path, readahead=readahead)
        self.max_side = max_side
        self.resample = resample
        self.fallback = fallback
        self.image_path = image_path
        self.stale = stale
        self._warned = False
        self.reader.check_settings(max_side, resample)

    def check(self, keys: Sequence[str]) -> None:
        """The start-up checks: the folder it was built from, missing keys, changed sources.

        Raises:
            MissingImageError: an annotated image is not in the cache, and no fallback.
            StaleCacheError: annotated sources changed since the cache was built, and
                ``stale`` is ``"error"``.
        """
        built_from = self.reader.source_root
        if built_from and built_from != os.path.realpath(self.image_path):
            # Often a stale override (an image_cache left from another run); moved data
            # is fine, so this warns and the key and freshness checks below decide.
            log.warning(
                "cache '%s' was built from '%s', the dataset's image_path is '%s'",
                self.path,
                built_from,
                self.image_path,
            )
        missing = self.check_keys(keys)
        if missing and self.fallback is None:
            raise MissingImageError(missing[0], self.path)
        if missing:
            log.warning(
                "%d annotated image(s) not in cache '%s' (first: %r); read from disk",
                len(missing),
                self.path,
                missing[0],
            )
        try:
            self.check_fresh(self.image_path, keys)
        except StaleCacheError as e:
            if self.stale == "error":
                raise
            log.warning("%s", e)

    def close(self) -> None:
        self.reader.close()

    def prefetch(self, keys: Sequence[str]) -> None:
        if not self.reader.readahead:
            self.reader.prefetch(list(keys))

    def check_keys(self, keys: Sequence[str]) -> list[str]:
        return [key for key in keys if key not in self.reader]

    def check_fresh(self, image_path: str | os.PathLike[str], keys: Sequence[str]) -> None:
        """Refuse a cache whose sources changed since it was built (``lmdb_cache.changed_sources``).

        Raises:
            StaleCacheError: naming the changed keys and the command that updates the cache.
        """
        changed = changed_sources(self.reader, image_path, keys)
        if changed:
            raise StaleCacheError(self.path, changed, self.update_command(image_path))

    def update_command(self, image_path: str | os.PathLike[str]) -> str:
        """The ``build-cache`` line that brings this cache up to date from ``image_path``.

        No --max-side or --resample: an update keeps the store's own.
        """
        return f"build-cache {shlex.quote(os.fspath(image_path))} -o {shlex.quote(self.path)}"

    def load(self, key: str) -> LoadedImage:
        try:
            record = self.reader.view(key)
        except MissingImageError:
            if self.fallback is None:
                raise
            if not self._warned:
                log.warning("image %r is not in cache '%s'; reading it from disk", key, self.path)
                self._warned = True
            return self.fallback.load(key)
        meta = record.meta
        # The transforms never write to their input (Pillow copies it), so the zero-copy view
        # is handed on as it is: the one copy a sample pays is the transform's own. A
        # full-size cache is capped here, exactly as build-cache would (check_settings).
        pixels = cap_pixels(record.image, self.max_side, self.resample)
        return LoadedImage(pixels, meta["raw_width"], meta["raw_height"], meta["orientation"])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed that does not depend on which worker draws the sample."""
    return zlib.crc32(f"{seed}:{epoch}:{index}".encode())


class OCRDataset(Dataset):
    """Images and text polygons, transformed, with DBNet targets when asked.

    Args:
        image_path: Folder of images; annotation file names are relative to it.
        annotation_path: Annotation JSON (see ``ocr.data.annotations``).
        transform: A transform from ``ocr.data.transforms``: called as
            ``transform(image, polygons, rng, out=None)`` with the upright HWC uint8 image
            and a ``PolygonSet`` in its frame, returning a ``TransformResult``. One with an
            int ``size`` must write its ``size x size`` image into ``out`` when given (the
            batch path, ``__getitems__``); one without is called per sample and collated.
        image_cache: Path of an LMDB cache built from ``image_path``; None reads from disk.
        preload_images: Decode every image at start-up (ignored when ``image_cache`` is set).
        cache_fallback: ``"error"`` (default) or ``"disk"``: what to do for an image that is
            not in the cache.
        cache_stale: ``"error"`` (default) or ``"warn"``: what to do when annotated source
            images in ``image_path`` differ (size or mtime) from the ones that were cached.
            ``"warn"`` logs one warning and serves the cached (old) pixels.
        cache_readahead: False for a cache larger than the machine's page cache: no read-around
            on page faults, and each batch named to the kernel before it is read (5x fewer
            device bytes past RAM, docs/sizing.md).
        max_side: Longest-side cap applied to every source before the transform.
        resample: Filter of that cap.
        targets: ``DBNetTargets`` (or a callable with its signature), or None for samples
            without maps.
        seed: Base seed of the random transforms; a sample's randomness depends only on
            (seed, epoch, index), so any number of workers gives the same batches.

    Attributes:
        checksums: Give each sample its ``checksum`` (``ocr.data.digest.content_checksum``),
            for the step records' ``data`` digest. Off by default: about 1.2 ms per
            640-pixel training sample with its maps (3.7 -> 4.9 ms a sample in
            ``tools/bench_loader.py --split train``, docs/benchmarks.md).
        source: Where the images come from: an ``ImageSource`` (``DiskSource``,
            ``PreloadSource`` or ``CacheSource``), the only way the dataset reads them.
        table: The annotations: every image's polygons and don't-care flags as flat
            arrays (``ocr.data.table.AnnotationTable``), all the dataset keeps of the file.

    Raises:
        ValueError: a bad option value.
        MissingImageError: an annotated image is not in the cache (``cache_fallback: error``).
        StaleCacheError: annotated sources changed since the cache was built
            (``cache_stale: error``).
        CacheSettingsError: the cache cannot reproduce the configured pixels.
    """

    def __init__(
        self,
        image_path: str | os.PathLike[str],
        annotation_path: str | os.PathLike[str],
        transform: Any,
        image_cache: str | os.PathLike[str] | None = None,
        preload_images: bool = False,
        cache_fallback: str = "error",
        max_side: int | None = None,
        resample: str = "bilinear",
        targets: Any = None,
        seed: int = 0,
        cache_stale: str = "error",
        cache_readahead: bool = True,
    ) -> None:
        if cache_fallback not in ("error", "disk"):
            raise ValueError(f"cache_fallback must be 'error' or 'disk', got {cache_fallback!r}")
        if cache_stale not in ("error", "warn"):
            raise ValueError(f"cache_stale must be 'error' or 'warn', got {cache_stale!r}")
        target_size = getattr(transform, "size", None)
        if max_side is not None and target_size is not None and max_side < target_size:
            raise ValueError(
                f"max_side {max_side} is below the transform size {target_size}: images would "
                "be upscaled after being downscaled; use max_side >= the transform size"
            )
        # Flat arrays, no object per image: fork workers share their pages (ocr.data.table).
        self._set_fields(AnnotationTable.from_file(annotation_path), transform, targets, seed)
        disk = DiskSource(image_path, max_side, resample)
        self.source: ImageSource
        if image_cache is not None:
            fallback = disk if cache_fallback == "disk" else None
            self.source = CacheSource(
                image_cache,
                max_side,
                resample,
                fallback,
                image_path=image_path,
                stale=cache_stale,
                readahead=cache_readahead,
            )
        elif preload_images:
            self.source = PreloadSource(disk, self.keys)
        else:
            self.source = disk
        try:
            self.source.check(self.keys)
        except BaseException:
            self.source.close()  # see ImageSource.close
            raise

    @classmethod
    def from_source(cls, table: AnnotationTable, source: ImageSource, transform: Any) -> OCRDataset:
        """A dataset of ``table``'s images read from ``source``, which the caller made and
        checked (``ocr-predict``: images from files, lists or a cache, no annotation file).
        Its samples carry no targets; their seed is ``sample_seed(0, 0, index)``."""
        dataset = cls.__new__(cls)
        dataset._set_fields(table, transform, None, 0)
        dataset.source = source
        return dataset

    def _set_fields(self, table: AnnotationTable, transform: Any, targets: Any, seed: int) -> None:
        self.table = table
        self.transform = transform
        self.targets = targets
        self.seed = seed
        self.checksums = False
        self.epoch = 0

    @property
    def keys(self) -> KeyList:
        """The image keys, in annotation file order (``keys[i]`` is sample ``i``'s)."""
        return self.table.keys

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> Sample:
        """One sample, its image and maps in new arrays."""
        return self._sample(index, None, None)

    def __getitems__(self, indices: list[int]) -> Batch | list[Sample]:
        """A whole batch, each sample's image and maps written straight into its slot of the
        batch tensors (shared memory in a DataLoader worker, pinned with CUDA).

        Falls back to a list of samples (for ``collate``) for a transform without a fixed
        ``size``.
        """
        size = getattr(self.transform, "size", None)
        if not isinstance(size, int) or not indices:
            return [self[i] for i in indices]
        n = len(indices)
        self.source.prefetch([self.keys[i] for i in indices])
        image = empty_batch((n, size, size, 3), torch.uint8)
        maps = None
        if self.targets is not None:
            maps = DBNetMaps(
                *(
                    empty_batch((n, size, size), _TORCH_DTYPES[TARGET_DTYPES[name]])
                    for name in TARGET_NAMES
                )
            )
        samples = []
        for slot, index in enumerate(indices):
            slot_maps = None
            if maps is not None:
                slot_maps = DBNetMaps(*(m[slot].numpy() for m in maps.values()))
            samples.append(self._sample(index, image[slot].numpy(), slot_maps))
        return collate(samples, image=image, targets=maps)

    def _sample(
        self, index: int, out_image: np.ndarray | None, out_maps: DBNetMaps | None
    ) -> Sample:
        key = self.keys[index]
        loaded = self.source.load(key)
        polygons = self.table.polygons(index)  # read-only views: moved below, never written
        frame = loaded.frame
        to_upright = orientation_matrix(loaded.orientation, loaded.raw_width, loaded.raw_height)
        if polygons_in_upright_frame(
            polygons, loaded.orientation, loaded.raw_width, loaded.raw_height
        ):
            to_upright = np.eye(3)
        scale = upright_to_pixels(frame)
        seed = sample_seed(self.seed, self.epoch, index)
        rng = np.random.default_rng(seed)
        result = self.transform(
            loaded.pixels, polygons.transformed(scale @ to_upright), rng, out=out_image
        )
        upright_to_sample = result.matrix @ scale
        dont_care = self.table.dont_care(index)
        sample = Sample(
            image=result.image,
            polygons=result.polygons.astype(np.float32),
            ignore=~np.asarray(result.valid, dtype=bool) | dont_care,
            gt_polygons=polygons.transformed(to_upright),
            gt_ignore=dont_care.copy(),  # a view of the table's flags
            inverse_matrix=np.linalg.inv(upright_to_sample).astype(np.float64),
            filename=key,
            raw_size=(loaded.raw_width, loaded.raw_height),
            orientation=loaded.orientation,
            upright_size=upright_size(loaded.orientation, loaded.raw_width, loaded.raw_height),
            seed=seed,
        )
        if self.targets is not None:
            sample.targets = self.targets(
                result.image.shape[:2], sample.polygons, sample.ignore, out=out_maps
            )
        if self.checksums:
            sample.checksum = content_checksum(sample)
        return sample


_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.float32): torch.float32}
