"""The scripts' arguments as transformers reads them: their flags (`hf_deit_inputs.flags`, torch-free) with DeiT's
training flags over `TrainingArguments`, the parsers, and a new student's config.
"""

import os
import time
from dataclasses import dataclass, field, fields
from typing import Optional

from hf_deit_inputs import choices
from hf_deit_inputs.checks import parse_config_overrides
from hf_deit_inputs.choices import EMBEDDED_DATASETS, TEACHER_ARCHITECTURES  # noqa: F401  (train_teacher.py's)
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

from .configuration_distilled_deit import PRESET_ALIASES, PRESETS, DistilledDeiTConfig

# The model trained on the embedded digits: their native 28 px in a 4x4 grid of 7 px patches, DeiT-Tiny's width and
# half its depth. Few tokens make its steps cheap, and it learns more per CPU-minute than a narrower model on more
# tokens (the recipe study: README, "Where the defaults come from").
EMBEDDED_STUDENT = dict(image_size=28, patch_size=7, hidden_size=192, num_hidden_layers=6, num_attention_heads=3)
# Its learning rate at batch 64 (scaled with the square root of the batch, as hf_deit.run.SMALL_DATA_LEARNING_RATE):
# the best of 5e-4/1e-3/2e-3 at the main job's length, with and without a teacher (README).
EMBEDDED_STUDENT_LEARNING_RATE = 1e-3
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


# ---- evaluate_model.py: the model to evaluate, its teacher and the batch settings (data flags are train.py's) ----


@dataclass
class EvaluationArguments:
    """Arguments of `scripts/evaluate_model.py` beyond the data flags (`hf_deit.arguments.DataArguments`)."""

    model_name_or_path: str = field(metadata={"help": "A folder or Hub id of an image classifier (ours or any)."})
    teacher_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "A teacher to measure agreement with (top-1 of the model vs the teacher's)."}
    )
    teacher_image_size: Optional[str] = field(
        default=None,
        metadata={"help": "What the teacher sees, as in training: its own preprocessing size (default; the batch is "
                  "resized to it), 'student' (the evaluated model's batch as is), or N px."},
    )
    output_file: Optional[str] = field(default=None, metadata={"help": "Write the results there as JSON."})
    batch_size: int = field(default=128, metadata={"help": "Images per batch."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes decoding the images."})
    image_size: Optional[int] = field(
        default=None, metadata={"help": "Input size; default: the model's saved preprocessing config, else its config."}
    )
    crop_pct: Optional[float] = field(
        default=None, metadata={"help": "Center-crop fraction; default: from the saved preprocessing config."}
    )
    seed: int = field(
        default=42, metadata={"help": "Seed of a carved-out validation split: training's --seed gives the same one."}
    )
    top_k: int = field(default=5, metadata={"help": "The k of top-k accuracy (reported with more than k classes)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's remote code."})
    teacher_trust_remote_code: bool = field(default=False, metadata={"help": "Allow the teacher's remote code."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, ...; default: cuda when available."})


@dataclass
class RecordArguments:
    """Arguments of `scripts/record_teacher.py` beyond train.py's (`hf_deit.teacher_record`)."""

    _argument_group_name = "Record"  # its heading in --help

    record_dir: str = field(metadata={"help": "Where the record goes (safetensors shards and manifest.json)."})
    num_epochs: Optional[int] = field(
        default=None, metadata={"help": "Epochs recorded; default: as many as the run's schedule reads."}
    )
    record_world_size: int = field(
        default=1,
        metadata={"help": "Processes of the run the record is for. Matters only with repeated augmentation or "
                  "mixup/cutmix, whose views depend on it."},
    )
    top_k: str = field(
        default="auto",
        metadata={"help": "Teacher probabilities kept per view: N, 'all', or 'auto' (10 for soft distillation, none "
                  "for hard, which needs only the argmax)."},
    )
    record_features: Optional[bool] = field(
        default=None, metadata={"help": "Record the pooled features (default: when the feature term is on)."}
    )
    record_attention_map: Optional[bool] = field(
        default=None, metadata={"help": "Record the attention maps (default: when the attention term is on)."}
    )
    record_stage_maps: Optional[bool] = field(
        default=None, metadata={"help": "Record the CNN stage map (default: when the feature-map term is on)."}
    )
    teacher_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Views per teacher pass (default: the run's batch, whose arithmetic is the run's; larger "
                  "is faster on an accelerator)."},
    )
    compile_teacher: bool = field(
        default=False, metadata={"help": "Compile the teacher's pass (weights frozen in, as for inference)."}
    )
    overwrite_record: bool = field(default=False, metadata={"help": "Replace a record already in --record_dir."})


def record_argument_parser():
    """`scripts/record_teacher.py`'s parser: train.py's flags (the run the record is for) and `RecordArguments`."""
    from transformers import HfArgumentParser

    return HfArgumentParser((ModelArguments, DataArguments, AugmentationArguments, DistillationConfig, RecordArguments))


def train_argument_parser():
    """`scripts/train.py`'s parser: model, data, augmentation and `DistillationConfig` flags, with the distillation
    fields in a --help group of their own (HfArgumentParser gives one group per dataclass)."""
    from hf_deit_inputs.help import DISTILLATION_GROUP
    from transformers import HfArgumentParser

    parser = HfArgumentParser((ModelArguments, DataArguments, AugmentationArguments, DistillationConfig))
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

    return HfArgumentParser((TeacherArguments, DataArguments, AugmentationArguments, TeacherTrainingArguments))


def uses_embedded_data(data_args: DataArguments) -> bool:
    return data_args.train_dir is None and data_args.dataset_name in EMBEDDED_DATASETS


def student_config(
    model_args: ModelArguments, data_args: DataArguments, image_size: Optional[int] = None, small_images: bool = False,
    **label_fields,
) -> Optional[DistilledDeiTConfig]:
    """A new student's config (from a preset or the embedded default), or None when a saved model is to be loaded.
    `image_size` (`--image_size`), when given, is the new model's input size; `small_images` (a folder of tiny images,
    `hf_deit.data.size_input`) makes the default the embedded data's small-image student."""
    name = model_args.model_name_or_path
    overrides = {"drop_path_rate": model_args.drop_path_rate, **parse_config_overrides(model_args.config_overrides)}
    if image_size is not None:  # (one in --config_overrides too is refused by the early checks: _check_student)
        overrides["image_size"] = image_size
    if name is None:
        small = small_images or uses_embedded_data(data_args)
        base = dict(EMBEDDED_STUDENT) if small else dict(PRESETS["deit_tiny_distilled_patch16_224"])
        return DistilledDeiTConfig(**{**base, **overrides, **label_fields})
    if name in PRESETS or name in PRESET_ALIASES:
        return DistilledDeiTConfig.from_preset(name, **overrides, **label_fields)
    return None


def label_fields(label_names: list[str]) -> dict:
    """The config fields that name a classifier's classes."""
    return dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )
