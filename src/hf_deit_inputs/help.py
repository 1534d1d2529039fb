"""`train.py --help` (and `train_teacher.py --help`) in a fraction of a second, grouped by what the flags are for.

The flags live in the argument dataclasses (`hf_deit.arguments`), whose import costs seconds of torch;
`write_help_catalogue()` there renders them into `train_flags.json` and `teacher_flags.json` beside this module
(tests/test_inputs.py fails while one is out of date). The distillation terms' settings are read from their
declarations (`hf_deit_inputs.terms`), so a term from outside the package is listed too. `--help_all` prints the full,
slower listing of every flag, transformers' `TrainingArguments` included.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import typing
from typing import Sequence

from . import terms

CATALOGUE_PATH = os.path.join(os.path.dirname(__file__), "train_flags.json")
TEACHER_CATALOGUE_PATH = os.path.join(os.path.dirname(__file__), "teacher_flags.json")  # train_teacher.py's
REGENERATE = "python -c 'import hf_deit.arguments as a; a.write_help_catalogue()'"
# The TrainingArguments flags a first run needs, shown under "Training"; the other ~150 are in --help_all.
COMMON_TRAINING_FLAGS = (
    "output_dir", "overwrite_output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "learning_rate", "weight_decay", "warmup_steps", "label_smoothing_factor", "repeated_augmentation", "seed", "bf16",
    "eval_strategy", "save_strategy", "logging_steps", "resume_from_checkpoint", "dataloader_num_workers", "report_to",
    "push_to_hub", "hub_model_id",
)  # fmt: skip
WIDTH = 100
DISTILLATION_GROUP = "Distillation"  # train.py's group that lists the terms' settings


def answer_help(argv: Sequence[str], prog: str, description: str, catalogue_path: str = CATALOGUE_PATH) -> list[str]:
    """Print the grouped help (of the script whose catalogue is `catalogue_path`) and exit when `argv` asks for it
    (-h/--help); `--help_all` becomes the full parser's `--help`. Returns the command line to parse."""
    if any(token in ("-h", "--help") for token in argv):
        with open(catalogue_path) as handle:
            sys.stdout.write(format_help(prog, description, json.load(handle)))
        sys.exit(0)
    return ["--help" if token == "--help_all" else token for token in argv]


def format_help(prog: str, description: str, catalogue: dict) -> str:
    lines = [f"usage: {prog} [--flag value ...]   or   {prog} settings.json", "", textwrap.dedent(description).strip(), ""]
    for group in catalogue["groups"]:
        lines += [f"{group['title']}:"]
        if group.get("note"):
            lines += textwrap.wrap(group["note"], WIDTH, initial_indent="  ", subsequent_indent="  ")
        declared = term_entries() if group["title"] == DISTILLATION_GROUP else []
        for flag in group["flags"] + declared:
            lines.append(f"  --{flag['name']} {flag['metavar']}".rstrip())
            text = flag["help"] + (f" (default: {flag['default']})" if flag["default"] not in (None, "") else "")
            lines += textwrap.wrap(text, WIDTH, initial_indent="      ", subsequent_indent="      ")
        lines.append("")
    lines.append(f"Every flag of transformers' TrainingArguments works too: {prog} --help_all lists them all (slower).")
    return "\n".join(lines) + "\n"


def term_entries() -> list[dict]:
    """The declared settings of the distillation terms, as catalogue entries."""
    return [catalogue_entry(item.name, type_name(item.annotation), item.default, item.help, item.choices)
            for item in terms.term_settings()]  # fmt: skip


def type_name(annotation) -> str:
    """"bool", "int", "float", "list" or "str" of a field's annotation (`Optional[X]` is X's)."""
    arguments = [argument for argument in typing.get_args(annotation) if argument is not type(None)]
    base = typing.get_origin(annotation)
    if base is list:
        return "list"
    if arguments and base is not None:  # Optional[X] / X | str
        return type_name(arguments[0])
    return getattr(annotation, "__name__", "str")


def catalogue_entry(name: str, type_name: str, default, help_text: str, choices: Sequence[str] = ()) -> dict:
    """One flag: `metavar` from its choices (`{a,b}`), else its type."""
    metavar = {"bool": "{true,false}", "int": "N", "float": "X", "list": "V [V ...]"}.get(type_name, "VALUE")
    metavar = "{" + ",".join(choices) + "}" if choices else metavar
    if isinstance(default, float):
        default = f"{default:g}"
    return {"name": name, "metavar": metavar, "default": default, "help": " ".join(str(help_text).split())}
