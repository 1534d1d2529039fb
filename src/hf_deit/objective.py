"""Everything a distilled student learns from, with its weights, in one module: the sum of the active terms.

    loss = DeiT's loss on the two heads                   (logits: none, soft or hard)
         + attention_weight   * attention-map term        (a student token's attention vs the teacher's map)
         + feature_weight     * feature term              (projected student features vs the teacher's pooled ones)
         + feature_map_weight * feature-map term          (projected patch tokens vs a CNN stage output, per position)

Each term is one module of `hf_deit.terms`. `DistillationObjective.build(args, student, teacher)` builds the terms
the settings switch on, sized for a student and a teacher; `student_forward` runs the student and lets each term read
what it needs from that one pass; `teacher_outputs` says what the teacher's pass must give; calling the objective
gives the loss and its named, unweighted terms (`ObjectiveOutput`). The terms beyond DeiT's are training terms: in
evaluation only DeiT's loss is computed, so evaluation losses compare across runs with and without them.

The terms' learnable parts (projections) are parameters of this module. The trainer attaches the objective to the
student while it trains (`student.distillation_objective`), so that the Trainer's optimizer, gradient clipping, DDP
averaging and checkpoints treat them like any other weight; the model it saves holds none of them.
"""

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from hf_deit_inputs import terms as declared
from hf_deit_inputs.terms import TEACHER_OUTPUTS, teacher_needed_by

from .attention_maps import patch_grid
from .configuration_distilled_deit import _pair
from .data.mixup import LABELED_KEY
from .losses import DistillationLoss
from .terms import TERMS, DistillationTerm, TermBatch


@dataclass
class StudentSignals:
    """What the training terms read from the student's forward pass, by term name."""

    grid: tuple[int, int]
    read: dict = field(default_factory=dict)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted: loss_cls, loss_distillation, ...


class DistillationObjective(nn.Module):
    """The sum of distillation terms (`hf_deit.terms`), in registry order; see the module docstring."""

    def __init__(self, terms: list[DistillationTerm]):
        super().__init__()
        self.terms = nn.ModuleDict({term.name: term for term in terms})

    @classmethod
    def build(cls, args, student: nn.Module, teacher=None) -> "DistillationObjective":
        """The objective `args` (a `DistillationConfig`) describes, sized for `student` and `teacher` (a
        `hf_deit.teacher.Teacher`, None for `distillation_type="none"` without one). Learnable parts are built on the
        student's device."""
        if teacher is None:
            given = teacher_needed_by({term.switch: getattr(args, term.switch, None) for term in declared.TERMS.values()})
            if given:
                raise ValueError(f"{', '.join(given)} needs a teacher: pass `teacher=` (a model, a folder or a Hub id) "
                                 "or set teacher_name_or_path, or use distillation_type='none' and weights 0.")
        config = student.config
        probe = torch.zeros(1, config.num_channels, *_pair(config.image_size), device=next(student.parameters()).device)
        terms = [term_class.build(args, student, teacher, probe) for term_class in TERMS.values()]
        return cls([term for term in terms if term is not None])

    @property
    def loss(self) -> DistillationLoss:
        """DeiT's two-head loss (the logits term's)."""
        return self.terms["logits"].loss

    def active_terms(self, training: bool) -> list[DistillationTerm]:
        return [term for term in self.terms.values() if training or not term.training_only]

    @property
    def term_names(self) -> tuple[str, ...]:
        """The names of the values the objective reports in training, in order."""
        return tuple(name for term in self.active_terms(training=True) for name in term.log_names)

    def teacher_outputs(self, training: bool) -> dict[str, tuple[str, ...]]:
        """What each active term needs from the teacher's pass, by term name (fields of
        `hf_deit.teacher.TeacherForwardOutput`): whatever gives these can stand in for the live teacher."""
        return {term.name: term.teacher_outputs for term in self.active_terms(training)}

    def teacher_request(self, extra_terms: bool) -> dict[str, bool]:
        """The keyword arguments of the teacher's forward pass (`hf_deit.teacher.Teacher`) for the active terms."""
        needed = {output for outputs in self.teacher_outputs(extra_terms).values() for output in outputs}
        return {output: output in needed for output in TEACHER_OUTPUTS[1:]}  # the logits come always

    # ---- the student's forward pass ----

    def student_forward(self, model: nn.Module, student: nn.Module, inputs: dict, extra_terms: bool):
        """Run `model` (the student, maybe wrapped by DDP or compiled; `student` is the unwrapped one) on the batch
        and let the training terms (with `extra_terms`) read what they need from the same pass. Returns
        `(outputs, StudentSignals)`."""
        student_inputs = {name: value for name, value in inputs.items() if name not in ("labels", LABELED_KEY)}
        readers = [term for term in self.terms.values() if term.training_only] if extra_terms else []
        for term in readers:
            student_inputs.update(term.student_kwargs(student))
        pixel_values = inputs["pixel_values"]
        signals = StudentSignals(grid=patch_grid(student.config, pixel_values))

        def read_signals(_module, _args, outputs):
            for term in readers:
                signals.read[term.name] = term.read(student, outputs, captured[term.name], pixel_values)
            # Returned with the output: DDP, which looks for unused weights from the output, sees the learnable parts
            # used.
            return outputs, tuple(_tensors(signals.read[term.name] for term in readers if _learns(term)))

        hook = student.register_forward_hook(read_signals) if readers else None
        try:
            with contextlib.ExitStack() as stack:
                captured = {term.name: stack.enter_context(term.capture(student)) for term in readers}
                outputs = model(**student_inputs)
        finally:
            if hook is not None:
                hook.remove()
        if hook is not None:
            outputs, _ = outputs  # (the output, the learnt signals) from read_signals
        if getattr(outputs, "distillation_logits", None) is None:
            raise ValueError(
                f"{type(student).__name__} returned no `distillation_logits`: DistillationTrainer trains models with a "
                "class head and a distillation head, such as DistilledDeiTForImageClassification."
            )
        return outputs, signals

    # ---- the loss ----

    def forward(
        self,
        outputs,
        signals: StudentSignals | None,
        labels: torch.Tensor,
        teacher=None,
        labeled: torch.Tensor | None = None,
    ) -> ObjectiveOutput:
        """The loss of one batch: `outputs` and `signals` from `student_forward`, `teacher` a `TeacherForwardOutput`
        (or None without a teacher). The training terms are added when `signals` carries what they read."""
        read = signals.read if signals is not None else {}
        batch = TermBatch(outputs=outputs, labels=labels, teacher=teacher, labeled=labeled, signals=read,
                          grid=signals.grid if signals is not None else None)
        loss, logged = None, {}
        for term in self.terms.values():
            if term.training_only and term.name not in read:
                continue
            result = term(batch)
            weighted = result.value if term.weight == 1 else term.weight * result.value
            loss = weighted if loss is None else loss + weighted
            logged.update(result.logs)
        return ObjectiveOutput(loss, logged)


def _learns(term: nn.Module) -> bool:
    return any(True for _ in term.parameters())


def _tensors(values):
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)
