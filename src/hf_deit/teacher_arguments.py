"""Command-line arguments of `scripts/train_teacher.py` beyond the data and augmentation flags it shares with
`scripts/train.py` (`hf_deit.arguments`), and the small CNNs it builds.

They live in the package, not the script, so that `train_teacher.py --help` can be answered from a catalogue
(`hf_deit_inputs.help`) that `hf_deit.arguments.write_help_catalogue()` renders from these dataclasses.
"""

from dataclasses import dataclass, field
from typing import Optional

from .arguments import DataArguments, DeiTTrainingArguments, help_catalogue

# Small CNNs for small images, random init; any field can be overridden with --config_overrides.
TEACHER_ARCHITECTURES = {
    "resnet": dict(model_type="resnet", embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                   layer_type="basic", downsample_in_first_stage=False),
    "regnet": dict(model_type="regnet", embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                   groups_width=16, layer_type="y"),
    "convnext": dict(model_type="convnext", hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], patch_size=2),
}  # fmt: skip


@dataclass
class TeacherArguments:
    _argument_group_name = "Model (the teacher)"  # its heading in --help

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Fine-tune this checkpoint (folder or Hub id) instead of a new CNN."}
    )
    architecture: str = field(
        default="resnet", metadata={"help": "New CNN: " + ", ".join(TEACHER_ARCHITECTURES) + " (transformers configs)."}
    )
    config_overrides: Optional[str] = field(
        default=None, metadata={"help": "JSON object of config fields, e.g. '{\"depths\": [2, 2, 2, 2]}'."}
    )
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "New head for another class count."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow remote code for models loaded by name."})


@dataclass
class TeacherTrainingArguments(DeiTTrainingArguments):
    """CNNs train well with a higher learning rate and no warm-up fraction as long as DeiT's."""

    output_dir: Optional[str] = field(default="outputs/teacher", metadata={"help": "Where the teacher goes."})
    learning_rate: Optional[float] = field(default=2e-3, metadata={"help": "Peak learning rate (AdamW)."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Epochs."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps or fraction of training."})


def teacher_help_catalogue() -> dict:
    """train_teacher.py's flags by group, as `help_catalogue` renders train.py's."""
    from hf_deit_inputs.help import COMMON_TRAINING_FLAGS

    from .data import AugmentationArguments

    return help_catalogue([
        (TeacherArguments, None, None),
        (DataArguments, None, None),
        (AugmentationArguments, None, "The student's recipe; a flag left out takes the --preset's value."),
        (TeacherTrainingArguments, COMMON_TRAINING_FLAGS, "The usual ones (defaults: a CNN's, see --help_all)."),
    ])  # fmt: skip
