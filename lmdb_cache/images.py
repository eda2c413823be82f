"""Decoding and normalization of source images, with no LMDB in sight.

Every image goes through the same steps, whichever path (cache build or a disk read in a
dataset) asks for it, so both produce the same pixels:

1. decode the first frame with Pillow;
2. convert to RGB uint8 by the mode rule below;
3. apply the EXIF orientation (all 8 values, exactly as ``ImageOps.exif_transpose``);
4. optionally downscale so the longest side is at most ``max_side`` (never upscale).

Sources are read by :func:`read_source`, which refuses anything but a regular file (a FIFO
named ``x.jpg`` would otherwise block a build forever), and an image with a side longer than
the cache format holds (:data:`~lmdb_cache.format.schema.MAX_SIDE`) is refused before its pixels are
decoded.

Mode rule (``to_rgb``):

* ``RGB`` is kept; ``1``, ``L``, ``P`` without transparency, ``CMYK``, ``YCbCr``, ``LAB``,
  ``HSV``, ``RGBX`` use Pillow's ``convert("RGB")``.
* Anything with transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, ``P``/``L``/``RGB``
  with a ``transparency`` key) is converted to straight ``RGBA`` by Pillow and composited over a
  white page: ``out = (c * a + 255 * (255 - a) + 127) // 255``. Pillow's ``convert("RGB")``
  would instead drop alpha and expose whatever colour hides under transparent pixels.
* 16-bit and 32-bit integer greyscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``, ``I``) is
  clipped to 0..65535 and scaled to 8 bits: ``(v * 255 + 32767) // 65535``, then replicated to
  three channels (a transparency colour key on such an image is ignored). Pillow's
  ``convert("RGB")`` would clip at 255 and saturate most of the image.
* Float greyscale (``F``) is rounded and clipped to 0..255, then replicated.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageDecodeError
from .format.schema import MAX_SIDE
from .geometry import capped_size, upright_size

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

ORIENTATION_TAG = 0x0112

# Each valid orientation keyed by itself. Pillow's exif_transpose finds its transposition by a
# dict lookup, so a value applies when it is equal and hash-equal to an int 1..8, whatever TIFF
# type stored it (6.0 from a FLOAT or DOUBLE, IFDRational(6, 1) from a RATIONAL); looking it up
# the same way gives back the plain int Pillow applied, and misses exactly where Pillow does.
_ORIENTATIONS: dict[int, int] = {value: value for value in range(1, 9)}

# O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever (regular files ignore
# it). O_NOCTTY: a terminal named like an image must not become our controlling terminal.
_SOURCE_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_SOURCE_READ_CHUNK = 1 << 16

_FILE_KINDS: dict[int, str] = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}

# The transposition that brings a raw image upright for each EXIF orientation value, the same
# table Pillow's ImageOps.exif_transpose uses.
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


@dataclass(frozen=True)
class DecodedImage:
    """An image normalized to RGB uint8, upright, optionally capped.

    Attributes:
        pixels: ``(height, width, 3)`` uint8, C-contiguous.
        raw_width: Width of the image as stored in the file, before orientation.
        raw_height: Height of the image as stored in the file, before orientation.
        orientation: EXIF orientation applied (1 when the file has none or one Pillow ignores).
        mode: Pillow mode of the decoded source (``"L"``, ``"RGB"``, ``"CMYK"``...).
        format: Pillow format name of the source (``"JPEG"``, ``"PNG"``...), or None.
    """

    pixels: np.ndarray
    raw_width: int
    raw_height: int
    orientation: int
    mode: str
    format: str | None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) after orientation and before any downscale."""
        return upright_size(self.orientation, self.raw_width, self.raw_height)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether the name has one of the image suffixes the cache scans for (any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def scan_images(
    root: str | os.PathLike[str], exclude: str | os.PathLike[str] | None = None
) -> list[str]:
    """List image files below ``root`` as sorted POSIX paths relative to it.

    Args:
        root: Folder to scan recursively. Symbolic links to folders are followed, and each
            real folder is scanned once (a link back to a parent is no loop).
        exclude: A folder to skip, such as a cache written inside ``root``; a relative path
            is taken from the working directory, like any other path.

    Returns:
        Relative POSIX keys such as ``"sub/img_001.jpg"``, sorted.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise NotADirectoryError(f"source '{root}' is not a folder; pass the folder of images")
    skip = os.path.realpath(exclude) if exclude is not None else None
    keys: list[str] = []
    seen = {os.path.realpath(root_path)}
    for dirpath, dirnames, filenames in os.walk(root_path, followlinks=True):
        kept = []
        for d in dirnames:
            real = os.path.realpath(os.path.join(dirpath, d))
            if real != skip and real not in seen:  # each folder once: no link loops
                seen.add(real)
                kept.append(d)
        dirnames[:] = kept
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root_path)
        for name in filenames:
            if is_image_file(name):
                keys.append((rel_dir / name).as_posix())
    keys.sort()
    return keys


def read_orientation(image: Image.Image) -> int:
    """The EXIF orientation of ``image`` as Pillow's ``ImageOps.exif_transpose`` applies it.

    A value stored as any TIFF type counts when it equals an integer 1..8 (``6``, ``6.0``,
    a RATIONAL ``6/1``); anything else (``6.5``, ``0``, ``9``, text, a tuple) is no orientation.

    Args:
        image: A Pillow image, loaded or not.

    Returns:
        The orientation as an int 1..8, or 1 when absent or not one Pillow would apply.
    """
    value = image.getexif().get(ORIENTATION_TAG, 1)
    try:
        return _ORIENTATIONS.get(value, 1)
    except TypeError:  # unhashable: Pillow's own lookup would raise, we call it no orientation
        return 1


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    color = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    out = (color * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a decoded Pillow image to ``(H, W, 3)`` uint8 by the module's mode rule.

    Args:
        image: A loaded Pillow image of any mode.

    Returns:
        A new C-contiguous uint8 array in the image's own (raw) frame.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in _INT16_MODES:  # before transparency: a colour key on 16-bit grey is ignored
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def to_rgb_array(image: Any) -> tuple[np.ndarray, str]:
    """Pixels given as an array, as ``(H, W, 3)`` uint8 RGB, and the mode they came in.

    ``(H, W, 3)`` is taken as RGB, ``(H, W)`` as grey (replicated), ``(H, W, 4)`` as RGBA
    (composited over white, like a decoded RGBA file). The result may share the input's memory.

    Raises:
        TypeError: not a numpy uint8 array.
        ValueError: another shape, or a side of 0 or over
            :data:`~lmdb_cache.format.schema.MAX_SIDE`.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        found = f"{image.dtype} array" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"image must be a uint8 numpy array, got a {found}")
    shape = image.shape
    if image.ndim == 2:
        pixels, mode = np.repeat(image[..., None], 3, axis=2), "L"
    elif image.ndim == 3 and shape[2] == 3:
        pixels, mode = image, "RGB"
    elif image.ndim == 3 and shape[2] == 4:
        pixels, mode = _composite_on_white(image), "RGBA"
    else:
        raise ValueError(f"image has shape {shape}; expected (H, W, 3) RGB, (H, W) or (H, W, 4)")
    if not (1 <= shape[0] <= MAX_SIDE and 1 <= shape[1] <= MAX_SIDE):
        raise ValueError(f"image is {shape[1]}x{shape[0]}; each side must be 1..{MAX_SIDE}")
    return pixels, mode


