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

Unlabelled examples (`labeled` mask False; see `DistillationLoss.forward`) take their class-head target from the
teacher. The terms beyond the paper (attention map, features, feature maps) are in `hf_deit.terms`.

With `label_fallback` (switched on by the trainer for a teacher too weak to teach, `hf_deit.teacher_check`; "all":
every labelled example, see `DistillationConfig.weak_teacher_fallback`), the
distillation target of a labelled example whose label the teacher gets wrong is the label: its class for `"hard"`,
its distribution for `"soft"`. Not in the reference: it protects the student from a teacher worse than the labels.
"""

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

from hf_deit_inputs.choices import EVERY_LABEL, NO_DISTILLATION, SOFT, problems



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
        distillation_type: str = "hard",
        alpha: float = 0.5,
        tau: float = 1.0,
        label_smoothing: float = 0.1,
        pseudo_label_threshold: float = 0.0,
    ):
        super().__init__()
        found = problems({"distillation_type": distillation_type, "distillation_alpha": alpha, "distillation_tau": tau,
                          "label_smoothing_factor": label_smoothing, "pseudo_label_threshold": pseudo_label_threshold})
        if found:  # the settings' rules (hf_deit_inputs.choices), for a loss built without a DistillationConfig
            raise ValueError(" ".join(found))
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.label_smoothing = label_smoothing
        self.pseudo_label_threshold = pseudo_label_threshold
        # Set by the trainer when the teacher is too weak (hf_deit.teacher_check); the counts are of labelled
        # examples and of those whose distillation target fell back to the label, since the last `fallback_counts()`.
        self.label_fallback = False
        self._fallback_counts = None

    @property
    def needs_teacher(self) -> bool:
        return self.distillation_type != NO_DISTILLATION

    def base_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, labels, self.label_smoothing)

    def pseudo_label_targets(
        self, labels: torch.Tensor, labeled: torch.Tensor, teacher_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-head targets `(batch, num_classes)` and per-example weights (1 = contributes, 0 = does not).

        Labelled rows keep their ground truth (class ids as one-hot rows, mixup/cutmix targets as they are);
        unlabelled rows get the teacher's hard prediction when its top probability reaches `pseudo_label_threshold`
        (below it they contribute no class-head loss). Every row is then label-smoothed, as `cross_entropy` with
        label smoothing would smooth it.
        """
        num_classes = teacher_logits.shape[-1]
        teacher_probabilities = teacher_logits.softmax(dim=-1)
        confidence, pseudo_labels = teacher_probabilities.max(dim=-1)
        targets = torch.zeros_like(teacher_logits).scatter_(1, pseudo_labels[:, None], 1.0)
        labeled = labeled.bool()
        if labels.is_floating_point() and labels.ndim == 2:
            targets = torch.where(labeled[:, None], labels, targets)
        else:
            ground_truth = labels.clamp(min=0)  # -1 rows are replaced below; clamp keeps scatter in range
            one_hot = torch.zeros_like(teacher_logits).scatter_(1, ground_truth[:, None], 1.0)
            targets = torch.where(labeled[:, None], one_hot, targets)
        targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        weights = (labeled | (confidence >= self.pseudo_label_threshold)).float()
        return targets, weights

    def forward(
        self,
        cls_logits: torch.Tensor,
        distillation_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        labeled: torch.Tensor | None = None,
    ) -> DistillationLossOutput:
        """`labeled`: optional `(batch,)` bool mask, False for examples without a ground-truth label (their `labels`
        row is ignored: -1 for class ids, anything for soft targets). Their class-head target is then the teacher's
        prediction (see `pseudo_label_targets`); the distillation head learns from the teacher as for every example.
        The class-head loss is the mean over the examples that have a target, so a batch's loss stays a per-batch
        mean whatever its share of unlabelled examples."""
        # Softmax, logs and sums in float32 even when the model ran under bf16/fp16 autocast.
        with torch.autocast(device_type=cls_logits.device.type, enabled=False):
            cls_logits, distillation_logits = cls_logits.float(), distillation_logits.float()
            # cross_entropy needs int64 indices; collators may hand over int32.
            labels = labels.float() if labels.is_floating_point() else labels.long()
            if labeled is not None and not bool(labeled.all()):
                if teacher_logits is None:
                    raise ValueError("The batch has unlabelled examples (label -1): their targets come from the "
                                     "teacher, so pass a teacher (and its logits).")
                targets, weights = self.pseudo_label_targets(labels, labeled, teacher_logits.float())
                cls_loss = masked_soft_cross_entropy(cls_logits, targets, weights)
                if self.distillation_type == NO_DISTILLATION:  # both heads learn from the same targets
                    distillation_loss = masked_soft_cross_entropy(distillation_logits, targets, weights)
                    return DistillationLossOutput((cls_loss + distillation_loss) / 2, cls_loss, distillation_loss)
            else:
                cls_loss = self.base_loss(cls_logits, labels)

            if self.distillation_type == NO_DISTILLATION:
                distillation_loss = self.base_loss(distillation_logits, labels)
                return DistillationLossOutput((cls_loss + distillation_loss) / 2, cls_loss, distillation_loss)

            if teacher_logits is None:
                raise ValueError(f"distillation_type={self.distillation_type!r} needs the teacher's logits.")
            teacher_logits = teacher_logits.float()
            wrong = self.teacher_wrong(teacher_logits, labels, labeled) if self.label_fallback else None
            if self.distillation_type == SOFT:
                T = self.tau
                log_targets = F.log_softmax(teacher_logits / T, dim=1)
                if wrong is not None:  # the label's distribution (class ids as one-hot rows) where the teacher errs
                    label_rows = labels if labels.ndim == 2 else F.one_hot(labels.clamp(min=0), log_targets.shape[-1])
                    log_targets = torch.where(wrong[:, None], label_rows.float().clamp(min=1e-8).log(), log_targets)
                distillation_loss = F.kl_div(
                    F.log_softmax(distillation_logits / T, dim=1),
                    log_targets,
                    reduction="sum",
                    log_target=True,
                ) * (T * T) / distillation_logits.numel()
            elif wrong is not None and self.label_fallback == EVERY_LABEL:
                # Every labelled example learns its label as it is (a mixed row stays mixed), unsmoothed as hard
                # targets are; the teacher's argmax teaches the unlabelled ones.
                label_rows = labels if labels.ndim == 2 else F.one_hot(labels.clamp(min=0), teacher_logits.shape[-1])
                targets = torch.where(wrong[:, None], label_rows.float(), F.one_hot(teacher_logits.argmax(dim=1),
                                                                                     teacher_logits.shape[-1]).float())
                distillation_loss = torch.sum(-targets * F.log_softmax(distillation_logits, dim=-1), dim=-1).mean()
            else:
                targets = teacher_logits.argmax(dim=1)
                if wrong is not None:
                    label_class = labels.argmax(dim=1) if labels.ndim == 2 else labels
                    targets = torch.where(wrong, label_class, targets)
                distillation_loss = F.cross_entropy(distillation_logits, targets)

            loss = (1 - self.alpha) * cls_loss + self.alpha * distillation_loss
            return DistillationLossOutput(loss, cls_loss, distillation_loss)

    def teacher_wrong(
        self, teacher_logits: torch.Tensor, labels: torch.Tensor, labeled: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`(batch,)` bool: labelled examples whose label the teacher's top class misses. For class ids, a different
        class; for per-class targets (mixup/cutmix, smoothing folded in), a class with no more than the row's floor
        (the smoothing share), i.e. none of the mixed classes. Counted for `fallback_counts` (training: with
        gradients on)."""
        predicted = teacher_logits.argmax(dim=1)
        if labels.ndim == 2:
            on_predicted = labels.gather(1, predicted[:, None])[:, 0]
            wrong = on_predicted <= labels.min(dim=1).values + 1e-6
        else:
            wrong = predicted != labels
        is_labeled = labeled.bool() if labeled is not None else torch.ones_like(wrong)
        if labels.ndim != 2:
            is_labeled = is_labeled & (labels >= 0)
        wrong = is_labeled if self.label_fallback == EVERY_LABEL else wrong & is_labeled
        if torch.is_grad_enabled():  # training steps only: evaluation runs under no_grad
            counts = torch.stack([is_labeled.sum(), wrong.sum()]).detach()
            self._fallback_counts = counts if self._fallback_counts is None else self._fallback_counts + counts
        return wrong

    def fallback_counts(self) -> tuple[int, int]:
        """(labelled examples seen, of those whose target fell back to the label) since the last call; resets."""
        counts, self._fallback_counts = self._fallback_counts, None
        return (0, 0) if counts is None else tuple(int(value) for value in counts.tolist())

    def extra_repr(self) -> str:
        return (
            f"distillation_type={self.distillation_type!r}, alpha={self.alpha}, tau={self.tau}, "
            f"label_smoothing={self.label_smoothing}, pseudo_label_threshold={self.pseudo_label_threshold}"
        )
