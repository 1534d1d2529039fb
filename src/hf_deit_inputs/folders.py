"""Image folders: one sub-folder per class, named after it, holding that class's images (at any depth below it).

    data/train/cat/0001.jpg, data/train/cat/2019/0002.png, data/train/dog/0003.jpg   -> classes cat, dog

The class of an image is the first folder of its path below the split's folder, whatever the depth of that folder
itself, so `--train_dir data/train --validation_dir elsewhere/deeper/val` reads both splits the same way. Files are
images by their extension (a broken image is found, and skipped, when it is decoded); hidden files and folders
(".DS_Store", ".ipynb_checkpoints") are left out. Standard library only: the scripts scan folders before torch loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

# The formats PIL reads that image datasets use; a file with another extension is not an image of the dataset.
IMAGE_EXTENSIONS = frozenset(
    ".bmp .dib .gif .ico .jfif .jpe .jpeg .jpg .pbm .pgm .png .pnm .ppm .tga .tif .tiff .webp".split()
)


def is_image_file(name: str) -> bool:
    return not os.path.basename(name).startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(root: str):
    """The image files below `root` (any depth), hidden folders left out."""
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        yield from (os.path.join(folder, name) for name in names if is_image_file(name))


def image_files(root: str) -> list[str]:
    """Every image file below `root` (any depth), sorted."""
    return sorted(_walk_images(root))


def has_image(root: str) -> bool:
    """Whether `root` holds at least one image file at any depth (stops at the first)."""
    return next(_walk_images(root), None) is not None


@dataclass(frozen=True)
class ClassFolders:
    """The classes of one split's image folder.

    classes: names of the sub-folders holding at least one image, sorted (class id = position).
    empty:   sub-folders holding no image: not classes (nothing could train them).
    loose:   image files directly in the folder, outside any class folder (they have no label).
    """

    root: str
    classes: tuple[str, ...]
    empty: tuple[str, ...] = ()
    loose: tuple[str, ...] = ()

    def labelled_files(self, class_names: Sequence[str] | None = None) -> tuple[list[str], list[int]]:
        """(image paths, class ids) of every image in the class folders, in class then path order. Ids are
        positions in `class_names` (default: this split's classes); every class must be among them."""
        class_names = list(self.classes if class_names is None else class_names)
        paths, labels = [], []
        for name in self.classes:
            files = image_files(os.path.join(self.root, name))
            paths.extend(files)
            labels.extend([class_names.index(name)] * len(files))
        return paths, labels

def find_class_folders(root: str) -> ClassFolders:
    """The class folders of `root` (which must be a folder). Fast: one image per class is enough to count it."""
    classes, empty, loose = [], [], []
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda entry: entry.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                (classes if has_image(entry.path) else empty).append(entry.name)
            elif is_image_file(entry.name):
                loose.append(entry.name)
    return ClassFolders(root=root, classes=tuple(classes), empty=tuple(empty), loose=tuple(loose))
