"""Transforms: the per-image transforms (torchvision.transforms.v2) built from DeiT's augmentation recipe (the
flags `hf_deit.arguments.AugmentationArguments`, their presets `hf_deit_inputs.choices.AUGMENTATION_PRESETS`), attached
to the splits lazily (`apply_transforms`), and the decoding before them: a datasets image value (PIL image, or an
undecoded {"path", "bytes"} dict) -> an 8-bit RGB PIL image, and what happens to a file that cannot be decoded.

Deliberate differences from timm's `rand-m9-mstd0.5-inc1` (what DeiT uses) are listed in `NoisyRandAugment`.

Decoding policy: every image that PIL can decode is converted (`to_rgb`: 16-bit, CMYK, palette, RGBA, grayscale; any size
or aspect ratio, since the transforms resize); a file that cannot be decoded (truncated, zero bytes, not an image)
is skipped and logged, or, with skipping off, raises `BadImageError` naming it.

Where it decodes: datasets' `Image()` feature decodes lazily when an item is read, before any transform runs, so an error
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
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Image, IterableDataset, IterableDatasetDict
from PIL import Image as PILImage
from torchvision.transforms import v2

from hf_deit_inputs.choices import RAND_AUGMENT_MAX_MAGNITUDE

from ..arguments import AugmentationArguments
from ..image_processing import eval_resize_size

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


_MAGNITUDE_STEPS = 10  # bins per magnitude unit: noise resolution 0.1


class NoisyRandAugment(torch.nn.Module):
    """RandAugment with DeiT's magnitude noise (`mstd0.5`): each op draws its magnitude from N(m, std) in [0, 10].

    torchvision's `v2.RandAugment` takes an integer magnitude bin, fixed per instance. This holds one single-op
    `v2.RandAugment` per bin of a 0-10 scale split in steps of 0.1 (101 bins, so `magnitude=9` is 90% of each op's
    range as in timm, whereas torchvision's default 31 bins make 9 only 30%), and for each of the `num_ops` ops
    draws a bin from the noisy magnitude. Random draws use torch's RNG (seeded per DataLoader worker).

    Differences from timm's `rand-m9-mstd0.5-inc1` that remain: torchvision's op set (includes Identity; no Invert
    or SolarizeAdd), ops always applied (timm applies each with probability 0.5), and its own op ranges.
    """

    def __init__(self, magnitude: float = 9.0, magnitude_std: float = 0.5, num_ops: int = 2, fill=None):
        super().__init__()
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.num_ops = num_ops
        num_bins = int(RAND_AUGMENT_MAX_MAGNITUDE * _MAGNITUDE_STEPS) + 1
        self.ops = [
            v2.RandAugment(
                num_ops=1, magnitude=b, num_magnitude_bins=num_bins, interpolation=v2.InterpolationMode.BILINEAR, fill=fill
            )
            for b in range(num_bins)
        ]

    def sample_magnitude(self) -> float:
        noisy = self.magnitude + self.magnitude_std * float(torch.randn(())) if self.magnitude_std > 0 else self.magnitude
        return min(max(noisy, 0.0), RAND_AUGMENT_MAX_MAGNITUDE)

    def forward(self, image):
        for _ in range(self.num_ops):
            image = self.ops[round(self.sample_magnitude() * _MAGNITUDE_STEPS)](image)
        return image

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}, magnitude_std={self.magnitude_std}"


class ToNormalizedTensor(torch.nn.Module):
    """8-bit RGB PIL image -> normalised float32 (3, H, W) tensor: `(pixel / 255 - mean) / std`.

    The same numbers as v2.ToImage + v2.ToDtype(float32, scale=True) + v2.Normalize, in one step: on 32 px images
    the three v2 calls cost ~4.5x more time (per-call dispatch), and the data pipeline must outrun training.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Folded into one subtract and one divide on the 0..255 values.
        self._offset = torch.tensor(self.mean).view(3, 1, 1) * 255.0
        self._scale = torch.tensor(self.std).view(3, 1, 1) * 255.0

    def forward(self, image: PILImage.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
        return (pixels - self._offset).div_(self._scale)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class CenterCrop(torch.nn.Module):
    """Center crop with the saved image processor's offsets: `(side - size) // 2`.

    torchvision's `v2.CenterCrop` rounds half offsets instead, a one-pixel shift whenever the margin is odd; the
    evaluation during training must see exactly what the saved preprocessing config gives at inference.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, image: PILImage.Image) -> PILImage.Image:
        width, height = image.size
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))

    def extra_repr(self) -> str:
        return f"size={self.size}"


def build_train_transform(args: AugmentationArguments) -> v2.Compose:
    """DeiT's training transform: PIL image of any mode -> normalised float32 (3, image_size, image_size) tensor.

    to_rgb -> RandomResizedCrop(bicubic) -> flip -> RandAugment -> ColorJitter -> normalised tensor ->
    RandomErasing. Geometry and RandAugment run on the PIL image (fast C code, one decode, no tensor round trip);
    erasing runs on the normalised tensor with standard-normal noise per pixel (`value="random"`), which is timm's
    `mode="pixel"` that DeiT uses.
    """
    args = args.resolved()
    steps = [
        to_rgb,  # a plain callable: v2.Lambda would add dispatch cost for nothing
        v2.RandomResizedCrop(
            args.image_size, scale=(args.scale_min, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        ),
    ]
    if args.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(args.hflip))
    magnitude = args.rand_augment_magnitude
    if magnitude is not None:
        # Pixels shifted in from outside the image take the dataset mean, as timm does.
        fill = [round(255 * m) for m in args.mean]
        steps.append(NoisyRandAugment(magnitude, args.rand_augment_mstd, args.rand_augment_num_ops, fill=fill))
    if args.color_jitter > 0:
        steps.append(v2.ColorJitter(args.color_jitter, args.color_jitter, args.color_jitter))
    steps.append(ToNormalizedTensor(args.mean, args.std))
    if args.reprob > 0:
        steps.append(v2.RandomErasing(p=args.reprob, scale=(0.02, 1 / 3), ratio=(0.3, 3.3), value="random"))
    return v2.Compose(steps)


def build_eval_transform(args: AugmentationArguments) -> v2.Compose:
    """DeiT's evaluation transform, equal to `deit_image_processor(image_size, crop_pct, mean, std)`."""
    args = args.resolved()
    return eval_transform(eval_resize_size(args.image_size, args.crop_pct), args.image_size, args.mean, args.std)


def eval_transform(resize: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """to_rgb -> Resize shorter side to `resize` (bicubic) -> CenterCrop(`crop`) -> Normalize."""
    return v2.Compose([
        to_rgb,  # a plain callable: v2.Lambda would add dispatch cost for nothing
        v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        CenterCrop(crop),
        ToNormalizedTensor(mean, std),
    ])  # fmt: skip


def make_batch_transform(
    transform: Callable, skip_bad_images: bool = True, substitutes: Optional[Dataset] = None
) -> Callable[[dict], dict]:
    """A `set_transform`/`with_transform` function: {"image", "label"} batch -> {"pixel_values", "labels"}.

    Images may come decoded (PIL) or as datasets' undecoded {"path", "bytes"} values; undecoded ones are decoded here
    (`decode_or_skip`). With `skip_bad_images`, an undecodable image is replaced by a decodable one of
    `substitutes` (with its label) when given, else gets `pixel_values` None (for a collator that drops it);
    without, it raises `BadImageError` naming the file.
    """

    def batch_transform(batch: dict) -> dict:
        pixel_values, labels = [], list(batch["label"])
        for row, value in enumerate(batch["image"]):
            image = decode_or_skip(value, skip_bad_images)
            if image is None and substitutes is not None:
                image, labels[row] = substitute_image(value, substitutes)
            try:
                pixel_values.append(None if image is None else transform(image))
            except Exception as error:  # reported as a BadImageError that names the file
                raise BadImageError(
                    f"Transforming the image {image_source(value)} (mode {image.mode}, size {image.size}) failed: "
                    f"{type(error).__name__}: {error}"
                ) from error
        return {"pixel_values": pixel_values, "labels": labels}

    batch_transform.image_transform = transform  # what each image goes through, for records of the views it makes
    return batch_transform


def apply_transforms(
    dataset: DatasetDict | IterableDatasetDict,
    train_transform: Callable,
    eval_transform: Callable,
    skip_bad_images: bool = True,
):
    """Attach the train transform to `train` and the eval transform to every other split, lazily (per access).

    Map-style splits use `with_transform` (no cache files); streamed splits a lazy batched `map`. Each item then
    holds only `pixel_values` (float tensor) and `labels` (int). With a Trainer, set `remove_unused_columns=False`.
    Images are decoded inside the transform, where an undecodable file can be caught: with `skip_bad_images` a
    map-style item takes the place of another image of its split (chosen from a hash of the bad file, so runs
    repeat; batches keep their size, and a Trainer never gets an empty batch) and a streamed one is left out;
    without, the file is named in a `BadImageError`. (`hf_deit.evaluation` drops bad images instead, so that a
    reported accuracy counts every image once.)
    """
    transformed = {}
    for name, split in dataset.items():
        split = undecoded_images(split)
        transform = train_transform if name == "train" else eval_transform
        if isinstance(split, IterableDataset):
            split = split.map(make_batch_transform(transform, skip_bad_images), batched=True, remove_columns=["image", "label"])
            transformed[name] = split.filter(lambda pixels: pixels is not None, input_columns="pixel_values")
        else:
            transformed[name] = split.with_transform(make_batch_transform(transform, skip_bad_images, substitutes=split))
    return type(dataset)(transformed)

