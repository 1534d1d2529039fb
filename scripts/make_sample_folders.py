#!/usr/bin/env python
r"""Small image folders of the kind a new user brings, from real images that ship inside pip packages (no network).

    python scripts/make_sample_folders.py --output_dir data/samples            # every folder
    python scripts/make_sample_folders.py --output_dir data/samples --kinds photos

Writes `<output_dir>/<kind>/train/<class>/<n>.jpg|png` and `.../val/<class>/...`:

- `photos`: 4 classes of colour photos (scikit-image's rocket, scikit-learn's china and flower, scikit-image's
  immunohistochemistry slide), 30 training and 10 validation crops each;
- `textures`: 5 classes of grey surfaces (scikit-image's brick, grass, gravel, moon and a printed page), 40 training
  and 10 validation crops each;
- `scans`: scikit-learn's 1,797 handwritten digits, 8x8 grey scans, 10 classes, split 80/20 per class (1,437 training
  and 360 validation images), saved as 8x8 PNG files: the tiny images a new user may bring;
- `faces`: scikit-image's subset of Labeled Faces in the Wild, 100 faces and 100 background patches of the same
  photos, 25x25 grey, split 80/20 per class (160 training and 40 validation images).

Photo and texture crops are squares of 12-60% of the image's shorter side, resized to 48-200 px, saved as JPEG and PNG alternately.
Training crops come from the left 70% of each image, validation crops from the right 30%: no validation pixel was
seen in training. (The tests' own folders use other images: astronaut, cat, coffee, MNIST digits.)
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN_FRACTION = 0.7  # of each image's width: training crops left of it, validation crops right of it


def _skimage(name: str):
    from skimage import data

    return lambda: getattr(data, name)()


def _sklearn(file_name: str):
    def load():
        from sklearn.datasets import load_sample_image

        return load_sample_image(file_name)

    return load


# kind -> (classes as name -> loader of an HxW or HxWx3 uint8 array, training crops per class)
FOLDERS = {
    "photos": ({"rocket": _skimage("rocket"), "china": _sklearn("china.jpg"), "flower": _sklearn("flower.jpg"),
                "slide": _skimage("immunohistochemistry")}, 30),
    "textures": ({"brick": _skimage("brick"), "grass": _skimage("grass"), "gravel": _skimage("gravel"),
                  "moon": _skimage("moon"), "page": _skimage("page")}, 40),
}  # fmt: skip
VALIDATION_PER_CLASS = 10
SMALL_VALIDATION_FRACTION = 0.2


def _crops(image: Image.Image, count: int, rng: np.random.Generator, left: int, right: int):
    """`count` square crops inside columns [left, right) of `image`, each resized to 48-200 px."""
    width = right - left
    for _ in range(count):
        side = int(min(width, image.height) * rng.uniform(0.12, 0.6))
        x = left + int(rng.integers(0, width - side + 1))
        y = int(rng.integers(0, image.height - side + 1))
        yield image.crop((x, y, x + side, y + side)).resize((int(rng.integers(48, 201)),) * 2, Image.BICUBIC)


def _split_per_class(images: np.ndarray, labels: list[str], root: Path, seed: int) -> tuple[Path, Path]:
    """Small uint8 images (N x H x W) as `root/{train,val}/<label>/<index>.png`, a seeded 80/20 split per class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    for label in sorted(set(labels.tolist())):
        indices = rng.permutation(np.flatnonzero(labels == label))
        validation = int(round(len(indices) * SMALL_VALIDATION_FRACTION))
        for split, chosen in (("val", indices[:validation]), ("train", indices[validation:])):
            folder = Path(root) / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                Image.fromarray(images[index]).save(folder / f"{index}.png")
    return Path(root) / "train", Path(root) / "val"


def build_scans(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """scikit-learn's 8x8 digits, their 0..16 grey levels scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return _split_per_class(images, [str(label) for label in digits.target], root, seed)


def build_faces(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """scikit-image's LFW subset: 100 faces, then 100 patches of the same photos' backgrounds, 25x25 grey."""
    from skimage import data

    images = np.rint(data.lfw_subset() * 255.0).astype(np.uint8)
    return _split_per_class(images, ["face"] * 100 + ["background"] * 100, root, seed)


SMALL_FOLDERS = {"scans": build_scans, "faces": build_faces}  # tiny images, written as they are
KINDS = (*FOLDERS, *SMALL_FOLDERS)


def build_folder(kind: str, root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Writes `root/train` and `root/val` for `kind` (a key of KINDS); returns the two folders."""
    if kind in SMALL_FOLDERS:
        return SMALL_FOLDERS[kind](root, seed)
    classes, train_per_class = FOLDERS[kind]
    rng = np.random.default_rng(seed)
    root = Path(root)
    for name, load in classes.items():
        image = Image.fromarray(np.asarray(load())).convert("RGB")
        split_x = int(image.width * TRAIN_FRACTION)
        for split, count, (left, right) in (("train", train_per_class, (0, split_x)),
                                            ("val", VALIDATION_PER_CLASS, (split_x, image.width))):  # fmt: skip
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index, crop in enumerate(_crops(image, count, rng, left, right)):
                crop.save(folder / f"{index}.{'png' if index % 2 else 'jpg'}")
    return root / "train", root / "val"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="data/samples")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for kind in args.kinds:
        train, val = build_folder(kind, Path(args.output_dir) / kind, args.seed)
        print(f"{kind}: {train} and {val}")


if __name__ == "__main__":
    main()
