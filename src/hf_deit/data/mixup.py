"""Mixup and CutMix: the collator that stacks transformed examples into a batch and mixes it (DeiT's recipe,
with unlabelled rows kept apart from ground truth); label smoothing is the loss's."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from hf_deit_inputs.choices import problems

from .transforms import BadImageError
from ..arguments import AugmentationArguments


# The batch key of the (batch,) bool mask that marks labelled rows (False: an image the teacher labels), when a batch
# has unlabelled images; read by the loss (hf_deit.objective).
LABELED_KEY = "labeled"

class MixupCutmixCollator:
    """Collate examples into a batch and mix it as the DeiT recipe (timm's `Mixup`, mode "batch").

    One lambda per batch from Beta(alpha, alpha); with probability `switch_prob` CutMix (a box of area ~(1-lambda)
    pasted from the flipped batch, lambda then corrected to the box's actual area, which clipping at the border
    shrinks) else mixup (`lam * x + (1 - lam) * x.flip(0)`). The targets mix the same way:
    `lam * y + (1 - lam) * y.flip(0)` with `y` the one-hot labels (the loss smooths them, whatever their form). A batch
    left unmixed (probability `1 - prob`) still gets one-hot targets, so `labels` always has one type. With both
    alphas 0 (or prob 0) the batch is only stacked and `labels` stay class ids.

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
    unmixed batches and soft targets for mixed ones), and with no way to fix lambda for
    checking. The mixing itself is three tensor lines; owning it keeps the recipe visible.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        generator: Optional[torch.Generator] = None,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        # The ranges of the flags these come from (--mixup, --cutmix, --mixup_switch_prob, --mixup_prob).
        found = problems({"mixup": mixup_alpha, "cutmix": cutmix_alpha, "mixup_switch_prob": switch_prob, "mixup_prob": prob})
        if found:
            raise ValueError(" ".join(found))
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.prob = prob
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
            batch[LABELED_KEY] = labeled
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
        """`lam * one_hot + (1 - lam) * one_hot.flip(0)`. Label smoothing is the loss's (`hf_deit.losses`): smoothing
        these mixed targets there equals mixing smoothed ones, as timm's `mixup_target` does."""
        one_hot = torch.zeros(len(labels), self.num_classes).scatter_(1, labels[:, None], 1.0)
        return one_hot * lam + one_hot.flip(0) * (1.0 - lam)

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
    )

