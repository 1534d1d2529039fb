"""The preprocessing config saved beside every model: DeiT's evaluation transform as a transformers image processor."""

from transformers import BitImageProcessor
from transformers.image_utils import PILImageResampling

from hf_deit_inputs.choices import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, problem


def eval_resize_size(image_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """Shortest-edge size before the center crop: 256 for 224 at crop_pct 0.875, as the original."""
    if problem("crop_pct", crop_pct):
        raise ValueError(problem("crop_pct", crop_pct))
    return int(image_size / crop_pct)


def deit_image_processor(
    image_size: int = 224,
    crop_pct: float = DEFAULT_CROP_PCT,
    image_mean=IMAGENET_MEAN,
    image_std=IMAGENET_STD,
) -> BitImageProcessor:
    """Resize the shortest edge to `image_size / crop_pct` (bicubic), center-crop `image_size`, normalise.

    `BitImageProcessor` is the built-in processor that does exactly this (shortest-edge resize, then a separate
    crop); transformers' `DeiTImageProcessor` resizes to a square instead, which distorts non-square images.
    """
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": eval_resize_size(image_size, crop_pct)},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
        do_convert_rgb=True,
    )
