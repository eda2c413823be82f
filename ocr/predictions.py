"""Detections written as annotations (so they load back with ``load_annotations``) and drawn
over the images (``ocr-eval --predictions`` and ``--draw``).

Detections live in the upright frame; the annotation format is in the raw file frame (before
EXIF orientation), so writing maps each polygon back through the inverse of the orientation's
matrix (``lmdb_cache.geometry``). Drawing maps the upright frame onto the pixels the dataset
serves (capped or not) with ``upright_to_pixels``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lmdb_cache.draw import draw_polygons
from lmdb_cache.geometry import orientation_matrix, transform_points, upright_to_pixels

from .engine import ImageTruth
from .postprocess import Detection

# Ground truth in green (don't-care words dashed), detections in red.
TRUTH_COLOUR = (0, 200, 0)
DETECTION_COLOUR = (255, 0, 0)


def predictions_to_annotations(
    predictions: dict[str, list[Detection]], truths: dict[str, ImageTruth]
) -> dict[str, Any]:
    """The annotation JSON document (``ocr.data.annotations``) of the detections: raw-frame
    points rounded to 0.01 px, and each word's ``score``.

    Raises:
        KeyError: an image of ``predictions`` has no entry in ``truths``.
    """
    images: dict[str, Any] = {}
    for name in sorted(predictions):
        truth = truths[name]
        to_raw = np.linalg.inv(orientation_matrix(truth.orientation, *truth.raw_size))
        images[name] = {
            "words": {
                f"{i:04d}": {
                    "points": np.round(transform_points(to_raw, d.polygon), 2).tolist(),
                    "score": round(float(d.score), 4),
                }
                for i, d in enumerate(predictions[name])
            }
        }
    return {"images": images}


def draw_file_name(key: str) -> str:
    """``sub/a.jpg`` -> ``sub/a.jpg.png``: the key's folders kept, never outside the folder."""
    parts = [p for p in key.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) + ".png"


def draw_predictions(
    folder: str | os.PathLike[str],
    dataset: Any,
    predictions: dict[str, list[Detection]],
    truths: dict[str, ImageTruth],
    width: int = 2,
) -> int:
    """Write one PNG per image into ``folder``: the pixels the dataset serves (before the
    transform), ground truth in green (don't-care dashed) and detections in red.

    Args:
        folder: Created if needed; ``<key>.png`` inside (the key's folders kept).
        dataset: The ``OCRDataset`` that was evaluated (its source gives the pixels).

    Returns:
        The number of images written.
    """
    out = Path(folder)
    for name in sorted(predictions):
        loaded = dataset.source.load(name)
        to_pixels = upright_to_pixels(loaded.frame)
        truth = truths[name]
        kept = [
            p for p, ignore in zip(truth.gt_polygons, truth.gt_ignore, strict=True) if not ignore
        ]
        ignored = [
            p for p, ignore in zip(truth.gt_polygons, truth.gt_ignore, strict=True) if ignore
        ]
        image = draw_polygons(
            np.asarray(loaded.pixels), _moved(to_pixels, kept), TRUTH_COLOUR, width
        )
        image = draw_polygons(image, _moved(to_pixels, ignored), TRUTH_COLOUR, width, dashed=True)
        detected = _moved(to_pixels, [d.polygon for d in predictions[name]])
        image = draw_polygons(image, detected, DETECTION_COLOUR, width)
        path = out / draw_file_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="PNG")
    return len(predictions)


def _moved(matrix: np.ndarray, polygons: list[np.ndarray]) -> list[np.ndarray]:
    return [transform_points(matrix, p) for p in polygons]
