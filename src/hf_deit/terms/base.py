"""What a distillation term is: the protocol every term module implements, and the registry of terms.

A term is an `nn.Module` (its learnable parts, such as projections, are its submodules) that says

    settings          its declaration (`hf_deit_inputs.terms.TermSettings`, torch-free): its name (its key in
                      `TERMS`; its value is logged as `loss_<name>`), its settings (`DistillationConfig` fields), what
                      it needs from the teacher's pass (`teacher_outputs`: fields of
                      `hf_deit.teacher.TeacherForwardOutput`; whatever gives them, the live teacher or outputs recorded
                      earlier, can stand in for the teacher) and whether it is computed in training only
    build(args, student, teacher, probe)
                      the term `args` describe, sized for the student and the teacher, or None when it is off
    student_kwargs(student), capture(student), read(student, outputs, captured, pixel_values)
                      what it asks of the student's forward pass and what it reads from it, inside that pass
    forward(batch)    its loss on a `TermBatch`: a `TermLoss` (the value the objective adds, times `weight`, and its
                      named values for the logs)

`register_term` adds a term class to `TERMS`, whose order is the order the objective sums the terms in.
"""

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hf_deit_inputs import terms as declared
from hf_deit_inputs.terms import TermSettings

# The student's tokens before its patches: cls and dist.
NUM_PREFIX_TOKENS = 2


@dataclass
class TermBatch:
    """What the terms see of one batch."""

    outputs: Any  # the student's output: cls_logits, distillation_logits, ...
    labels: torch.Tensor
    teacher: Any = None  # a TeacherForwardOutput with what the active terms asked for, or None
    labeled: torch.Tensor | None = None  # (batch,) bool, False for unlabelled examples
    signals: dict[str, Any] = field(default_factory=dict)  # what each term read from the student's pass, by name
    grid: tuple[int, int] | None = None  # the student's patch grid


@dataclass
class TermLoss:
    value: torch.Tensor  # added to the objective's loss, times the term's weight
    logs: dict[str, torch.Tensor]  # named, unweighted values for the logs


class DistillationTerm(nn.Module):
    """The base of every distillation term (see the module docstring)."""

    settings: ClassVar[TermSettings]
    name: ClassVar[str]  # the rest from `settings`
    teacher_outputs: ClassVar[tuple[str, ...]]
    training_only: ClassVar[bool]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "settings" in cls.__dict__:
            cls.name, cls.teacher_outputs = cls.settings.name, cls.settings.teacher_outputs
            cls.training_only = cls.settings.training_only

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    @classmethod
    def build(cls, args, student: nn.Module, teacher, probe: torch.Tensor) -> "DistillationTerm | None":
        raise NotImplementedError

    @property
    def log_names(self) -> tuple[str, ...]:
        return (f"loss_{self.name}",)

    # ---- the student's forward pass: what the term asks for and reads ----

    def student_kwargs(self, student: nn.Module) -> dict:
        """Keyword arguments the student's forward pass needs for this term (e.g. output_hidden_states=True)."""
        return {}

    def capture(self, student: nn.Module) -> contextlib.AbstractContextManager:
        """A context around the student's forward pass; what it yields is handed to `read` as `captured`."""
        return contextlib.nullcontext({})

    def read(self, student: nn.Module, outputs, captured, pixel_values: torch.Tensor):
        """What the term needs from the student's output; runs inside the student's call, so that learnable parts
        applied here take part in its forward pass (DDP averages their gradients as the student's)."""
        return None

    def forward(self, batch: TermBatch) -> TermLoss:
        raise NotImplementedError


TERMS: dict[str, type[DistillationTerm]] = {}


def register_term(term_class: type[DistillationTerm]) -> type[DistillationTerm]:
    """Adds a term class to `TERMS` (last in the sum); usable as a class decorator. Its `settings`
    must be declared (`hf_deit_inputs.terms.declare_term`), so that the configuration has its fields."""
    settings = getattr(term_class, "settings", None)
    if settings is None or declared.TERMS.get(settings.name) is not settings:
        raise ValueError(f"{term_class.__qualname__}.settings must be a term declared with "
                         "hf_deit_inputs.terms.declare_term, before hf_deit.arguments is imported.")
    if term_class.name in TERMS and TERMS[term_class.name] is not term_class:
        raise ValueError(f"A distillation term named {term_class.name!r} is registered already: "
                         f"{TERMS[term_class.name].__module__}.{TERMS[term_class.name].__qualname__}.")  # fmt: skip
    TERMS[term_class.name] = term_class
    return term_class


def resize_to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`(batch, channels, h, w)` maps resampled to `grid`: area average when shrinking, bilinear when growing."""
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    if maps.shape[-2] >= grid[0] and maps.shape[-1] >= grid[1]:
        return F.adaptive_avg_pool2d(maps, grid)
    return F.interpolate(maps, size=tuple(grid), mode="bilinear", align_corners=False)


def check_layers(name: str, layers, depth: int) -> None:
    for index in layers:
        if not -depth <= index < depth:
            raise ValueError(f"{name} has {index}, but the student has {depth} blocks.")