def resample_filter(name: str) -> Image.Resampling:
    """The Pillow filter for a resampling name such as ``"bilinear"``.

    Raises:
        ValueError: the name is not one of :data:`RESAMPLE_FILTERS`.
    """
    try:
        return RESAMPLE_FILTERS[name]
    except KeyError:
        choices = ", ".join(sorted(RESAMPLE_FILTERS))
        raise ValueError(f"unknown resampling filter {name!r}; choose one of {choices}") from None


def cap_pixels(pixels: np.ndarray, max_side: int | None, resample: str = "bilinear") -> np.ndarray:
    """Apply the longest-side cap to an upright RGB uint8 array (returned as is when it fits).

    The one place the cap is computed, so ``build-cache --max-side`` and a dataset's
    ``max_side`` produce the same pixels.
    """
    height, width = pixels.shape[:2]
    size = capped_size(width, height, max_side)
    if size == (width, height):
        return pixels
    image = Image.fromarray(pixels, "RGB").resize(size, resample=resample_filter(resample))
    return np.asarray(image, dtype=np.uint8)


def normalize(
    image: Image.Image, max_side: int | None = None, resample: str = "bilinear"
) -> DecodedImage:
    """Bring a loaded Pillow image to RGB uint8, upright and capped.

    Args:
        image: A Pillow image (it is loaded if it is not yet).
        max_side: Longest-side cap in pixels; None keeps the full size.
        resample: Name of the filter used when the cap shrinks the image.

    Returns:
        The normalized image with its raw size and orientation.
    """
    # Read before load(): Pillow's TIFF loader turns the image upright itself while loading and
    # drops the tag (its size is already the upright one from open()).
    orientation = read_orientation(image)
    image.load()
    loader_applied = orientation != 1 and read_orientation(image) != orientation
    if loader_applied and orientation in (5, 6, 7, 8):
        raw_height, raw_width = image.size
    else:
        raw_width, raw_height = image.size
    pixels = to_rgb(image)
    method = None if loader_applied else _TRANSPOSE.get(orientation)
    if method is not None:
        pixels = np.asarray(Image.fromarray(pixels, "RGB").transpose(method), dtype=np.uint8)
    pixels = cap_pixels(pixels, max_side, resample)
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels),
        raw_width=raw_width,
        raw_height=raw_height,
        orientation=orientation,
        mode=image.mode,
        format=image.format,
    )


