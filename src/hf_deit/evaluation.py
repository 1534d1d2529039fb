"""Evaluate a saved image classifier on a dataset: top-1/top-5 accuracy per head, and agreement with a teacher.

Works for our distilled DeiT (averaged output, class head, distillation head) and for any transformers image
classifier (one output). Batches stream through a DataLoader and each batch's metrics are folded into running sums
weighted by its size, so memory does not grow with the number of images (no logits are kept). The metrics are those
of training (`hf_deit.metrics.make_compute_metrics`, the shipped `evaluate` module); a weighted mean of per-batch
accuracies is exactly the accuracy over all images.

    model = AutoModelForImageClassification.from_pretrained(folder)
    results = evaluate_classifier(model, dataset["validation"], eval_transform_for(folder, model.config))
    print(format_results(results))

`scripts/evaluate_model.py` is the command line around these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
from datasets import IterableDataset, IterableDatasetDict
from transformers import EvalPrediction

from hf_deit_inputs import InputError

from .data import (
    AugmentationArguments,
    apply_transforms,
    build_eval_transform,
    make_batch_transform,
    undecoded_images,
)
from .metrics import HEAD_FIELDS, HEAD_PREFIXES, make_compute_metrics
from .teacher import Teacher, check_label_space


def eval_transform_for(model_name_or_path: str, config, image_size: Optional[int] = None, crop_pct: Optional[float] = None):
    """hf_deit's eval transform (resize, center crop, normalise) matching the model's saved preprocessing config.

    Without a saved image processor: the config's `image_size` and the DeiT defaults (crop 0.875, ImageNet stats).
    """
    from transformers import AutoImageProcessor

    mean = std = None
    try:
        processor = AutoImageProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        processor = None
    if processor is not None:
        crop = dict(getattr(processor, "crop_size", None) or {})
        size = dict(getattr(processor, "size", None) or {})
        if image_size is None and "height" in crop:
            image_size = int(crop["height"])
        if crop_pct is None and image_size and "shortest_edge" in size and getattr(processor, "do_center_crop", False):
            crop_pct = min(image_size / size["shortest_edge"], 1.0)
        if getattr(processor, "do_normalize", False):
            mean, std = list(processor.image_mean), list(processor.image_std)
    if image_size is None:
        config_size = getattr(config, "image_size", None)
        image_size = config_size if isinstance(config_size, int) or config_size is None else config_size[0]
    if image_size is None:
        raise ValueError(f"Cannot tell the input size of {model_name_or_path!r}: pass --image_size.")
    return build_eval_transform(AugmentationArguments(image_size=image_size, crop_pct=crop_pct, mean=mean, std=std))


def _label_space(label_names: list[str]) -> SimpleNamespace:
    """The dataset's classes, shaped like a config for `hf_deit.teacher.check_label_space`."""
    return SimpleNamespace(num_labels=len(label_names), id2label=dict(enumerate(label_names)))


def dataset_label_order(label_names: list[str], model_config) -> Optional[torch.Tensor]:
    """None when the model's logits follow the dataset's classes, else the index re-ordering them by name.

    Raises `InputError` when the model predicts another number of classes or (both naming them) other classes.
    """
    if model_config.num_labels != len(label_names):
        raise InputError(
            f"The model predicts {model_config.num_labels} classes, the dataset has {len(label_names)}: evaluate it on "
            "a dataset with its classes (check --dataset_name, --label_column_name)."
        )
    try:
        return check_label_space(_label_space(label_names), model_config)
    except ValueError:  # its message speaks of a teacher and a student: said here of the model and the dataset
        model_names = {str(name) for name in model_config.id2label.values()}
        raise InputError(
            f"The model's classes are not the dataset's: only the dataset has {sorted(set(label_names) - model_names)[:5]}"
            f", only the model {sorted(model_names - set(label_names))[:5]}. Evaluate it on images of its classes (a "
            "folder per class, named as its config.id2label), or fine-tune it on these (scripts/train.py)."
        ) from None


def teacher_for_evaluation(
    teacher, label_names: list[str], student_mean, student_std, trust_remote_code: bool = False, device=None,
    teacher_image_size=None,
) -> Teacher:
    """The teacher, fitted to the evaluated model's batch and the dataset's classes as in training
    (`hf_deit.teacher.Teacher.load`: label space, re-normalisation, resizing to `teacher_image_size` (training's `--teacher_image_size`: None for its own size, "student", or N px), channel
    count). `teacher.logits(batch)` gives its logits in the dataset's class order."""
    return Teacher.load(teacher, _label_space(label_names), student_mean=student_mean, student_std=student_std,
                        image_size=teacher_image_size, trust_remote_code=trust_remote_code).to(device)  # fmt: skip


def _collate(examples: list[dict]):
    """(pixel_values, labels), dropping undecodable images; None when none is left."""
    kept = [example for example in examples if example["pixel_values"] is not None]
    if not kept:
        return None
    labels = torch.as_tensor([example["labels"] for example in kept], dtype=torch.long)
    return torch.stack([example["pixel_values"] for example in kept]), labels


