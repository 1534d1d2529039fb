"""What a user hands the scripts, checked before anything heavy is imported.

`hf_deit` imports torch and transformers as soon as it is imported (it registers the model with the Auto classes),
which costs seconds. The scripts' first contact with a command line happens here instead, with the standard library
only, so that a mistyped path, name or choice is answered in a fraction of a second, before any model or dataset work:

    folders.py   image folders: the classes of a split (one sub-folder per class, at any depth of the path) and
                 its image files; `hf_deit.data` loads image folders from the same scan.
    choices.py   every setting's choices and range as data (the package's dataclasses check by the same rules),
                 the augmentation presets and the teacher architectures.
    terms.py     the distillation terms' declarations: their settings (fields, flags, --help, checks) and teacher
                 outputs, and the one "needs a teacher" rule.
    flags.py     the scripts' flags as `HfArgumentParser` dataclasses, read by --help (help.py) before torch loads;
                 `hf_deit.arguments` puts DeiT's training flags over transformers' `TrainingArguments`.
    checks.py    `InputError` and the checks of every input named on a command line, each flag by its name in every
                 script: paths, presets, Hub ids (offline or not), choices, ranges and flags that contradict each
                 other. A rule the package keeps where it acts (a resume, a config's sizes) is checked there.
"""

from .checks import (
    InputError,
    check_evaluate_command_line,
    check_teacher_command_line,
    check_train_command_line,
    exit_on_input_error,
)
from .folders import IMAGE_EXTENSIONS, ClassFolders, find_class_folders

__all__ = [
    "IMAGE_EXTENSIONS",
    "ClassFolders",
    "InputError",
    "check_evaluate_command_line",
    "check_teacher_command_line",
    "check_train_command_line",
    "exit_on_input_error",
    "find_class_folders",
]
