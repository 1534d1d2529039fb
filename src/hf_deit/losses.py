"""The DeiT distillation loss: the class head learns from the labels, the distillation head from the teacher.

    loss = (1 - alpha) * base(cls_logits, labels) + alpha * distill(distillation_logits, teacher_logits)

`base` is cross-entropy with label smoothing, the one place smoothing is applied: to class indices, and to per-class
probabilities (mixup/cutmix targets), where smoothing the mixed targets equals mixing smoothed ones. `distill` is

- `"soft"`: KL(teacher || student) between the temperature-softened distributions, times tau^2 so gradient
  magnitudes do not shrink with the temperature, summed and divided by `batch * num_classes` as the reference does;
- `"hard"`: cross-entropy of the distillation head against the teacher's argmax (no smoothing on teacher labels);
- `"none"`: no teacher. Here we depart from the reference, which returns `base(cls_logits)` only and leaves the
  distillation head untrained although the model's output averages it in. We train both heads on the labels,
  `(base(cls) + base(dist)) / 2`, which is also what `DistilledDeiTForImageClassification` computes from `labels`.

Unlabelled examples (`labeled` mask False) take their class-head target from the teacher (`pseudo_label_targets`).
A teacher too weak to teach gets a `LabelFallback` (not in the reference): the label replaces its distillation
target on labelled examples. The terms beyond the paper (attention map, features, feature maps) are in
`hf_deit.terms`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hf_deit_inputs.choices import problems
from hf_deit_inputs.terms import EVERY_LABEL, HARD, NO_DISTILLATION, SOFT


@dataclass
class DistillationLossOutput:
    """The total loss and its two terms (for logging). In `"none"` mode `distillation` is the distillation head's
    loss against the labels."""

    loss: torch.Tensor
    cls: torch.Tensor
    distillation: torch.Tensor


class DistillationLoss(nn.Module):
    def __init__(self, distillation_type: str = HARD, alpha: float = 0.5, tau: float = 1.0,
                 label_smoothing: float = 0.1, pseudo_label_threshold: float = 0.0):  # fmt: skip
        super().__init__()
        found = problems({"distillation_type": distillation_type, "distillation_alpha": alpha, "distillation_tau": tau,
                          "label_smoothing_factor": label_smoothing, "pseudo_label_threshold": pseudo_label_threshold})
        if found:  # the settings' rules (hf_deit_inputs.choices), for a loss built without a DistillationConfig
            raise ValueError(" ".join(found))
        self.distillation_type, self.alpha, self.tau = distillation_type, alpha, tau
        self.label_smoothing, self.pseudo_label_threshold = label_smoothing, pseudo_label_threshold
        self.fallback: LabelFallback | None = None  # set by the trainer for a weak teacher (hf_deit.teacher_check)

    @property
    def needs_teacher(self) -> bool:
        return self.distillation_type != NO_DISTILLATION

    def forward(self, cls_logits: torch.Tensor, distillation_logits: torch.Tensor, labels: torch.Tensor,
                teacher_logits: torch.Tensor | None = None, labeled: torch.Tensor | None = None) -> DistillationLossOutput:
        """`labeled`: optional `(batch,)` bool mask, False for examples without a ground-truth label (their `labels`
        row is ignored). The class-head loss is the mean over the examples that have a target, so a batch's loss
        stays a per-batch mean whatever its share of unlabelled examples."""
        # Softmax, logs and sums in float32 even when the model ran under bf16/fp16 autocast.
        with torch.autocast(device_type=cls_logits.device.type, enabled=False):
            cls_logits, distillation_logits = cls_logits.float(), distillation_logits.float()
            labels = labels.float() if labels.is_floating_point() else labels.long()  # int32 from some collators
            teacher_logits = teacher_logits.float() if teacher_logits is not None else None
            if labeled is not None and not bool(labeled.all()):
                if teacher_logits is None:
                    raise ValueError("The batch has unlabelled examples (label -1): their targets come from the "
                                     "teacher, so pass a teacher (and its logits).")
                targets, weights = pseudo_label_targets(labels, labeled, teacher_logits, self.label_smoothing,
                                                        self.pseudo_label_threshold)  # fmt: skip
                base = lambda logits: masked_soft_cross_entropy(logits, targets, weights)  # noqa: E731
            else:
                base = lambda logits: classification_loss(logits, labels, self.label_smoothing)  # noqa: E731
            cls_loss = base(cls_logits)
            if self.distillation_type == NO_DISTILLATION:  # both heads learn from the same targets
                distillation_loss = base(distillation_logits)
                return DistillationLossOutput((cls_loss + distillation_loss) / 2, cls_loss, distillation_loss)
            if teacher_logits is None:
                raise ValueError(f"distillation_type={self.distillation_type!r} needs the teacher's logits.")
            if self.fallback is not None:
                distillation_loss = self.fallback.distill(self, distillation_logits, teacher_logits, labels, labeled)
            elif self.distillation_type == SOFT:
                distillation_loss = soft_distillation(distillation_logits, F.log_softmax(teacher_logits / self.tau, 1),
                                                      self.tau)  # fmt: skip
            else:
                distillation_loss = F.cross_entropy(distillation_logits, teacher_logits.argmax(dim=1))
            loss = (1 - self.alpha) * cls_loss + self.alpha * distillation_loss
            return DistillationLossOutput(loss, cls_loss, distillation_loss)

    def extra_repr(self) -> str:
        return (f"distillation_type={self.distillation_type!r}, alpha={self.alpha}, tau={self.tau}, "
                f"label_smoothing={self.label_smoothing}, pseudo_label_threshold={self.pseudo_label_threshold}")


def soft_distillation(student_logits: torch.Tensor, log_targets: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(targets || student at temperature tau) x tau^2, summed and divided by batch x classes (the reference's)."""
    log_student = F.log_softmax(student_logits / tau, dim=1)
    return F.kl_div(log_student, log_targets, reduction="sum", log_target=True) * (tau * tau) / student_logits.numel()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with label smoothing against class indices or per-class probabilities (mixup/cutmix targets)."""
    if labels.is_floating_point() and labels.ndim == 2:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, labels.long(), label_smoothing=label_smoothing)


def masked_soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Soft-target cross-entropy averaged over the examples with weight 1; zero (still differentiable) when none has
    one, so that a batch of low-confidence unlabelled images adds nothing rather than NaN."""
    per_example = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1)
    return (per_example * weights).sum() / weights.sum().clamp(min=1.0)