@torch.inference_mode()
def evaluate_classifier(
    model: torch.nn.Module,
    dataset,
    transform: Callable,
    *,
    label_order: Optional[torch.Tensor] = None,
    teacher: Optional[Teacher] = None,
    batch_size: int = 128,
    num_workers: int = 0,
    skip_bad_images: bool = True,
    top_k: int = 5,
    device=None,
) -> dict[str, float]:
    """Accuracy of `model` on `dataset` (a `datasets` split with `image` and `label` columns, map-style or streamed).

    Returns `num_images` (evaluated), `num_skipped` (undecodable, with `skip_bad_images`), `accuracy` and
    `top{k}_accuracy` of the model's output (`logits`; for our model the mean of the two heads), the same prefixed
    `cls_` and `distillation_` for a model with those heads, and with a `teacher` (see `teacher_for_evaluation`)
    `teacher_accuracy` and `teacher_agreement` (how often the output's top-1 is the teacher's).
    `label_order` (from `dataset_label_order`) re-orders the model's logits into the dataset's classes.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    if isinstance(dataset, IterableDataset):  # streams leave undecodable images out before batching
        ready = apply_transforms(IterableDatasetDict(validation=dataset), transform, transform, skip_bad_images)
        ready = ready["validation"]
    else:  # bad images come out as None and `_collate` drops them: each image counts once, none in another's place
        ready = undecoded_images(dataset).with_transform(make_batch_transform(transform, skip_bad_images))
    loader = torch.utils.data.DataLoader(ready, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    compute_metrics = make_compute_metrics(top_k)
    sums: dict[str, float] = {}
    class_counts: dict[str, np.ndarray] = {}  # per head: how often each class was predicted (majority shares)
    num_images = 0
    for batch in loader:
        if batch is None:  # every image of the batch was undecodable
            continue
        pixel_values, labels = batch
        predictions, single_head = _predictions(model, pixel_values.to(device), label_order, teacher)
        results = compute_metrics(EvalPrediction(predictions=predictions, label_ids=labels.numpy()))
        if single_head:
            results = {k: v for k, v in results.items() if not k.startswith(HEAD_PREFIXES[1:])}
        count = len(labels)
        for name, value in results.items():
            if name.endswith("majority_share"):  # a share of the whole split, not a mean of the batches' shares
                continue
            sums[name] = sums.get(name, 0.0) + float(value) * count
        if not single_head:
            for prefix, head in zip(HEAD_PREFIXES[1:], predictions[1:3]):
                counts = np.bincount(head.argmax(axis=-1), minlength=head.shape[-1])
                class_counts[prefix] = class_counts.get(prefix, 0) + counts
        num_images += count
    if num_images == 0:
        raise ValueError("No image could be evaluated: the dataset is empty or every image was undecodable.")
    # A stream has no length to compare with: its skipped images are counted in the log only (None here).
    num_skipped = None if isinstance(dataset, IterableDataset) else len(dataset) - num_images
    metrics = {name: total / num_images for name, total in sums.items()}
    metrics.update({f"{prefix}majority_share": float(counts.max() / num_images) for prefix, counts in class_counts.items()})
    return {"num_images": num_images, "num_skipped": num_skipped, **metrics}


def _predictions(model, pixel_values, label_order, teacher) -> tuple[tuple[np.ndarray, ...], bool]:
    """One batch's logits as `make_compute_metrics` reads them, `(output, cls, distillation[, teacher])` in the
    dataset's class order (a one-head model's output alone, or thrice before the teacher's), and whether it has one."""
    outputs = model(pixel_values=pixel_values)
    heads = [getattr(outputs, name, None) for name in HEAD_FIELDS]
    single_head = heads[1] is None or heads[2] is None
    heads = [heads[0]] * 3 if single_head else heads
    if label_order is not None:
        heads = [head.index_select(1, label_order.to(head.device)) for head in heads]
    if teacher is not None:
        heads.append(teacher.logits(pixel_values))
    elif single_head:
        heads = heads[:1]
    return tuple(head.float().cpu().numpy() for head in heads), single_head


def format_results(results: dict[str, float]) -> str:
    """The per-head table: rows averaged / cls / distillation (those present), columns top-1 and top-k."""
    top_k_key = next((key for key in results if key.startswith("top") and key.endswith("_accuracy")), None)
    top_k_label = top_k_key.removesuffix("_accuracy").replace("top", "top-") if top_k_key else None
    header = f"{'head':<14}{'top-1':>8}" + (f"{top_k_label:>8}" if top_k_label else "")
    lines = [header, "-" * len(header)]
    rows = zip(("averaged" if "cls_accuracy" in results else "output", "cls", "distillation"), HEAD_PREFIXES)
    for name, prefix in rows:
        if prefix + "accuracy" not in results:
            continue
        line = f"{name:<14}{results[prefix + 'accuracy']:>8.4f}"
        if top_k_key:
            line += f"{results[prefix + top_k_key]:>8.4f}"
        lines.append(line)
    if "teacher_accuracy" in results:
        lines.append(f"{'teacher':<14}{results['teacher_accuracy']:>8.4f}")
        lines.append(f"teacher agreement (top-1 of the output = the teacher's): {results['teacher_agreement']:.4f}")
    skipped = "an unknown number of" if results["num_skipped"] is None else results["num_skipped"]
    lines.append(f"{results['num_images']} images evaluated, {skipped} undecodable skipped")
    return "\n".join(lines)
