"""DeiT's own term: the class head learns from the labels, the distillation head from the teacher's logits (none,
soft or hard; the formula is `hf_deit.losses.DistillationLoss`'s). Always on, in training and in evaluation."""

import logging

from hf_deit_inputs import terms as declared
from hf_deit_inputs.terms import HARD, NO_DISTILLATION

from ..losses import DistillationLoss
from .base import DistillationTerm, TermBatch, TermLoss

logger = logging.getLogger(__name__)


class LogitTerm(DistillationTerm):
    settings = declared.TERMS["logits"]  # the logits are also read, whatever the type, for pseudo-labels and metrics

    def __init__(self, loss: DistillationLoss):
        super().__init__(weight=1.0)
        self.loss = loss

    @classmethod
    def build(cls, args, student, teacher, probe) -> "LogitTerm":
        kind = args.distillation_type or (HARD if teacher is not None else NO_DISTILLATION)
        if args.distillation_type is None and teacher is None:
            logger.warning("No teacher: the student learns from the labels alone (distillation_type none).")
        return cls(DistillationLoss(kind, args.distillation_alpha, args.distillation_tau, args.label_smoothing_factor,
                                    args.pseudo_label_threshold))  # fmt: skip

    @property
    def log_names(self) -> tuple[str, ...]:
        return ("loss_cls", "loss_distillation")

    def forward(self, batch: TermBatch) -> TermLoss:
        outputs = batch.outputs
        teacher_logits = batch.teacher.logits if batch.teacher is not None else None
        if teacher_logits is not None and teacher_logits.shape[-1] != outputs.cls_logits.shape[-1]:
            raise ValueError(f"The teacher returned {teacher_logits.shape[-1]} logits per image, the student "
                             f"{outputs.cls_logits.shape[-1]}: they must predict the same classes.")  # fmt: skip
        result = self.loss(outputs.cls_logits, outputs.distillation_logits, batch.labels, teacher_logits, batch.labeled)
        return TermLoss(result.loss, {"loss_cls": result.cls, "loss_distillation": result.distillation})
