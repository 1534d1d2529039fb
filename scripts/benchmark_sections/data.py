"""The data pipeline: decode, DeiT's train transforms and mixup/cutmix collation, images/s per DataLoader worker
count."""

import io
import time
from collections.abc import Callable

import torch

from .common import BenchmarkSettings, _rate, summarize

NAME = "data"


def enabled(settings: BenchmarkSettings) -> bool:
    return bool(settings.data_workers)


def measure(settings: BenchmarkSettings, results: dict, log: Callable[[str], None]) -> list[dict]:
    return data_section(settings, log)


def targets(results: dict) -> list[dict]:
    """The pipeline must outrun training: with 2 workers, at least twice the training step's images/s."""
    targets = []
    two_workers = [d for d in results["data"] if d["workers"] == 2]
    if two_workers and results.get("training"):
        train_rate = max(t["images_per_s"]["ours/DistillationTrainer"]["median"] for t in results["training"])
        ratio = two_workers[0]["images_per_s"]["median"] / train_rate
        targets.append({"target": "data pipeline (2 workers) >= 2x training step images/s", "value": ratio,
                        "met": ratio >= 2.0})
    return targets


def markdown(results: dict) -> list[str]:
    lines = []
    if results["data"]:
        lines += ["", "## Data pipeline (decode + DeiT train transforms + mixup/cutmix collation)", "",
                  "| workers | batch | image px | images/s |", "|---|---|---|---|"]
        lines += [f"| {d['workers']} | {d['batch_size']} | {d['image_size']} | {_rate(d['images_per_s'])} |"
                  for d in results["data"]]
    return lines


def make_image_dataset(count: int, size: int, num_labels: int = 10):
    """A `datasets` dataset of `count` encoded images (alternately JPEG and PNG) of about `size` px with smooth random
    content (noise would make PNG decoding unrealistically slow), and integer labels."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        height, width = size + int(rng.integers(0, size // 4)), size + int(rng.integers(0, size // 4))
        coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = PILImage.fromarray(coarse).resize((width, height), PILImage.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if index % 2 == 0 else "PNG", **({"quality": 90} if index % 2 == 0 else {}))
        records.append({"image": {"bytes": buffer.getvalue(), "path": None}, "label": index % num_labels})
    features = Features({"image": Image(), "label": ClassLabel(num_classes=num_labels)})
    return Dataset.from_list(records, features=features)


def data_section(settings: BenchmarkSettings, log: Callable[[str], None]) -> list[dict]:
    """Images/s of decode + DeiT train transforms + mixup/cutmix collation through a DataLoader, per worker count,
    read as training reads them: each view seeded by its place in the epoch (`hf_deit.data.samplers`). Each round is
    a full pass; time is counted from the first batch (so worker start-up is excluded)."""
    from hf_deit.data import AugmentationArguments, apply_transforms, build_collator, build_train_transform
    from hf_deit.data.samplers import PositionSeededCollator, PositionSeededDataset, PositionSeededSampler

    num_labels = 10
    dataset = make_image_dataset(settings.data_images, settings.data_image_size, num_labels)
    recipe = AugmentationArguments(image_size=settings.data_image_size).resolved()
    from datasets import DatasetDict

    train = apply_transforms(DatasetDict(train=dataset), build_train_transform(recipe), build_train_transform(recipe))["train"]
    collator = build_collator(recipe, num_labels)
    batch_size = min(settings.train_batch_size, max(1, settings.data_images // 4))
    results = []
    views = torch.utils.data.BatchSampler(PositionSeededSampler(torch.utils.data.RandomSampler(train), seed=0),
                                          batch_size, drop_last=True)  # fmt: skip
    loaders = {
        workers: torch.utils.data.DataLoader(
            PositionSeededDataset(train), batch_sampler=views, num_workers=workers,
            collate_fn=PositionSeededCollator(collator), persistent_workers=workers > 0,
        )
        for workers in settings.data_workers
    }
    times = {workers: [] for workers in loaders}
    counted = {}
    for round_index in range(settings.rounds + 1):
        for workers, loader in loaders.items():
            log(f"data workers={workers} round {round_index}")
            iterator = iter(loader)
            next(iterator)
            start, images = time.perf_counter(), 0
            for batch in iterator:
                images += batch["pixel_values"].shape[0]
            if round_index > 0:
                times[workers].append(time.perf_counter() - start)
                counted[workers] = images
    for workers, seconds in times.items():
        results.append({"workers": workers, "batch_size": batch_size, "image_size": settings.data_image_size,
                        "images_per_s": summarize(seconds, counted[workers])})
    return results
