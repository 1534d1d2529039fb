"""Decoding: a datasets image value (PIL image, or an undecoded {"path", "bytes"} dict) -> an 8-bit RGB PIL image,
and what happens to a file that cannot be decoded.

Policy: every image that PIL can decode is converted (`to_rgb`: 16-bit, CMYK, palette, RGBA, grayscale; any size
or aspect ratio, since the transforms resize); a file that cannot be decoded (truncated, zero bytes, not an image)
is skipped and logged, or, with skipping off, raises `BadImageError` naming it.

Where: datasets' `Image()` feature decodes lazily when an item is read, before any transform runs, so an error
there escapes as a bare traceback from a DataLoader worker. `undecoded_images` casts the column to
`Image(decode=False)` (metadata only: no data is rewritten) and the batch transform decodes with datasets' own
decoder followed by `load()` (opening reads only the header; `verify()` misses truncated files; `load()` decodes
every pixel, as the transform would anyway). So a bad file costs nothing extra and the check adds no pass over
the data: a validation pass would decode a large dataset twice before the first step. A skipped image of a
map-style split is replaced by another image of the split (deterministically: resumed runs see the same batches),
so that no batch comes out empty, which would give a NaN loss. Skips are counted per process (each DataLoader
worker logs its own).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from typing import Callable, Optional

import numpy as np
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage

logger = logging.getLogger(__name__)


def to_rgb(image: PILImage.Image, background: tuple[int, int, int] = (255, 255, 255)) -> PILImage.Image:
    """Any PIL image as 8-bit RGB.

    Transparency (RGBA, LA, PA, P with a transparent index) is composited over `background` rather than dropped
    (dropping it reveals whatever colour hides under transparent pixels). 16/32-bit integer images (I;16*, I) are
    scaled from 0..65535 to 0..255 (PIL's own conversion clips them to white); float images (F) are taken as 0..1
    when they fit, else as 0..255. Everything else (L, 1, CMYK, YCbCr, ...) uses PIL's conversion.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode.startswith("I"):
        values = np.asarray(image).astype(np.float64)
        scaled = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        image = PILImage.fromarray(scaled, mode="L")
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        image = PILImage.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "RGBA":
        canvas = PILImage.new("RGBA", image.size, background + (255,))
        return PILImage.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")


BAD_IMAGE_PATHS_LOGGED = 5  # the first few undecodable files are named in the log; then only counts


class BadImageError(ValueError):
    """An image could not be decoded (or transformed); the message names the file."""


_bad_image_count = 0  # this process's skipped images (each DataLoader worker is a process of its own)


def undecoded_images(split):
    """`split` with its `image` column left undecoded ({"path", "bytes"}): the transform decodes, catching errors."""
    feature = (split.features or {}).get("image")
    if isinstance(feature, Image) and feature.decode:
        return split.cast_column("image", Image(mode=feature.mode, decode=False))
    return split


def decode_image(value) -> PILImage.Image:
    """A fully decoded PIL image from a datasets image value (PIL image, or {"path", "bytes"} dict)."""
    image = value if isinstance(value, PILImage.Image) else Image().decode_example(value)
    image.load()  # a truncated file fails here, not in the middle of a transform
    return image


def image_source(value) -> str:
    """Where an image value comes from, for messages: its path, or its size when it only has bytes."""
    if isinstance(value, dict):
        if value.get("path"):
            return value["path"]
        if value.get("bytes") is not None:
            return f"<{len(value['bytes'])} bytes without a path>"
    return getattr(value, "filename", "") or f"<{type(value).__name__}>"


def decode_or_skip(value, skip: bool) -> Optional[PILImage.Image]:
    """The decoded image; for an undecodable one None (logged and counted) when `skip`, else `BadImageError`."""
    global _bad_image_count
    try:
        return decode_image(value)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad bytes
        reason = f"{type(error).__name__}: {error}"
        if not skip:
            raise BadImageError(
                f"Cannot decode the image {image_source(value)} ({reason}). Remove or replace the file, or pass "
                "--skip_bad_images true to skip undecodable images."
            ) from None
        _bad_image_count += 1
        if _bad_image_count <= BAD_IMAGE_PATHS_LOGGED:
            logger.warning(
                "Skipped undecodable image %s (%s); %d skipped so far in process %d.",
                image_source(value), reason, _bad_image_count, os.getpid(),
            )  # fmt: skip
        elif math.log10(_bad_image_count).is_integer():
            logger.warning("%d undecodable images skipped so far in process %d.", _bad_image_count, os.getpid())
        return None


SUBSTITUTE_TRIES = 16


def substitute_image(value, split: Dataset) -> tuple[Optional[PILImage.Image], int]:
    """(decoded image, label) of the split's first decodable image from a place fixed by a hash of the bad one."""
    source = image_source(value).encode() if not (isinstance(value, dict) and value.get("bytes")) else value["bytes"]
    start = int.from_bytes(hashlib.blake2b(source, digest_size=8).digest(), "little") % len(split)
    for offset in range(min(SUBSTITUTE_TRIES, len(split))):
        row = split[(start + offset) % len(split)]
        try:
            return decode_image(row["image"]), row["label"]
        except Exception:
            continue
    raise BadImageError(
        f"The image {image_source(value)} is undecodable, and so are the {SUBSTITUTE_TRIES} images tried in its place: "
        "most of this dataset cannot be read. Check the files."
    )


def transform_image(transform: Callable, image: PILImage.Image, value) -> torch.Tensor:
    """`transform(image)`, with a failure reported as a `BadImageError` that names the file."""
    try:
        return transform(image)
    except Exception as error:
        raise BadImageError(
            f"Transforming the image {image_source(value)} (mode {image.mode}, size {image.size}) failed: "
            f"{type(error).__name__}: {error}"
        ) from error
