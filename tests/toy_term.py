"""A distillation term from outside the package (tests/test_objective.py): the distillation head's logits keep the
norm of the teacher's. Its declaration comes first, before `hf_deit.arguments` is imported, as a term's must."""

from hf_deit_inputs.choices import Range
from hf_deit_inputs.terms import Setting, TermSettings, declare_term

LOGIT_NORM = declare_term(TermSettings("logit_norm", ("logits",), switch="logit_norm_distillation_weight", settings=(
    Setting("logit_norm_distillation_weight", 0.0, "Weight of the logit-norm term: the distillation head's logits "
            "keep the teacher's norm (0 = off).", range=Range(0.0, 1.0)),
)))  # fmt: skip

from hf_deit.terms import DistillationTerm, TermLoss, register_term  # noqa: E402


@register_term
class LogitNormTerm(DistillationTerm):
    settings = LOGIT_NORM

    @classmethod
    def build(cls, args, student, teacher, probe):
        return cls(args.logit_norm_distillation_weight) if args.logit_norm_distillation_weight > 0 else None

    def read(self, student, outputs, captured, pixel_values):
        return outputs.distillation_logits

    def forward(self, batch):
        value = (batch.signals[self.name].norm(dim=-1) - batch.teacher.logits.norm(dim=-1)).pow(2).mean()
        return TermLoss(value, {"loss_logit_norm": value})
