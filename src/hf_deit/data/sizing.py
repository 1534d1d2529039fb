"""The model input sized to the images: a new model on a folder of images that left `--image_size` unset gets an
input size that fits them, and a given `--image_size` far from them is named (`size_input`, used by
`scripts/train.py` and `scripts/train_teacher.py`).

The rule reads the sizes of a seeded sample of the images from their file headers (PIL opens a file without decoding
its pixels) and takes the median short side m:

- m <= 32 px (scans, digits, icons, CIFAR-like thumbnails): the small-image model, the embedded digits' student at
  28 px in 7 px patches (`hf_deit.run.EMBEDDED_STUDENT`; the teacher script trains at the same 28 px), with the
  small-image augmentation preset. DeiT's 224 px would blow an 8 px scan up 28 times: 784 times its pixels, in 196
  tokens that each hold a fraction of one of its pixels.
- otherwise the smallest of 64, 96, 128, 160 and 224 px at or above m, capped at the paper's 224. The paper's 224 is
  a down-scaling of ImageNet's photos (their short side is about 400 px); enlarging a 100 px image to 224 px adds no
  detail but five times the tokens, so five times the time per step. Rounding up keeps the median image's detail, and
  each size is a whole number of DeiT's 16 px patches.
"""

import io
import logging
import random
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

from datasets import Image

logger = logging.getLogger(__name__)

SAMPLED_IMAGES = 48  # a few dozen: the median of a seeded sample, read from the file headers only
SMALL_MODEL_MAX_SIDE = 32  # a median short side up to this gets the small-image model
SMALL_MODEL_SIZE = 28  # that model's input: hf_deit.run.EMBEDDED_STUDENT["image_size"] (a test ties the two)
STANDARD_SIZES = (64, 96, 128, 160, 224)  # whole numbers of 16 px patches, up to the paper's 224
FAR_FACTOR = 4  # a given size more than 4x the median short side, or under a quarter of it, is named


@dataclass(frozen=True)
class InputSize:
    """The chosen input: its side in px, whether it is the small-image model's, and what it was chosen from."""

    image_size: int
    small_model: bool
    median_side: float  # the median short side of the images sampled (px)
    sampled: int

    def reason(self) -> str:
        if self.small_model:
            return (f"the median short side of {self.sampled} sampled images is {self.median_side:g} px (<= "
                    f"{SMALL_MODEL_MAX_SIDE}): the small-image input and augmentation preset, not the paper's 224 px "
                    "(a new student: the embedded digits' model, 7 px patches)")  # fmt: skip
        return (f"the median short side of {self.sampled} sampled images is {self.median_side:g} px: the smallest of "
                f"{', '.join(map(str, STANDARD_SIZES))} px at or above it (capped at the paper's 224)")  # fmt: skip


def sample_image_sizes(split, sample: int = SAMPLED_IMAGES, seed: int = 0) -> list[tuple[int, int]]:
    """(width, height) of up to `sample` images of `split` (an `image`-column dataset), chosen with `seed`, read from
    the file headers. Files PIL cannot open are left out (the transforms deal with them); a stream gives []."""
    from PIL import Image as PILImage

    try:
        count = len(split)
        indices = sorted(random.Random(seed).sample(range(count), min(sample, count)))
        values = split.select(indices).cast_column("image", Image(decode=False))["image"]
    except (TypeError, AttributeError, ValueError):  # a stream, or a column that is no image feature
        return []
    sizes = []
    for value in values:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        try:
            with PILImage.open(source) as image:
                sizes.append(image.size)
        except Exception:  # noqa: BLE001 - a bad or missing file: hf_deit.data.transforms' decoding policy applies later
            continue
    return sizes


def choose_input_size(sizes: Sequence[tuple[int, int]]) -> Optional[InputSize]:
    """The rule of this module's docstring on (width, height) pairs; None without any."""
    if not sizes:
        return None
    median_side = statistics.median(min(size) for size in sizes)
    if median_side <= SMALL_MODEL_MAX_SIDE:
        return InputSize(SMALL_MODEL_SIZE, True, median_side, len(sizes))
    size = next((side for side in STANDARD_SIZES if side >= median_side), STANDARD_SIZES[-1])
    return InputSize(size, False, median_side, len(sizes))


def far_size_warning(image_size: int, median_side: float) -> Optional[str]:
    """A warning when `image_size` is more than FAR_FACTOR times the images' median short side, or under 1/FAR_FACTOR
    of it; else None."""
    if median_side <= 0 or 1 / FAR_FACTOR <= image_size / median_side <= FAR_FACTOR:
        return None
    if image_size > median_side:
        what = f"{image_size / median_side:.1f}x their median short side: each image is enlarged and the model pays "
        what += f"for {(image_size / median_side) ** 2:.0f}x their pixels"
    else:
        what = f"1/{median_side / image_size:.1f} of their median short side: most of each image's detail is lost"
    return (f"--image_size {image_size} is far from the images' size (median short side {median_side:g} px): {what}. "
            "Leave --image_size out for a new model to size the input to the images.")  # fmt: skip


def size_input(split, image_size: Optional[int] = None, seed: int = 0) -> Optional[InputSize]:
    """The input for `split`'s images. With `image_size` given: a warning when it is far from the images
    (`far_size_warning`), and None. Without: the size chosen (`choose_input_size`), logged with the reason, or None
    when no image could be read (the caller's default then stands)."""
    sizes = sample_image_sizes(split, seed=seed)
    chosen = choose_input_size(sizes)
    if chosen is None:
        return None
    if image_size is not None:
        warning = far_size_warning(image_size, chosen.median_side)
        if warning:
            logger.warning(warning)
        return None
    logger.info("Input size %d px, sized to the images: %s.", chosen.image_size, chosen.reason())
    return chosen
