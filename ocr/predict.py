"""``ocr-predict``: a checkpoint's detections on images that have no labels, read from files,
folders, lists of paths or a cache, written in the annotation format and drawn.

The images go through what ``ocr-eval`` puts them through: the checkpoint config's
``datasets.val_dataset`` (its ``max_side``, ``resample`` and transform), its normalization,
model and post-processing, in batches of ``dataloader.batch_size``. Detections come out in
the upright frame and are written in the raw file frame (``ocr.predictions``), so the
predictions file loads with ``load_annotations`` against the folder the images came from.

Keys (the names in the predictions file, and of the drawings):

* an image in a folder given as INPUT: its path relative to that folder (``sub/a.jpg``), the
  key ``build-cache`` gives it;
* an image file given as INPUT: the path as given (``scans/a.jpg``);
* a line of a list file (``.txt``, ``.lst``, ``.list``; one path a line, ``#`` comments):
  the line's path, read relative to the list's folder.

With a cache (``--cache``) the pixels come from the store under the same keys: every key of
the store when no INPUT is given, or the keys of one folder's images, which must be in the
store and unchanged since it was built. The store must reproduce the checkpoint config's
``max_side`` and ``resample`` (``CacheReader.check_settings``); then its pixels, and so the
predictions, are those of the folder.

An input that cannot be used (no such path, an empty folder, a file that is not an image, a
key missing from the cache) is named in ``PredictResult.problems`` and skipped; the others are
predicted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from lmdb_cache import ImageDecodeError
from lmdb_cache.images import IMAGE_SUFFIXES, decode_file, scan_images

from .builders import build_normalizer, build_postprocess, setup_device
from .checkpoint import load_model_state
from .config import check_config
from .data.annotations import ImageAnnotation
from .data.collate import collate
from .data.dataset import CacheSource, LoadedImage, OCRDataset
from .data.loader import build_loader, build_transform
from .data.sample import Batch
from .data.table import AnnotationTable
from .distributed import DistInfo
from .engine import ImageTruth, autocast
from .models import build_model
from .postprocess import Detection
from .predictions import draw_predictions, predictions_to_annotations

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
_SPLIT = "val_dataset"


@dataclass
class Inputs:
    """The images the INPUT arguments name.

    Attributes:
        paths: Image file of each key, keys in the order found.
        folders: The folders given, each with the keys found in it.
        problems: One line per input that cannot be used, naming it and why.
    """

    paths: dict[str, str] = field(default_factory=dict)
    folders: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def gather_inputs(inputs: Sequence[str]) -> Inputs:
    """The images of ``inputs``: image files, folders (searched recursively for the suffixes
    ``build-cache`` takes) and list files. A key found twice for one file is kept once; a key
    that two different files give is a problem (the first is kept)."""
    found = Inputs()
    for item in inputs:
        if not os.path.lexists(item):
            found.problems.append(f"'{item}': no such file or folder")
        elif os.path.isdir(item):
            _add_folder(found, item)
        elif Path(item).suffix.lower() in LIST_SUFFIXES:
            _add_list(found, item)
        else:
            _add(found, _key(item), item, item)
    return found


def _key(path: str) -> str:
    return Path(os.path.normpath(path)).as_posix()


def _add(found: Inputs, key: str, path: str, origin: str) -> bool:
    known = found.paths.get(key)
    if known is None:
        found.paths[key] = path
        return True
    if os.path.realpath(known) != os.path.realpath(path):
        found.problems.append(
            f"'{path}' (from '{origin}') has the key '{key}' of '{known}'; skipped, as two "
            "images cannot share a key in the predictions file"
        )
    return False


def _add_folder(found: Inputs, folder: str) -> None:
    keys = scan_images(folder)
    if not keys:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        found.problems.append(f"'{folder}': no images in this folder (looked for {suffixes})")
        return
    found.folders[folder] = [k for k in keys if _add(found, k, os.path.join(folder, k), folder)]


def _add_list(found: Inputs, list_file: str) -> None:
    try:
        text = Path(list_file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        found.problems.append(f"'{list_file}': cannot read this list of paths ({reason})")
        return
    base = os.path.dirname(list_file)
    entries = [line.strip() for line in text.splitlines()]
    entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        found.problems.append(f"'{list_file}': the list names no image (one path a line)")
    for entry in entries:
        _add(found, _key(entry), os.path.join(base, entry), list_file)


class FileSource:
    """Decodes each image from its own file (any folder), as the disk source does."""

    name = "disk"

    def __init__(self, paths: dict[str, str], max_side: int | None, resample: str) -> None:
        self.paths = paths
        self.max_side = max_side
        self.resample = resample

    def check(self, keys: Sequence[str]) -> None:
        """Nothing to check: a file that is no image is reported when it is read."""

    def load(self, key: str) -> LoadedImage:
        d = decode_file(self.paths[key], max_side=self.max_side, resample=self.resample)
        return LoadedImage(d.pixels, d.raw_width, d.raw_height, d.orientation)

    def prefetch(self, keys: Sequence[str]) -> None:
        """Nothing to gain."""

    def close(self) -> None:
        """Nothing is held open."""


class _Skipping(Dataset):
    """The dataset's batches with the images that failed to load taken out: each item is
    ``(batch or None, [(key, message), ...])``, the message naming the file."""

    def __init__(self, dataset: OCRDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> tuple[Batch | None, list[tuple[str, str]]]:
        try:
            return collate(self.dataset.__getitems__(indices)), []
        except ImageDecodeError:
            pass  # rare: the batch again, one image at a time
        samples, failed = [], []
        for index in indices:
            try:
                samples.append(self.dataset[index])
            except ImageDecodeError as e:
                failed.append((self.dataset.keys[index], str(e)))
        return (collate(samples) if samples else None), failed


def _as_is(item: Any) -> Any:
    return item


@dataclass
class PredictResult:
    """What ``predict_images`` did.

    Attributes:
        document: The annotation JSON document of the detections (raw file frame, scores).
        problems: One line per input skipped, naming it and why.
        images: Images predicted.
        wall_s: Seconds from the first batch asked for to the last detection.
    """

    document: dict[str, Any]
    problems: list[str]
    images: int
    wall_s: float


def predict_images(
    config: dict[str, Any],
    state: dict[str, Any],
    checkpoint: str,
    inputs: Sequence[str],
    *,
    cache: str | None = None,
    draw_dir: str | None = None,
    progress: bool = True,
) -> PredictResult:
    """Detect text in the images ``inputs`` name (or in every image of ``cache``).

    Args:
        config: The checkpoint's config (with any overrides).
        state: The checkpoint, read by ``load_checkpoint``.
        checkpoint: Its path, for messages.
        inputs: Image files, folders and list files; with ``cache``, none or one folder.
        cache: A store built by ``build-cache`` to read the pixels from.
        draw_dir: Also write one PNG per image there: the upright image (capped as the
            config says) with the detections in red.
        progress: Show a progress bar.

    Raises:
        ValueError: ``cache`` with inputs other than one folder; no image to predict.
        CacheError: the store cannot reproduce the config's pixels, or is damaged or stale.
    """
    config = check_config(config)
    found = _inputs_for(inputs, cache)
    problems = list(found.problems)
    dataset_cfg = config["datasets"][_SPLIT]
    max_side, resample = dataset_cfg["max_side"], dataset_cfg["resample"]
    if cache is None:
        source: Any = FileSource(found.paths, max_side, resample)
        keys = sorted(found.paths)
    else:
        source, keys = _cache_source(cache, found, max_side, resample, problems)
    if not keys:
        raise ValueError(_nothing_to_predict(inputs, cache, problems))
    transform = build_transform(
        dataset_cfg["transform"], resample, key=f"datasets.{_SPLIT}.transform"
    )
    table = AnnotationTable.from_annotations({k: ImageAnnotation(k) for k in keys})
    dataset = OCRDataset.from_source(table, source, transform)
    predictions, truths, wall_s = _run_model(config, state, checkpoint, dataset, problems, progress)
    if draw_dir is not None:
        draw_predictions(draw_dir, dataset, predictions, truths)
    document = predictions_to_annotations(predictions, truths)
    return PredictResult(document, problems, len(predictions), wall_s)


def check_inputs(inputs: Sequence[str], cache: str | None) -> None:
    """Some inputs, or a cache; with a cache, no input (every image in it) or one folder
    (its images).

    Raises:
        ValueError: no input and no cache, or other inputs beside a cache.
    """
    if not inputs and cache is None:
        raise ValueError("nothing to predict: give image files, folders or list files, or --cache")
    if cache is not None and (len(inputs) > 1 or (inputs and not os.path.isdir(inputs[0]))):
        raise ValueError(
            f"--cache reads the images of the folder '{cache}' was built from: give that "
            "folder as the only INPUT, or no INPUT for every image in the store"
        )


def _inputs_for(inputs: Sequence[str], cache: str | None) -> Inputs:
    check_inputs(inputs, cache)
    return gather_inputs(inputs)


def _cache_source(
    cache: str, found: Inputs, max_side: int | None, resample: str, problems: list[str]
) -> tuple[CacheSource, list[str]]:
    """The store as a source, and the keys to predict: every key of the store, or those of
    the folder given that the store holds (each missing one a problem)."""
    folder = next(iter(found.folders), None)
    source = CacheSource(cache, max_side, resample, None, image_path=folder or "")
    try:
        if folder is None:
            keys = list(source.reader.keys())
            source.image_path = source.reader.source_root or ""
        else:
            wanted = found.folders[folder]
            missing = set(source.check_keys(wanted))
            problems.extend(
                f"'{os.path.join(folder, key)}': not in the cache '{cache}'; add it with "
                f"'{source.update_command(folder)}'"
                for key in wanted
                if key in missing
            )
            keys = [k for k in wanted if k not in missing]
        source.check(keys)  # settings were checked on opening; now freshness
    except BaseException:
        source.close()
        raise
    return source, sorted(keys)


def _nothing_to_predict(inputs: Sequence[str], cache: str | None, problems: list[str]) -> str:
    if problems:
        return "no image to predict:\n  " + "\n  ".join(problems)
    if cache is not None and not inputs:
        return f"no image to predict: the cache '{cache}' holds no image"
    return "no image to predict"


def _run_model(
    config: dict[str, Any],
    state: dict[str, Any],
    checkpoint: str,
    dataset: OCRDataset,
    problems: list[str],
    progress: bool,
) -> tuple[dict[str, list[Detection]], dict[str, ImageTruth], float]:
    """Every image's detections (upright frame) and frame, batch by batch; images that fail
    to load are added to ``problems``."""
    device = setup_device(config, DistInfo())  # one process: no process group
    model = build_model(dict(config["model"], weights=None)).to(device)  # weights: the ckpt's
    load_model_state(model, state, checkpoint)
    model.eval()
    normalizer = build_normalizer(config, device)
    post = build_postprocess(config)
    loader = build_loader(_Skipping(dataset), config["dataloader"], collate_fn=_as_is)
    predictions: dict[str, list[Detection]] = {}
    truths: dict[str, ImageTruth] = {}
    start = time.perf_counter()
    bar = tqdm(total=len(dataset), desc="predict", unit="img", disable=not progress, leave=False)
    with bar, torch.inference_mode():
        for batch, failed in loader:
            problems.extend(message for _, message in failed)
            bar.update(len(failed))
            if batch is None:
                continue
            with autocast(device, config["trainer"]["amp"]):
                prob = model(normalizer(batch.image))["prob"]
            found = post.batch(prob.float().cpu().numpy(), batch.inverse_matrix, batch.upright_size)
            for i, (key, detections) in enumerate(zip(batch.filename, found, strict=True)):
                predictions[key] = detections
                raw_w, raw_h = batch.raw_size[i]
                truths[key] = ImageTruth(batch.orientation[i], (int(raw_w), int(raw_h)), [], [])
            bar.update(len(batch))
    return predictions, truths, time.perf_counter() - start
