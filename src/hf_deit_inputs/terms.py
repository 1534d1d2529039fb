"""What each distillation term needs, declared once (standard library only): its settings and its teacher outputs.

A term (`hf_deit.terms`: the loss that imports torch) is declared here as data, so that everything that needs to know
about it before torch loads reads the same declaration:

    the configuration    `hf_deit.arguments.DistillationConfig` has a field per declared setting (type, default, help)
    --help               train.py's "Distillation" group lists the declared settings (`hf_deit_inputs.help`)
    the early checks     choices and ranges (`hf_deit_inputs.choices.problem`), and `teacher_needed_by`: the
                         settings that switch on a term that learns from a teacher, refused without one
    the objective        its teacher request (`TEACHER_OUTPUTS`), and the same "needs a teacher" rule

A term from outside the package is declared with `declare_term` before `hf_deit.arguments` is imported (its fields
are made from the declarations when it is), then its loss registered with `hf_deit.terms.register_term`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .choices import NON_NEGATIVE as _NON_NEGATIVE, PROBABILITY as _PROBABILITY, Range, as_number

# What a teacher's pass can give (hf_deit.teacher.TeacherForwardOutput): the logits always, the others on request.
TEACHER_OUTPUTS = ("logits", "attention_map", "features", "stage_maps")

# The choices code compares with, by name (never a copy of the string).
NO_DISTILLATION, SOFT, HARD = DISTILLATION_TYPES = ("none", "soft", "hard")
EVERY_LABEL, WHERE_WRONG = WEAK_TEACHER_FALLBACKS = ("all", "where_wrong")
KL, MSE, COSINE = "kl", "mse", "cosine"
PATCHES = "patches"


@dataclass(frozen=True)
class Setting:
    """One setting of a term: a `DistillationConfig` field and a flag of train.py."""

    name: str
    default: Any
    help: str
    type: Any = None  # the field's annotation; default: the default's type
    choices: tuple[str, ...] = ()
    range: Optional[Range] = None

    @property
    def annotation(self):
        return self.type or type(self.default)


@dataclass(frozen=True)
class TermSettings:
    """A term's declaration: its name (`loss_<name>` in the logs), what it reads from the teacher, its settings, and
    the setting that switches it on: the term is on unless that setting holds `off` (or None: left to a default)."""

    name: str
    teacher_outputs: tuple[str, ...]
    settings: tuple[Setting, ...]
    switch: str
    off: Any = 0.0
    training_only: bool = True  # computed in training only, so that evaluation losses compare across runs

    def is_on(self, value) -> bool:
        """Whether the switch's `value` (typed, or text as typed on a command line) turns the term on. A value that is
        no choice or no number turns nothing on: the setting's own check says what is wrong with it."""
        if value is None:
            return False
        if isinstance(self.off, str):
            switch = next(item for item in self.settings if item.name == self.switch)
            return value != self.off and value in switch.choices
        try:
            return float(value) != self.off
        except (TypeError, ValueError):
            return False


TERMS: dict[str, TermSettings] = {}  # in the order the objective sums them
_fields_made = False  # DistillationFlags' fields are made from the declarations (`settings_made_fields`)


def declare_term(term: TermSettings) -> TermSettings:
    """Adds a term's declaration (last in the sum). Its settings become `DistillationFlags` fields when
    `hf_deit_inputs.flags` is imported, so a term declared after that is refused."""
    if _fields_made:
        raise RuntimeError(f"Declare the term {term.name!r} before importing hf_deit.arguments (or "
                           "hf_deit_inputs.flags): the settings' fields are made from the declarations then.")
    if term.name in TERMS and TERMS[term.name] != term:
        raise ValueError(f"A distillation term named {term.name!r} is declared already.")
    unknown = set(term.teacher_outputs) - set(TEACHER_OUTPUTS)
    if unknown:
        raise ValueError(f"Term {term.name!r} reads {sorted(unknown)}; a teacher gives {', '.join(TEACHER_OUTPUTS)}.")
    taken = {item.name for other in TERMS.values() if other.name != term.name for item in other.settings}
    clashes = sorted(taken & {item.name for item in term.settings})
    if clashes:
        raise ValueError(f"Term {term.name!r} declares settings of another term: {', '.join(clashes)}.")
    TERMS[term.name] = term
    return term


def setting(name: str) -> Optional[Setting]:
    """The declared setting `name`, or None."""
    return next((item for term in TERMS.values() for item in term.settings if item.name == name), None)


def term_settings() -> list[Setting]:
    return [item for term in TERMS.values() for item in term.settings]


def settings_made_fields() -> list[Setting]:
    """`term_settings()`, for `DistillationFlags` to make its fields from: later declarations are refused."""
    global _fields_made
    _fields_made = True
    return term_settings()


