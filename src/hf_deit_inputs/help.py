"""`train.py --help` (and `train_teacher.py --help`) in a fraction of a second, grouped by what the flags are for.

The flags are read from their dataclasses (`hf_deit_inputs.flags`), which need no torch; the distillation terms'
settings are fields there too, made from their declarations (`hf_deit_inputs.terms`), so a term from outside the
package is listed as well. `--help_all` prints the full, slower listing of every flag, transformers' `TrainingArguments`
included.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import typing
from typing import Sequence

from . import choices, flags

# The TrainingArguments flags a first run needs, shown under "Training"; the other ~150 are in --help_all.
COMMON_TRAINING_FLAGS = (
    "output_dir", "overwrite_output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "learning_rate", "weight_decay", "warmup_steps", "label_smoothing_factor", "repeated_augmentation", "seed", "bf16",
    "eval_strategy", "save_strategy", "logging_steps", "resume_from_checkpoint", "dataloader_num_workers", "report_to",
    "push_to_hub", "hub_model_id",
)  # fmt: skip
# Those of them that `flags.DeiTTrainingFlags` leaves to transformers: (type, transformers' default, help). The
# defaults are transformers' own (tests/test_inputs.py checks them against the installed `TrainingArguments`).
TRANSFORMERS_FLAGS = {
    "max_steps": ("int", -1, "Optimizer steps; a positive number overrides --num_train_epochs (a stream needs it)."),
    "seed": ("int", 42, "Random seed: initialisation, augmentation, and a carved-out validation split."),
    "resume_from_checkpoint": ("str", None, "A checkpoint folder, 'auto' (the newest one) or 'false' (start fresh); "
                               "default: the newest in --output_dir, saved with the same settings."),
    "dataloader_num_workers": ("int", 0, "Worker processes decoding the images (0: the main process)."),
    "report_to": ("str", "none", "Where the logs go besides the console: none, all, trackio, tensorboard, wandb, ..."),
    "push_to_hub": ("bool", False, "Push the model and its card to the Hub at the end of training."),
    "hub_model_id": ("str", None, "The Hub repository to push to (user/name): --push_to_hub needs it."),
}  # fmt: skip
WIDTH = 100
DISTILLATION_GROUP = "Distillation"  # train.py's group of the teacher's and the terms' settings


def answer_help(argv: Sequence[str], prog: str, description: str, teacher: bool = False) -> list[str]:
    """Print the grouped help (of train.py, or with `teacher` of train_teacher.py) and exit when `argv` asks for it
    (-h/--help); `--help_all` becomes the full parser's `--help`. Returns the command line to parse."""
    if any(token in ("-h", "--help") for token in argv):
        sys.stdout.write(format_help(prog, description, help_groups(teacher)))
        sys.exit(0)
    return ["--help" if token == "--help_all" else token for token in argv]


def help_groups(teacher: bool = False) -> list[tuple]:
    """train.py's (`teacher`: train_teacher.py's) flags by group: (title, note, [(name, type, default, help)])."""
    model, training = (flags.TeacherArguments, flags.TeacherTrainingFlags) if teacher else (
        flags.ModelArguments, flags.DeiTTrainingFlags)
    groups = [  # (title, dataclass, the flags shown or None for all, note)
        (model._argument_group_name, model, None, None),
        (flags.DataArguments._argument_group_name, flags.DataArguments, None, None),
        (flags.AugmentationArguments._argument_group_name, flags.AugmentationArguments, None,
         f"{'The student' if teacher else 'DeiT'}'s recipe; a flag left out takes the --preset's value."),
        *([] if teacher else [(DISTILLATION_GROUP, flags.DistillationFlags, None, None)]),
        ("Training", training, COMMON_TRAINING_FLAGS,
         f"The usual ones (defaults: {'a CNN' if teacher else 'DeiT'}'s recipe, see --help_all)."),
    ]  # fmt: skip
    listed = []
    for title, declared, names, note in groups:
        by_name = {item.name: item for item in dataclasses.fields(declared)}
        entries = []
        for name in names or by_name:
            item = by_name.get(name)
            if item is None:
                entries.append((name, *TRANSFORMERS_FLAGS[name]))
                continue
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            entries.append((name, type_name(item.type), default, item.metadata.get("help", "")))
        listed.append((title, note, entries))
    return listed


def format_help(prog: str, description: str, groups: list[tuple]) -> str:
    lines = [f"usage: {prog} [--flag value ...]   or   {prog} settings.json", "", textwrap.dedent(description).strip(), ""]
    for title, note, entries in groups:
        lines += [f"{title}:"]
        if note:
            lines += textwrap.wrap(note, WIDTH, initial_indent="  ", subsequent_indent="  ")
        for name, kind, default, help_text in entries:
            options = choices.rule(name)[0]
            metavar = {"bool": "{true,false}", "int": "N", "float": "X", "list": "V [V ...]"}.get(kind, "VALUE")
            lines.append(f"  --{name} {'{' + ','.join(options) + '}' if options else metavar}")
            shown = f"{default:g}" if isinstance(default, float) else default
            text = " ".join(help_text.split()) + (f" (default: {shown})" if shown not in (None, "") else "")
            lines += textwrap.wrap(text, WIDTH, initial_indent="      ", subsequent_indent="      ")
        lines.append("")
    lines.append(f"Every flag of transformers' TrainingArguments works too: {prog} --help_all lists them all (slower).")
    return "\n".join(lines) + "\n"


def type_name(annotation) -> str:
    """"bool", "int", "float", "list" or "str" of a field's annotation (`Optional[X]` is X's)."""
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    base = typing.get_origin(annotation)
    if base is list:
        return "list"
    if arguments and base is not None:  # Optional[X] / X | str
        return type_name(arguments[0])
    return getattr(annotation, "__name__", "str")
