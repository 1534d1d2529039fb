"""The scripts' arguments as transformers reads them: their flags (`hf_deit_inputs.flags`, torch-free) with DeiT's
training flags over `TrainingArguments`, and the parsers.
"""

import os
import time
from dataclasses import dataclass, fields
from typing import Optional

from hf_deit_inputs import choices
from hf_deit_inputs.checks import parse_config_overrides  # noqa: F401  (the scripts')
from hf_deit_inputs.choices import TEACHER_ARCHITECTURES  # noqa: F401  (train_teacher.py's)
from hf_deit_inputs.flags import (  # the scripts' flags, declared without torch (also importable from here)
    AugmentationArguments,
    DataArguments,
    DeiTTrainingFlags,
    DistillationFlags,
    ModelArguments,
    TeacherArguments,
    TeacherTrainingFlags,
)
from transformers import TrainingArguments


MIN_LEARNING_RATE = 1e-5  # the floor of the cosine schedule (the paper's)


@dataclass
class DeiTTrainingArguments(DeiTTrainingFlags, TrainingArguments):
    """`TrainingArguments` with DeiT's recipe as defaults: `hf_deit_inputs.flags.DeiTTrainingFlags`."""

    def __post_init__(self):
        choices.check(self)  # a DistillationConfig's distillation settings too
        if self.lr_scheduler_type == "cosine_with_min_lr" and not self.lr_scheduler_kwargs:
            self.lr_scheduler_kwargs = {"min_lr": MIN_LEARNING_RATE}  # the paper's floor
        if self.run_name is None:
            # Trackio closes its run when training ends and opens one by this name for the evaluation after it; left
            # unnamed, that evaluation landed in a second run under a random name.
            folder = os.path.basename(os.path.normpath(self.output_dir or "run"))
            self.run_name = f"{folder}-{time.strftime('%Y%m%d-%H%M%S')}"
        # A field left unset (None) stays so until hf_deit.run.size_run sizes it to the model and the data. The two
        # strategies pass TrainingArguments' checks as "epoch", what they become with an evaluation set.
        unset = [name for name in ("eval_strategy", "save_strategy") if getattr(self, name) is None]
        for name in unset:
            setattr(self, name, "epoch")
        super().__post_init__()
        for name in unset:
            setattr(self, name, None)


@dataclass
class TeacherTrainingArguments(TeacherTrainingFlags, DeiTTrainingArguments):
    """`TrainingArguments` with a CNN teacher's defaults: `hf_deit_inputs.flags.TeacherTrainingFlags`."""


@dataclass
class DistillationConfig(DistillationFlags, DeiTTrainingArguments):
    """`TrainingArguments` for a distilled student: DeiT's recipe (`DeiTTrainingArguments`) plus the teacher and every
    distillation setting, as TRL's trainer configs hold theirs. `DistillationTrainer(model=..., args=DistillationConfig(
    teacher_name_or_path=..., ...), train_dataset=...)` trains from Python with no script; the trainer sizes what
    was left unset to the model and the data (`hf_deit.run.size_run`; the feature-map weight: `FeatureMapTerm.build`).
    Its fields beyond DeiT's are `hf_deit_inputs.flags.DistillationFlags`."""


# The fields DistillationConfig adds to DeiTTrainingArguments: the --help group "Distillation", and run settings.
DISTILLATION_FIELDS = tuple(item.name for item in fields(DistillationFlags))


# Flags by their whole names only: an abbreviation (--teacher_name) would pass by the early checks, which read whole
# names, and change meaning when a flag is added. The usage line stays short (the flags: --help).
PARSING = dict(allow_abbrev=False, usage="%(prog)s [--flag value ...]   or   %(prog)s settings.json   (--help: the flags)")


def train_argument_parser():
    """`scripts/train.py`'s parser: model, data, augmentation and `DistillationConfig` flags, with the distillation
    fields in a --help group of their own (HfArgumentParser gives one group per dataclass)."""
    from hf_deit_inputs.help import DISTILLATION_GROUP
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, AugmentationArguments, DistillationConfig), **PARSING)
    distillation = parser.add_argument_group(DISTILLATION_GROUP)
    for group in parser._action_groups[:-1]:
        for action in [action for action in group._group_actions if action.dest in DISTILLATION_FIELDS]:
            group._group_actions.remove(action)
            distillation._group_actions.append(action)
    return parser


def teacher_argument_parser():
    """`scripts/train_teacher.py`'s parser: the teacher's model flags, train.py's data and augmentation flags, and
    `TeacherTrainingArguments`."""
    from transformers import HfArgumentParser

    return HfArgumentParser((TeacherArguments, DataArguments, AugmentationArguments, TeacherTrainingArguments),
                            **PARSING)