def teacher_needed_by(values: Mapping) -> list[str]:
    """The settings in `values` (name -> value, typed or as typed; a setting not there was not given) that learn
    from a teacher, each as "name value": a term switched on that reads the teacher, and unlabelled training images,
    which the teacher labels. The one rule for the early checks, the objective and the scripts."""
    needed = [f"{term.switch} {values[term.switch]}" for term in TERMS.values()
              if term.teacher_outputs and term.is_on(values.get(term.switch))]  # fmt: skip
    fraction = values.get("labeled_fraction")
    if fraction is not None and as_number(fraction, whole=False) != 1.0:
        needed.append(f"labeled_fraction {fraction} (the teacher labels the rest)")
    needed += [f"{name} (the teacher labels those images)" for name in ("unlabeled_train_dir", "unlabeled_dataset_name")
               if values.get(name) is not None]  # fmt: skip
    return needed


# ---- the package's terms ----

declare_term(TermSettings(
    "logits", ("logits",), switch="distillation_type", off=NO_DISTILLATION, training_only=False, settings=(
        Setting("distillation_type", None, "none, soft or hard (paper: hard). Default: hard with a teacher (or its "
                "recorded outputs), else none.", Optional[str], DISTILLATION_TYPES),
        Setting("distillation_alpha", 0.5, "Weight of the distillation term (paper 0.5).", range=_PROBABILITY),
        Setting("distillation_tau", 1.0, "Temperature of soft distillation (paper 1.0).",
                range=Range(0.0, low_open=True)),
        Setting("pseudo_label_threshold", 0.0, "Unlabelled images train the class head on the teacher's label when "
                "its probability reaches this (0 = always).", range=_PROBABILITY),
        # A teacher too weak to teach (hf_deit.teacher_check): measured before the first step
        Setting("protect_from_weak_teacher", True, "Before training, the teacher is measured on the labelled "
                "training images and the validation images; when it is right on fewer than --min_teacher_accuracy "
                "of either, a warning says so and (this flag) the labels replace its targets on labelled images "
                "(--weak_teacher_fallback) and unlabelled training images are left out. false: it teaches its "
                "mistakes."),
        Setting("weak_teacher_fallback", EVERY_LABEL, "What protection does on the labelled images: 'all' (the label "
                "on every labelled image) or 'where_wrong' (the label where the teacher is wrong, its target "
                "elsewhere).", choices=WEAK_TEACHER_FALLBACKS),
        Setting("min_teacher_accuracy", 0.95, "The teacher's accuracy (no augmentation) on the labelled training "
                "images, where its targets replace the labels, and on the validation images, which stand for the "
                "new images it labels (augmented views, unlabelled images), below which it is too weak to teach.",
                range=_PROBABILITY),
    )))  # fmt: skip
declare_term(TermSettings("attention", ("attention_map",), switch="attention_distillation_weight", settings=(
    Setting("attention_distillation_weight", 0.0, "Weight of the attention-map term: student attention vs teacher map "
            "(0 = off).", range=_NON_NEGATIVE),
    Setting("attention_distillation_layers", [-1], "Student blocks whose attention is distilled (-1 = last).",
            list[int]),
    Setting("attention_distillation_token", "dist", "Student token whose attention is distilled: cls, dist or both.",
            choices=("cls", "dist", "both")),
    Setting("attention_distillation_loss", KL, "Attention-map distance: kl or mse.", choices=(KL, MSE)),
)))  # fmt: skip
declare_term(TermSettings("feature", ("features",), switch="feature_distillation_weight", settings=(
    Setting("feature_distillation_weight", 0.0, "Weight of the feature term: projected student vs teacher features "
            "(0 = off).", range=_NON_NEGATIVE),
    Setting("feature_distillation_loss", COSINE, "Feature distance: cosine or mse.", choices=(COSINE, MSE)),
    Setting("feature_distillation_token", "dist", "Student features: dist or cls token, or patches (mean of patch "
            "tokens).", choices=("dist", "cls", PATCHES)),
)))  # fmt: skip
declare_term(TermSettings("feature_map", ("stage_maps",), switch="feature_map_distillation_weight", settings=(
    Setting("feature_map_distillation_weight", None, "Weight of the feature-map term (locality guidance): the "
            "student's patch tokens imitate the CNN teacher's intermediate feature map, position by position (0 = "
            "off). Default: 1 for images of at most 64 px with a CNN teacher, else 0.", Optional[float],
            range=_NON_NEGATIVE),
    Setting("feature_map_distillation_layers", [0], "Student blocks whose patch tokens imitate the teacher's map (0 = "
            "first, -1 = last).", list[int]),
)))  # fmt: skip
