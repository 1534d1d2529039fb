"""The DeiT data recipe on `datasets`, one module per stage of the data path, in the order a batch travels:

    datasets.py    where images and labels come from: any `datasets` source, image folders, the embedded digits,
                   the evaluation split, a stratified labelled subset, a pool of unlabelled images
    transforms.py  image value -> 8-bit RGB PIL image (undecodable files skipped, or named in an error), then the
                   per-image transforms, built from the augmentation recipe (`AugmentationArguments`)
    mixup.py       the collator: stack a batch and mix it (mixup/cutmix; label smoothing is the loss's)
    samplers.py    the order examples are read in: repeated augmentation, and seeds by position (exact resume)
    sizing.py      the model input sized to the images (a new model on a folder left without --image_size)

Every public name of these modules is importable from `hf_deit.data`; each is documented where it is defined.
"""

import types as _types

from hf_deit_inputs.choices import (
    AUGMENTATION_PRESETS,
    EMBEDDED_DATASETS,
    RAND_AUGMENT_MAX_MAGNITUDE,
    SMALL_IMAGE_MAX_SIZE,
)

from ..arguments import AugmentationArguments

from .datasets import (
    DEFAULT_DATASET,
    DIGIT_NAMES,
    EMBEDDED_SPLIT_SEED,
    EMBEDDED_VALIDATION_FRACTION,
    EVAL_SPLIT_CANDIDATES,
    load_dataset_from_args,
    load_embedded_dataset,
    load_image_classification_dataset,
    load_image_folders,
    load_unlabeled_images,
    split_labeled,
    stratified_split_indices,
)
from .mixup import MixupCutmixCollator, build_collator, drop_skipped_examples
from .samplers import (
    PositionSeededCollator,
    PositionSeededDataset,
    PositionSeededSampler,
    RepeatedAugmentationSampler,
    mix_seed,
)
from .sizing import InputSize, size_input
from .transforms import (
    BAD_IMAGE_PATHS_LOGGED,
    SUBSTITUTE_TRIES,
    BadImageError,
    CenterCrop,
    NoisyRandAugment,
    ToNormalizedTensor,
    apply_transforms,
    build_eval_transform,
    build_train_transform,
    decode_image,
    image_source,
    make_batch_transform,
    to_rgb,
    undecoded_images,
)

# Every name imported above, nothing else (the submodules are reached by their own path).
__all__ = [name for name, value in globals().items() if not name.startswith("_") and not isinstance(value, _types.ModuleType)]
