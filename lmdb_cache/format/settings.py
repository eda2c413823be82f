"""What a store's settings allow: the pixel ceiling, the cap's rounding rule, the scales, and
which requested settings its pixels reproduce.

The package that scaled and rotated the pixels owns these rules; readers, validation, updates
and the OCR datasets call them and never re-derive them. Every rule runs on checked metadata
before any pixel is allocated: a sealed record may still be forged (its seal is a CRC-32).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import SettingsMismatchError
from ..geometry import capped_size, upright_size

# The most pixels (raw width x height) an image of a store may have: the manifest's
# ``settings.max_pixels``, by default Pillow's decompression-bomb limit (Pillow refuses to
# decode more than twice ``Image.MAX_IMAGE_PIXELS``, 89,478,485 by default). A record claiming
# more is damage, found before anything is allocated: it bounds a record's memory at 3 bytes a
# pixel (537 MB) however its sealed metadata was forged. A store's ceiling may be set up to
# MAX_PIXELS_LIMIT.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
MAX_PIXELS_LIMIT = 1 << 30


def pixel_ceiling(settings: dict) -> int:
    """The most raw pixels an image of a store with these settings may have."""
    return int(settings.get("max_pixels") or DEFAULT_MAX_PIXELS)


def check_meta_fits(meta: dict, settings: dict) -> dict:
    """Check that a store built with ``settings`` could have written this (schema-checked)
    metadata: its raw size under the pixel ceiling, its size the one raw size, orientation
    and cap give by the store's own rounding rule (``geometry.capped_size``), its scales the
    ratio of the two. Run before any pixel is allocated: a sealed record may still be forged.

    Returns:
        The metadata map, unchanged.

    Raises:
        ValueError: naming the field, what it claims and what the settings allow.
    """
    raw_w, raw_h, orientation = meta["raw_width"], meta["raw_height"], meta["orientation"]
    width, height = meta["width"], meta["height"]
    ceiling = pixel_ceiling(settings)
    if raw_w * raw_h > ceiling:
        raise ValueError(
            f"metadata raw size {raw_w}x{raw_h} is {raw_w * raw_h} pixels, over the store's "
            f"ceiling of {ceiling}"
        )
    max_side = settings.get("max_side")
    if max_side is not None and max(width, height) > max_side:
        raise ValueError(
            f"metadata size {width}x{height} has a side over the store's cap of {max_side}"
        )
    up_w, up_h = upright_size(orientation, raw_w, raw_h)
    expected = capped_size(up_w, up_h, max_side)
    if (width, height) != expected:
        cap = "full size" if max_side is None else f"cap {max_side}"
        raise ValueError(
            f"metadata size {width}x{height} does not follow from raw size {raw_w}x{raw_h}, "
            f"orientation {orientation} and {cap} ({expected[0]}x{expected[1]})"
        )
    scales = {
        "scale": max(width, height) / max(up_w, up_h),
        "scale_x": width / up_w,
        "scale_y": height / up_h,
    }
    for name, value in scales.items():
        if not math.isclose(meta[name], value, rel_tol=1e-9):
            raise ValueError(f"metadata {name}={meta[name]!r} does not match its sizes ({value!r})")
    return meta


def check_reproduces(
    settings: dict[str, Any], max_side: int | None, resample: str, path: str
) -> None:
    """Raise unless a store made with ``settings`` serves exactly the pixels that decoding
    with ``max_side`` and ``resample`` gives: a full-size store reproduces any cap (applied
    after reading), a capped store only its own cap and filter.

    Raises:
        SettingsMismatchError: naming both settings and the ``build-cache`` that fixes it.
    """
    cap, filter_name = settings.get("max_side"), settings.get("resample")
    if cap is None:
        return
    if cap != max_side:
        option = f" --max-side {max_side}" if max_side is not None else " --max-side none"
        raise SettingsMismatchError(
            f"cache '{path}' is capped at --max-side {cap}, the pixels asked for are "
            f"capped at {max_side}; use max_side {cap}, or rebuild the cache with "
            f"'build-cache SRC -o {path} --rebuild{option}'"
        )
    if filter_name != resample:
        raise SettingsMismatchError(
            f"cache '{path}' was resized with {filter_name!r}, the pixels asked for "
            f"use {resample!r}; use resample {filter_name}, or rebuild the cache with "
            f"'build-cache SRC -o {path} --rebuild --resample {resample}'"
        )
