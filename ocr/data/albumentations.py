"""An Albumentations pipeline as a dataset transform (the ``[albumentations]`` extra).

``AlbumentationsTransform(pipeline, size=640)`` runs a user's Albumentations transforms on the
upright image, with every polygon point following as a keypoint, and returns what
``OCRDataset`` expects of a transform (``ocr.data.transforms``):

* the image: the pipeline's uint8 output, placed at the top-left of the zeroed ``size x size``
  slot (``out`` when given) when ``size`` is set (the pipeline must not return more than
  ``size`` pixels on a side: end it with ``A.LongestMaxSize`` or a crop), else as it is;
* the polygons: their points as the pipeline moved them, clipped to the output image;
* ``valid``: False for a polygon that lost more than half of its area outside the output
  image, or had no area to begin with (the rule of ``TrainTransform``), or lost a point;
* the matrix (input -> output frame), which Albumentations does not report: it is fitted by
  least squares to where the pipeline moved a 3 x 3 grid of probe points spanning the image
  and the polygon points. For an affine pipeline (flips, rotations by 90 degrees, crops,
  padding, resizes, ``A.Affine``, ``A.Rotate``, ``A.ShiftScaleRotate``, and every
  pixel-only transform) the fit is exact; evaluation maps predictions back with its inverse,
  so such a pipeline can serve a validation set. Any other (``A.Perspective``,
  ``A.ElasticTransform``, ``A.GridDistortion``...) has no such matrix: the call raises unless
  ``require_affine=False``, for a training set only, where the fit is an approximation.

Points travel with an id (a keypoint label), so the adapter knows which ones the pipeline
dropped (the remapping distortions, ``A.GridDistortion``, ``A.ElasticTransform``,
``A.OpticalDistortion``, ``A.PiecewiseAffine``, drop those that leave the image and move the
rest to whole pixels) or copied (a reflecting ``border_mode`` mirrors them into the border).
Copies are an error: the mirrored text in the border has no polygons. A dropped point is an
error while ``require_affine`` is set; otherwise it is placed by the fitted matrix, and its
polygon is invalid.

Coordinates: the dataset's polygons are in the pixel-corner frame (pixel ``i`` spans
``[i, i + 1]``). Albumentations' flips, rotations and warps treat a keypoint's integer
coordinates as pixel centers (a horizontal flip maps ``x`` to ``W - 1 - x``), so points enter
the pipeline shifted by -0.5 and leave it shifted back: those transforms then move polygons
exactly with the pixels. Its resizes scale keypoints from the origin (``x * s``) instead, so
after a resize by ``s`` the polygons sit ``0.5 * (1 - s)`` output pixels off the pixels
(upstream: albumentations-team/AlbumentationsX issue 529).

The input image is copied before the pipeline sees it: an Albumentations transform may write
into its input (``A.Lambda`` with an in-place function does), and the dataset's image may be
a read-only view into the cache or a preloaded image that is served again.

Randomness: each call draws from the ``rng`` the dataset gives it (a sample's randomness depends
only on the dataset's seed, epoch and index, however many workers run).

Importing this module sets ``NO_ALBUMENTATIONS_UPDATE=1`` unless it is already set, so that
importing Albumentations (in every DataLoader worker that starts a fresh interpreter) does not
query PyPI for a newer version.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .sample import PolygonSet
from .transforms import TransformResult, pad_to

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

try:
    import albumentations as A
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "ocr.data.albumentations needs Albumentations: "
        "pip install 'lmdb-image-cache[albumentations]'"
    ) from e

#: Largest distance (pixels) between where the pipeline put a point and where the fitted
#: matrix puts it, for the pipeline to count as affine (keypoints travel as float32).
AFFINE_TOLERANCE = 0.01

# Pixel-corner frame (the dataset's) -> pixel-center frame (Albumentations' keypoints).
_TO_CENTERS = -0.5


class AlbumentationsTransform:
    """A dataset transform that runs an Albumentations pipeline (see the module docstring).

    Args:
        pipeline: An Albumentations transform (``A.Compose`` or any single transform), or a
            sequence of them. It is wrapped in an ``A.Compose`` whose keypoint parameters are
            ``A.KeypointParams(format="xy", label_fields=["point_ids"],
            remove_invisible=False)``: the pipeline's own keypoint and bounding-box parameters
            are not used.
        size: The side of the square output the batch path writes into, or None for
            the pipeline's output size (samples are then collated one by one).
        require_affine: Raise when the pipeline moved the points in a way no affine matrix
            describes (the default, needed wherever the dataset is evaluated); False fits
            the closest one instead (training only).

    Raises:
        TypeError: ``pipeline`` is not an Albumentations transform or a sequence of them.
        ValueError: ``size`` is not a positive int or None.
    """

    def __init__(self, pipeline: Any, size: int | None = None, require_affine: bool = True) -> None:
        transforms = _transform_list(pipeline)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        with warnings.catch_warnings():
            # A pixel-only pipeline has no transform that moves keypoints; that is fine here.
            warnings.filterwarnings("ignore", message="Got processor for keypoints")
            self.pipeline = A.Compose(
                transforms,
                p=1.0,
                keypoint_params=A.KeypointParams(
                    format="xy", label_fields=["point_ids"], remove_invisible=False
                ),
            )
        self.size = size
        self.require_affine = require_affine

    def __repr__(self) -> str:
        return (
            f"AlbumentationsTransform(size={self.size}, require_affine={self.require_affine}, "
            f"pipeline={self.pipeline.transforms!r})"
        )

    def __call__(
        self,
        image: np.ndarray,
        polygons: PolygonSet,
        rng: np.random.Generator | None = None,
        out: np.ndarray | None = None,
    ) -> TransformResult:
        """Run the pipeline on ``image`` and ``polygons`` (the dataset's transform protocol).

        Raises:
            ValueError: the pipeline returned an image that is not uint8 ``(H, W, 3)`` or is
                larger than ``size``, duplicated points, or (while ``require_affine`` is set)
                dropped points or moved them non-affinely; ``out`` is given without a ``size``
                or does not match it.
        """
        rng = rng if rng is not None else np.random.default_rng()
        # Albumentations draws from these; the Python one is seeded from the same rng.
        self.pipeline.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        # Transforms never write to their input (a cached image is a read-only view, a
        # preloaded one is served again), and a pipeline may work in place (A.Lambda).
        image = image.copy()
        probes = _probe_grid(image.shape[1], image.shape[0])
        points = np.concatenate([probes, polygons.points.astype(np.float64)])
        data = self.pipeline(
            image=image, keypoints=points + _TO_CENTERS, point_ids=np.arange(len(points))
        )
        result = self._image(data["image"], out)
        moved, kept = self._moved_points(data, len(points))
        matrix = self._fit(points[kept], moved[kept])
        # A dropped point (require_affine off) gets the fitted map's estimate, and its polygon
        # is invalid: the pipeline did not say where it went.
        moved[~kept] = points[~kept] @ matrix[:2, :2].T + matrix[:2, 2]
        polygons_out = PolygonSet(moved[len(probes) :], polygons.offsets)
        out_h, out_w = data["image"].shape[:2]
        clipped = polygons_out.clipped(out_w, out_h)
        before, after = polygons_out.areas(), clipped.areas()
        valid = (before > 0) & (after >= 0.5 * before)
        if len(polygons):
            valid &= np.logical_and.reduceat(kept[len(probes) :], polygons.offsets[:-1])
        return TransformResult(result, clipped, matrix, valid)

    def _moved_points(self, data: dict[str, Any], count: int) -> tuple[np.ndarray, np.ndarray]:
        """Where the pipeline put each of ``count`` points (pixel-corner frame; rows of dropped
        points unset) and which ones it kept."""
        ids = np.asarray(data["point_ids"], dtype=np.int64).reshape(-1)
        found = np.asarray(data["keypoints"], dtype=np.float64).reshape(-1, 2) - _TO_CENTERS
        if len(np.unique(ids)) != len(ids):
            raise ValueError(
                f"the Albumentations pipeline returned {len(ids)} keypoints for {count}, some "
                "several times: a reflecting border_mode (A.Affine, A.Rotate, "
                "A.ShiftScaleRotate...) mirrors the text into the border without polygons; use "
                "border_mode=cv2.BORDER_CONSTANT"
            )
        kept = np.zeros(count, dtype=bool)
        kept[ids] = True
        if self.require_affine and not kept.all():
            raise ValueError(
                f"the Albumentations pipeline dropped {count - len(ids)} of {count} keypoints "
                "(A.GridDistortion, A.ElasticTransform, A.OpticalDistortion and "
                "A.PiecewiseAffine drop those that leave the image), so no matrix maps its "
                "samples back to the image (which evaluation needs); for a training-only "
                "pipeline set require_affine: false, for a validation set drop those transforms"
            )
        moved = np.full((count, 2), np.nan)
        moved[ids] = found
        return moved, kept

    def _image(self, image: Any, out: np.ndarray | None) -> np.ndarray:
        """The pipeline's image, checked, and placed into the ``size x size`` slot if set."""
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            found = (
                f"{image.dtype} {image.shape}"
                if isinstance(image, np.ndarray)
                else type(image).__name__
            )
            raise ValueError(
                f"the Albumentations pipeline returned a {found} image; the dataset needs uint8 "
                "(H, W, 3) RGB (normalization happens on the device): remove A.Normalize, "
                "A.ToFloat or A.ToTensorV2 from it"
            )
        if self.size is None:
            if out is not None:
                raise ValueError("out is given but the transform has no size; set size")
            return image
        height, width = image.shape[:2]
        if height > self.size or width > self.size:
            raise ValueError(
                f"the Albumentations pipeline returned a {width}x{height} image, larger than "
                f"the transform size {self.size}; end it with "
                f"A.LongestMaxSize(max_size={self.size}) or a crop of at most {self.size} "
                "pixels a side"
            )
        if out is not None and (out.shape != (self.size, self.size, 3) or out.dtype != np.uint8):
            raise ValueError(
                f"out must be a ({self.size}, {self.size}, 3) uint8 array, got "
                f"{out.shape} {out.dtype}"
            )
        return pad_to(image, self.size, self.size, out)

    def _fit(self, points: np.ndarray, moved: np.ndarray) -> np.ndarray:
        """The 3x3 affine matrix that best maps ``points`` onto ``moved`` (least squares)."""
        source = np.column_stack([points, np.ones(len(points))])
        if len(points) < 3 or np.linalg.matrix_rank(source) < 3:
            raise ValueError(
                f"the Albumentations pipeline kept {len(points)} keypoints, too few (or all on "
                "one line) to fit the matrix from the image to the sample"
            )
        solution, *_ = np.linalg.lstsq(source, moved, rcond=None)
        matrix = np.eye(3)
        matrix[:2] = solution.T
        residual = float(np.abs(source @ solution - moved).max())
        if self.require_affine and residual > AFFINE_TOLERANCE:
            raise ValueError(
                f"the Albumentations pipeline moved points {residual:.3g} pixels away from the "
                "closest affine map, so no matrix maps its samples back to the image (which "
                "evaluation needs); for a training-only pipeline set require_affine: false, "
                "for a validation set drop the non-affine transforms (A.Perspective, "
                "A.ElasticTransform, A.GridDistortion...)"
            )
        if abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
            raise ValueError("the Albumentations pipeline collapsed the image onto a line")
        return matrix


def from_config(
    pipeline: str | os.PathLike[str] | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    size: int | None = None,
    require_affine: bool = True,
) -> AlbumentationsTransform:
    """An ``AlbumentationsTransform`` from Albumentations' own serialized form.

    Args:
        pipeline: One of
            * a file written by ``A.save(compose, path)`` (``.json``) or
              ``A.save(compose, path, data_format="yaml")`` (``.yaml``/``.yml``);
            * a mapping as ``A.to_dict(compose)`` returns it (or its ``"transform"`` entry);
            * a list of such transform mappings, ``{__class_fullname__: HorizontalFlip,
              p: 0.5}``, applied in order.
        size: As ``AlbumentationsTransform``.
        require_affine: As ``AlbumentationsTransform``.

    Raises:
        ValueError: the file is missing, an entry names no or an unknown transform, or a
            transform refuses its arguments.
    """
    if isinstance(pipeline, (str, os.PathLike)):
        pipeline = _read(Path(pipeline))
    built: Any
    if isinstance(pipeline, Mapping):
        entry = pipeline["transform"] if "transform" in pipeline else pipeline
        built = _from_dict(entry, "pipeline")
    elif isinstance(pipeline, Sequence) and not isinstance(pipeline, str):
        built = [_from_dict(entry, f"pipeline[{i}]") for i, entry in enumerate(pipeline)]
    else:
        raise ValueError(
            "pipeline must be a file path, an A.to_dict mapping or a list of transform "
            f"mappings, got {type(pipeline).__name__}"
        )
    return AlbumentationsTransform(built, size=size, require_affine=require_affine)


def _read(path: Path) -> Any:
    """What ``A.save`` wrote to ``path`` (YAML for ``.yaml``/``.yml``, else JSON)."""
    try:
        with path.open() as f:
            if path.suffix.lower() in (".yaml", ".yml"):
                return yaml.safe_load(f)
            return json.load(f)
    except FileNotFoundError as e:
        raise ValueError(
            f"Albumentations pipeline file '{path}' does not exist; write one with "
            "A.save(compose, path) or give the pipeline inline"
        ) from e
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read Albumentations pipeline file '{path}': {e}") from e


def _from_dict(entry: Any, where: str) -> Any:
    """One transform from its ``A.to_dict`` mapping, with errors that name the entry.

    Albumentations only warns about an argument a transform does not know (its own ``to_dict``
    writes some that its strict mode refuses, e.g. PadIfNeeded's ``padding``), so that stays a
    warning here too.
    """
    _check_entry(entry, where)
    try:
        return A.from_dict({"transform": dict(entry)})
    except KeyError as e:
        raise ValueError(
            f"{where}: Albumentations has no transform {e.args[0]!r}; use a class name of "
            "albumentations, e.g. HorizontalFlip"
        ) from e
    except Exception as e:
        raise ValueError(f"{where}: {type(e).__name__}: {e}") from e


def _check_entry(entry: Any, where: str) -> None:
    """``entry`` and the members of a Compose/OneOf in it each name a transform."""
    if not isinstance(entry, Mapping) or "__class_fullname__" not in entry:
        raise ValueError(
            f"{where} must be a mapping with '__class_fullname__' (as A.to_dict writes it, "
            f"e.g. {{__class_fullname__: HorizontalFlip, p: 0.5}}), got {entry!r:.80}"
        )
    for i, item in enumerate(entry.get("transforms") or []):
        _check_entry(item, f"{where}.transforms[{i}]")


def _transform_list(pipeline: Any) -> list[Any]:
    kinds = (A.BasicTransform, A.BaseCompose)
    if isinstance(pipeline, kinds):
        return [pipeline]
    if isinstance(pipeline, Sequence) and not isinstance(pipeline, str):
        items = list(pipeline)
        if items and all(isinstance(item, kinds) for item in items):
            return items
    raise TypeError(
        "pipeline must be an Albumentations transform (A.Compose or a single one) or a "
        f"non-empty list of them, got {type(pipeline).__name__}"
    )


def _probe_grid(width: int, height: int) -> np.ndarray:
    """A 3 x 3 grid of points spanning the image: the centers of its corner pixels, of its
    edges' middle pixels and of the image. They fix the fitted matrix whatever the polygons,
    show a bend between them, and lie inside the image, where every transform keeps them."""
    xs = np.array([0.5, width / 2, width - 0.5])
    ys = np.array([0.5, height / 2, height - 0.5])
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
