"""Is the teacher worth learning from? Measured before the student's first step, and what to do when it is not.

DeiT's premise is a teacher better than the labels it stands in for. On a user's own small folder it may not be: a
briefly trained CNN can be wrong on many of the images, and hard distillation then teaches the student its mistakes.
`check_teacher` measures the teacher on the labelled training images and on the validation images (evaluation
transform, no augmentation), and `TeacherReport` judges it with one bar, `min_teacher_accuracy`: below it on the
training images, its targets there are worse than the labels they replace; below it on the validation images, it
is worse than that on everything else it labels for the student, the augmented views of the training images and
the unlabelled images, which are new to it too. Either way it is `weak`, and the protection
(`protect_from_weak_teacher`, on by default) is `hf_deit.losses.LabelFallback` on the labelled images (the
distillation head learns the label of every one, `weak_teacher_fallback="all"`, or of those where the teacher is
wrong, `"where_wrong"`) and, with unlabelled training images, `DistillationTrainer.leave_out_unlabeled_images`.

The validation accuracy is judged, not only reported, because of what it measured: a teacher right on 100% of its
training photos and 90% of new ones pulled the student under the student alone, unprotected, by seven of forty images
(docs/results.md, "The teacher check on an unlabelled pool"), where another (99% and 86% on textures) had lifted one
(docs/results.md, "Your own small folder"). Protected, the student is the student alone.
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from hf_deit_inputs.terms import EVERY_LABEL

logger = logging.getLogger(__name__)

# The most training images measured (a seeded sample beyond it): a teacher check is a few seconds, not an epoch.
MAX_CHECKED_IMAGES = 5000
CHECK_BATCH_SIZE = 64


@dataclass
class TeacherReport:
    """The teacher's accuracy on the labelled training images and the validation images, per class on training, and
    how many unlabelled training images (the pool) it labels."""

    train_accuracy: float
    num_train_images: int
    validation_accuracy: float | None = None
    num_validation_images: int = 0
    train_class_accuracy: dict[str, float] = field(default_factory=dict)
    min_accuracy: float = 0.95
    num_unlabeled_images: int = 0

    @property
    def weak(self) -> bool:
        """Below `min_accuracy` on the labelled training images, where the hard targets it would give the distillation
        head are worse than the labels they replace, or on the validation images, which stand for what else it
        labels: the augmented views of the training images and the unlabelled images, new to it too."""
        return self.train_accuracy < self.min_accuracy or (
            self.validation_accuracy is not None and self.validation_accuracy < self.min_accuracy)

    @property
    def generalises_poorly(self) -> bool:
        """At the bar on its training images, under it on the validation images."""
        return self.weak and self.train_accuracy >= self.min_accuracy

    def summary(self) -> str:
        text = f"{self.train_accuracy:.1%} of {self.num_train_images} labelled training images"
        if self.validation_accuracy is not None:
            text += f", {self.validation_accuracy:.1%} of {self.num_validation_images} validation images"
        return text

    def worst_classes(self, count: int = 3) -> str:
        worst = sorted(self.train_class_accuracy.items(), key=lambda item: item[1])[:count]
        return ", ".join(f"{name} {accuracy:.0%}" for name, accuracy in worst if accuracy < 1.0)

    def findings(self, protected: bool, fallback: str = EVERY_LABEL) -> list[tuple[int, str]]:
        """What the check found, as (logging level, message)."""
        if self.weak:
            return [(logging.WARNING, self.message(protected, fallback))]
        found = [(logging.INFO, f"Teacher checked before training: right on {self.summary()}.")]
        if self.num_unlabeled_images and self.validation_accuracy is None:
            found.append((logging.INFO, f"The teacher's labels for the {self.num_unlabeled_images} unlabelled "
                          "training images are judged on its training images alone: with validation images "
                          "(--validation_dir or --train_val_split) the check would judge them on new images."))
        return found

    def message(self, protected: bool, fallback: str = EVERY_LABEL) -> str:
        """The warning for a weak teacher: `verdict` and the fix."""
        return self.verdict(protected, fallback) + (
            " Fix: train a better teacher (scripts/train_teacher.py with its default schedule, at least 300 steps, "
            "keeps its best checkpoint; more labelled images), or train without one (--distillation_type none).")

    def verdict(self, protected: bool, fallback: str = EVERY_LABEL) -> str:
        """A weak teacher's numbers and what the run does about it (`protected`: `protect_from_weak_teacher`;
        `fallback`: `weak_teacher_fallback`); the model card states it too."""
        if self.generalises_poorly:
            gap = 100 * (self.train_accuracy - self.validation_accuracy)
            text = (f"The teacher fits its training images but generalises poorly: it is right on {self.summary()} "
                    f"({gap:.1f} points lower on new images; needed: {self.min_accuracy:.0%} of both). What it "
                    "labels for the student, augmented views and unlabelled images, is new to it too. ")
        else:
            worst = self.worst_classes()
            text = (f"The teacher is too weak to teach: it is right on {self.summary()} (needed: "
                    f"{self.min_accuracy:.0%} of the training images, or its targets there are worse than the labels "
                    "they replace)" + (f"; worst classes on training: {worst}" if worst else "") + ". ")
        pool = self.num_unlabeled_images
        if protected:
            text += ("Protected (protect_from_weak_teacher): the distillation head learns the labels of the labelled "
                     "images, as without a teacher" if fallback == EVERY_LABEL else
                     "Protected (protect_from_weak_teacher, weak_teacher_fallback where_wrong): where it is wrong on a "
                     "labelled image, the distillation head learns the label instead")  # fmt: skip
            return text + (f"; the {pool} unlabelled training images are left out, and the student trains on the "
                           "labelled ones for the steps the run was sized to." if pool else ".")
        return text + ("protect_from_weak_teacher is off: the distillation head learns its mistakes"
                       + (f", on the {pool} unlabelled training images too." if pool else "."))


def eval_transform_of(processor):
    """The evaluation transform a `deit_image_processor` describes (shortest-edge resize, center crop, normalise), as
    `hf_deit.data.build_eval_transform` builds it; None without a processor of that kind."""
    from .data.transforms import eval_transform

    size, crop = getattr(processor, "size", None) or {}, getattr(processor, "crop_size", None) or {}
    if "shortest_edge" not in size or "height" not in crop:
        return None
    return eval_transform(size["shortest_edge"], crop["height"], processor.image_mean, processor.image_std)


def labelled_view(dataset, transform, seed: int):
    """The labelled rows of a map-style `datasets.Dataset` (label >= 0) with `transform` (a per-image transform such
    as the evaluation transform) in place of the one it carries; at most `MAX_CHECKED_IMAGES`, a seeded sample. None
    for a stream or a dataset without `image`/`label` columns."""
    from .data import make_batch_transform

    if not hasattr(dataset, "with_format") or not hasattr(dataset, "__len__"):
        return None
    raw = dataset.with_format(None)
    if "image" not in raw.column_names or "label" not in raw.column_names:
        return None
    indices = np.flatnonzero(np.asarray(raw["label"]) >= 0)
    if len(indices) > MAX_CHECKED_IMAGES:
        indices = np.sort(np.random.default_rng(seed).choice(indices, MAX_CHECKED_IMAGES, replace=False))
    return raw.select(indices).with_transform(make_batch_transform(transform, skip_bad_images=True))


@torch.no_grad()
def teacher_accuracy(predict, dataset, num_classes: int, device):
    """(accuracy, images, per-class accuracy array) of `predict` (student-normalised pixel values -> logits in the
    student's class order) on `dataset` (items with `pixel_values` and `labels`). Undecodable images are left out."""
    correct = np.zeros(num_classes)
    total = np.zeros(num_classes)
    for start in range(0, len(dataset), CHECK_BATCH_SIZE):
        batch = dataset[start:start + CHECK_BATCH_SIZE]
        kept = [i for i, pixels in enumerate(batch["pixel_values"]) if pixels is not None]
        if not kept:
            continue
        pixels = torch.stack([batch["pixel_values"][i] for i in kept]).to(device)
        labels = np.asarray([batch["labels"][i] for i in kept])
        predictions = predict(pixels).argmax(dim=-1).cpu().numpy()
        np.add.at(total, labels, 1)
        np.add.at(correct, labels, predictions == labels)
    count = int(total.sum())
    per_class = np.divide(correct, total, out=np.full(num_classes, np.nan), where=total > 0)
    return (float(correct.sum() / count) if count else float("nan")), count, per_class


def check_teacher(predict, train_dataset, eval_dataset, transform, label_names, min_accuracy: float, device,
                  seed: int) -> TeacherReport | None:  # fmt: skip
    """Measures `predict` (see `teacher_accuracy`) on the labelled training images and the evaluation images, both
    through `transform` (the evaluation transform), and counts the unlabelled training images (label -1). None when
    the training set cannot be read that way (a stream)."""
    train = labelled_view(train_dataset, transform, seed)
    if train is None or len(train) == 0:
        return None
    accuracy, count, per_class = teacher_accuracy(predict, train, len(label_names), device)
    report = TeacherReport(accuracy, count, min_accuracy=min_accuracy, train_class_accuracy={
        str(name): float(value) for name, value in zip(label_names, per_class) if not np.isnan(value)},
        num_unlabeled_images=int((np.asarray(train_dataset.with_format(None)["label"]) < 0).sum()))  # fmt: skip
    validation = labelled_view(eval_dataset, transform, seed)  # None without evaluation images
    if validation is not None and len(validation):
        report.validation_accuracy, report.num_validation_images, _ = teacher_accuracy(
            predict, validation, len(label_names), device=device)
    return report


def which_head(metrics: dict, prefix: str = "eval_", num_examples: int | None = None) -> str | None:
    """The end-of-run advice: which of the student's outputs to use, from the evaluation metrics, and why. A single
    head is advised over the averaged one only when it leads by more than the evaluation's noise: two standard errors
    of the averaged accuracy on `num_examples` images, and at least two images (1 point when the count is unknown)."""
    from .metrics import HEAD_PREFIXES

    names = {"": "`logits` (the averaged heads; pipeline() uses it)", HEAD_PREFIXES[1]: "`cls_logits` (class head)",
             HEAD_PREFIXES[2]: "`distillation_logits` (distillation head)"}  # fmt: skip
    scores = {head: metrics.get(f"{prefix}{head}accuracy") for head in names}
    scores = {head: value for head, value in scores.items() if value is not None}
    if "" not in scores or len(scores) < 2:
        return None
    averaged = scores[""]
    margin = 0.01 if not num_examples else max(2 / num_examples,
                                               2 * math.sqrt(averaged * (1 - averaged) / num_examples))  # fmt: skip
    leader = max(scores, key=scores.get)
    # The averaged output stays the advice unless a head clearly beats it: it is what pipeline() and the Hub use.
    choice = leader if scores[leader] - averaged > margin else ""
    listed = ", ".join(f"{names[head].split(' ')[0]} {value:.1%}" for head, value in scores.items())
    reason = (f"it beats the averaged heads by {scores[choice] - averaged:.1%}" if choice else
              "it scores as well as either head" if averaged >= scores[leader] else
              f"the heads differ by less than this evaluation can tell apart ({margin:.1%})")
    teacher = metrics.get(f"{prefix}teacher_accuracy")
    teacher_text = f"; the teacher scores {teacher:.1%}" if teacher is not None else ""
    return f"Which head to use, on the evaluation images: {names[choice]}: {reason} ({listed}{teacher_text})."