def pseudo_label_targets(labels: torch.Tensor, labeled: torch.Tensor, teacher_logits: torch.Tensor,
                         label_smoothing: float, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Class-head targets `(batch, num_classes)` and per-example weights (1 = contributes, 0 = does not).

    Labelled rows keep their ground truth (class ids as one-hot rows, mixup/cutmix targets as they are); unlabelled
    rows get the teacher's hard prediction when its top probability reaches `threshold` (below it they contribute no
    class-head loss). Every row is then label-smoothed, as `cross_entropy` with label smoothing would smooth it.
    """
    num_classes = teacher_logits.shape[-1]
    confidence, pseudo_labels = teacher_logits.softmax(dim=-1).max(dim=-1)
    targets = torch.zeros_like(teacher_logits).scatter_(1, pseudo_labels[:, None], 1.0)
    labeled = labeled.bool()
    targets = torch.where(labeled[:, None], label_rows(labels, num_classes).to(targets.dtype), targets)
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    weights = (labeled | (confidence >= threshold)).float()
    return targets, weights


def label_rows(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as per-class rows: mixup/cutmix targets as they are, class ids one-hot (-1 rows as class 0)."""
    return labels if labels.ndim == 2 else F.one_hot(labels.clamp(min=0), num_classes)


class LabelFallback:
    """The label replaces a weak teacher's distillation target (switched on by the trainer when the teacher is too
    weak to teach, `hf_deit.teacher_check`; not in the reference: it protects the student from a teacher worse than
    the labels). `mode` is `weak_teacher_fallback`'s: `"all"` replaces the target of every labelled example (the
    teacher then teaches the unlabelled ones only), `"where_wrong"` only where the teacher's top class misses the
    label. The label replaces it as its class for `"hard"`, its distribution for `"soft"`; with `"all"` a hard target
    is the label row as it is (a mixed row stays mixed), unsmoothed as hard targets are."""

    def __init__(self, mode: str = EVERY_LABEL):
        self.mode = mode
        self._counts = None  # (labelled examples, of those replaced) since the last `counts()`

    def distill(self, loss: DistillationLoss, distillation_logits: torch.Tensor, teacher_logits: torch.Tensor,
                labels: torch.Tensor, labeled: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        replaced = self.replaced(teacher_logits, labels, labeled)
        num_classes = teacher_logits.shape[-1]
        if loss.distillation_type == SOFT:
            log_targets = F.log_softmax(teacher_logits / loss.tau, dim=1)
            from_labels = label_rows(labels, num_classes).float().clamp(min=1e-8).log()
            return soft_distillation(distillation_logits, torch.where(replaced[:, None], from_labels, log_targets),
                                     loss.tau)  # fmt: skip
        if self.mode == EVERY_LABEL:
            targets = torch.where(replaced[:, None], label_rows(labels, num_classes).float(),
                                  F.one_hot(teacher_logits.argmax(dim=1), num_classes).float())  # fmt: skip
            return torch.sum(-targets * F.log_softmax(distillation_logits, dim=-1), dim=-1).mean()
        label_class = labels.argmax(dim=1) if labels.ndim == 2 else labels
        return F.cross_entropy(distillation_logits, torch.where(replaced, label_class, teacher_logits.argmax(dim=1)))

    def replaced(self, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 labeled: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """`(batch,)` bool: the labelled examples whose target the label replaces. The teacher misses a class id by
        predicting another class; a per-class row (mixup/cutmix, smoothing folded in) by predicting a class with no
        more than the row's floor (the smoothing share), i.e. none of the mixed classes. Counted in training steps
        (gradients on) for `counts`."""
        predicted = teacher_logits.argmax(dim=1)
        if labels.ndim == 2:
            wrong = labels.gather(1, predicted[:, None])[:, 0] <= labels.min(dim=1).values + 1e-6
        else:
            wrong = predicted != labels
        is_labeled = labeled.bool() if labeled is not None else torch.ones_like(wrong)
        if labels.ndim != 2:
            is_labeled = is_labeled & (labels >= 0)
        replaced = is_labeled if self.mode == EVERY_LABEL else wrong & is_labeled
        if torch.is_grad_enabled():  # training steps only: evaluation runs under no_grad
            counts = torch.stack([is_labeled.sum(), replaced.sum()]).detach()
            self._counts = counts if self._counts is None else self._counts + counts
        return replaced

    def counts(self) -> tuple[int, int]:
        """(labelled examples seen, of those whose target fell back to the label) since the last call; resets."""
        counts, self._counts = self._counts, None
        return (0, 0) if counts is None else tuple(int(value) for value in counts.tolist())