def _check_sides(image: Image.Image, name: str, max_pixels: int | None) -> None:
    # image.size comes from the header alone: checked before load(), nothing huge is decoded.
    # A downscale cap would not help: a record also stores the raw size, bounded the same way.
    for side, length in zip(("width", "height"), image.size, strict=True):
        if length > MAX_SIDE:
            raise ImageDecodeError(
                name,
                f"{side} {length} exceeds the cache format's limit of {MAX_SIDE} pixels per side",
            )
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            name,
            f"{width}x{height} is {width * height} pixels, over the store's ceiling of "
            f"{max_pixels} (max_pixels)",
        )


def decode_bytes(
    data: bytes,
    name: str,
    max_side: int | None = None,
    resample: str = "bilinear",
    max_pixels: int | None = None,
) -> DecodedImage:
    """Decode an encoded image held in memory.

    Args:
        data: The file's bytes.
        name: The file's name, used in error messages only.
        max_side: Longest-side cap, or None.
        resample: Filter name for the cap.
        max_pixels: Refuse an image of more pixels (raw width x height), from its header.

    Returns:
        The normalized image.

    Raises:
        ImageDecodeError: the bytes are not a decodable image, are truncated, exceed Pillow's
            decompression-bomb limit or ``max_pixels``, or have a side longer than the cache
            format's :data:`~lmdb_cache.format.schema.MAX_SIDE`.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            _check_sides(image, name, max_pixels)
            return normalize(image, max_side=max_side, resample=resample)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(name, f"larger than Pillow's decompression-bomb limit ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(name, "not an image Pillow can identify") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(name, f"{type(e).__name__}: {e}") from e


def _file_kind(mode: int) -> str | None:
    """What a non-regular file is (``"a FIFO"``...), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return _FILE_KINDS.get(stat.S_IFMT(mode), "an unknown file type")


def _open_failure(path: str | os.PathLike[str], error: OSError) -> str:
    # Some special files cannot even be opened (a unix socket gives ENXIO, a device may be
    # denied): say what the path is rather than echo the errno.
    try:
        kind = _file_kind(os.stat(path).st_mode)
    except OSError:
        kind = None
    if kind is not None:
        return f"unreadable: not a regular file ({kind})"
    return f"unreadable: {error.strerror or error}"


def _read_all(fd: int, size_hint: int) -> bytes:
    # The first read asks for the whole file (one more byte than fstat said, so a file that
    # grew is not cut short); then read to EOF, as a read may return less than asked.
    chunks = []
    while chunk := os.read(fd, size_hint + 1 if size_hint else _SOURCE_READ_CHUNK):
        chunks.append(chunk)
        size_hint = 0
    return b"".join(chunks)


def read_source(path: str | os.PathLike[str]) -> tuple[bytes, os.stat_result]:
    """Read a source image file whole, refusing anything that is not a regular file.

    The file is opened without blocking (a FIFO named like an image does not hang) and its type
    is taken from ``fstat`` of the open descriptor, so it is the file actually read, even if
    the name is swapped meanwhile. Symbolic links are followed.

    Args:
        path: The source file.

    Returns:
        The file's bytes and the ``fstat`` result of the descriptor they were read from; a
        build fingerprints the source from it (``st_size``, ``st_mtime_ns``).

    Raises:
        ImageDecodeError: the path is a FIFO, socket, device or directory (reason
            ``"unreadable: not a regular file (a FIFO)"`` and so on), or opening or reading it
            failed (``"unreadable: <strerror>"``).
    """
    name = os.fsdecode(path)
    try:
        fd = os.open(path, _SOURCE_OPEN_FLAGS)
    except OSError as e:
        raise ImageDecodeError(name, _open_failure(path, e)) from e
    try:
        st = os.fstat(fd)
        kind = _file_kind(st.st_mode)
        if kind is not None:
            raise ImageDecodeError(name, f"unreadable: not a regular file ({kind})")
        data = _read_all(fd, st.st_size)
    except OSError as e:
        raise ImageDecodeError(name, f"unreadable: {e.strerror or e}") from e
    finally:
        os.close(fd)
    return data, st


def decode_file(
    path: str | os.PathLike[str], max_side: int | None = None, resample: str = "bilinear"
) -> DecodedImage:
    """Read and decode one image file; the disk path of a dataset uses this.

    Args:
        path: The image file (read with :func:`read_source`).
        max_side: Longest-side cap, or None.
        resample: Filter name for the cap.

    Returns:
        The normalized image.

    Raises:
        ImageDecodeError: the file is not a regular file, is unreadable, or is not a decodable
            image.
    """
    data, _ = read_source(path)
    return decode_bytes(data, os.fsdecode(path), max_side=max_side, resample=resample)
