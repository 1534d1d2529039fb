"""The DeiT distillation loss: the class head learns from the labels, the distillation head from the teacher.

    loss = (1 - alpha) * base(cls_logits, labels) + alpha * distill(distillation_logits, teacher_logits)

`base` is cross-entropy: with label smoothing for class indices, plain soft-target cross-entropy for per-class
probabilities (mixup/cutmix targets already carry the smoothing, folded in by the collator). `distill` is

- `"soft"`: KL(teacher || student) between the temperature-softened distributions, times tau^2 so gradient
  magnitudes do not shrink with the temperature, summed and divided by `batch * num_classes` as the reference does;
- `"hard"`: cross-entropy of the distillation head against the teacher's argmax (no smoothing on teacher labels);
- `"none"`: no teacher. Here we depart from the reference, which returns `base(cls_logits)` only and leaves the
  distillation head untrained although the model's output averages it in. We train both heads on the labels,
  `(base(cls) + base(dist)) / 2`, which is also what `DistilledDeiTForImageClassification` computes from `labels`.
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DistillationType = Literal["none", "soft", "hard"]
DISTILLATION_TYPES = ("none", "soft", "hard")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against class indices (with label smoothing) or per-class probabilities (mixup/cutmix targets,
    smoothing already folded in)."""
    if labels.is_floating_point() and labels.ndim == 2:
        return torch.sum(-labels * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, labels.long(), label_smoothing=label_smoothing)


@dataclass
class DistillationLossOutput:
    """The total loss and its two terms (for logging). In `"none"` mode `distillation` is the distillation head's
    loss against the labels."""

    loss: torch.Tensor
    cls: torch.Tensor
    distillation: torch.Tensor


class DistillationLoss(nn.Module):
    def __init__(
        self,
        distillation_type: DistillationType = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        label_smoothing: float = 0.1,
    ):
        super().__init__()
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f"distillation_type must be one of {DISTILLATION_TYPES}, got {distillation_type!r}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}.")
        if tau <= 0:
            raise ValueError(f"distillation tau must be positive, got {tau}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.label_smoothing = label_smoothing

    @property
    def needs_teacher(self) -> bool:
        return self.distillation_type != "none"

    def base_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, labels, self.label_smoothing)

    def forward(
        self,
        cls_logits: torch.Tensor,
        distillation_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> DistillationLossOutput:
        # Softmax, logs and sums in float32 even when the model ran under bf16/fp16 autocast.
        with torch.autocast(device_type=cls_logits.device.type, enabled=False):
            cls_logits, distillation_logits = cls_logits.float(), distillation_logits.float()
            # cross_entropy needs int64 indices; collators may hand over int32.
            labels = labels.float() if labels.is_floating_point() else labels.long()
            cls_loss = self.base_loss(cls_logits, labels)

            if self.distillation_type == "none":
                distillation_loss = self.base_loss(distillation_logits, labels)
                return DistillationLossOutput((cls_loss + distillation_loss) / 2, cls_loss, distillation_loss)

            if teacher_logits is None:
                raise ValueError(f"distillation_type={self.distillation_type!r} needs the teacher's logits.")
            teacher_logits = teacher_logits.float()
            if self.distillation_type == "soft":
                T = self.tau
                distillation_loss = F.kl_div(
                    F.log_softmax(distillation_logits / T, dim=1),
                    F.log_softmax(teacher_logits / T, dim=1),
                    reduction="sum",
                    log_target=True,
                ) * (T * T) / distillation_logits.numel()
            else:
                distillation_loss = F.cross_entropy(distillation_logits, teacher_logits.argmax(dim=1))

            loss = (1 - self.alpha) * cls_loss + self.alpha * distillation_loss
            return DistillationLossOutput(loss, cls_loss, distillation_loss)

    def extra_repr(self) -> str:
        return (
            f"distillation_type={self.distillation_type!r}, alpha={self.alpha}, tau={self.tau}, "
            f"label_smoothing={self.label_smoothing}"
        )
