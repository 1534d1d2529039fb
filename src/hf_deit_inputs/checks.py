"""Every input named on a command line, checked before any model or dataset work (standard library only).

A check sees only the flags that were given (`flags_given`: flag name -> value as typed); defaults are valid by
construction. All problems are collected and raised together as one `InputError`, each saying what is wrong and how
to fix it: paths (missing, files, no images, no class folders), names (presets, saved models, Hub ids; offline, the
Hub cache), the settings' choices and ranges (`hf_deit_inputs.choices`, the package's rules too), and flags that
contradict each other. A flag means the same in every script, so each is checked by its name (`check_inputs`). A
rule the package keeps where it acts (a resume folder, a config's patch size) is not repeated here: it raises an
`InputError` there, which the scripts print the same way (`exit_on_input_error`). `MODEL_PRESETS` mirrors
`hf_deit.configuration_distilled_deit`'s (tests keep them equal): that file travels to the Hub as remote code and
imports nothing of this package.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import sys
from typing import Optional, Sequence

from . import choices
from .choices import EMBEDDED_DATASETS
from .folders import IMAGE_EXTENSIONS, find_class_folders, has_image
from .terms import teacher_needed_by

PRESET_ALIASES = tuple(f"{size}{suffix}" for suffix in ("", "-384") for size in ("tiny", "small", "base"))
MODEL_PRESETS = PRESET_ALIASES + tuple(  # hf_deit.configuration_distilled_deit.PRESET_ALIASES, then PRESETS
    f"deit_{size}_distilled_patch16_{res}" for res in (224, 384) for size in ("tiny", "small", "base")
)
SPLIT_FOLDER_NAMES = ("train", "training", "val", "valid", "validation", "test", "eval")

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")
_TRUE = ("1", "on", "yes", "true")


class InputError(ValueError):
    """One or more command-line inputs that cannot work; the message says what is wrong and how to fix each."""

    def __init__(self, problems: "str | Sequence[str]"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        listed = "\n".join(f"- {problem}" for problem in self.problems)
        super().__init__(f"{len(self.problems)} problems with the inputs:\n{listed}" if len(self.problems) > 1
                         else self.problems[0])


# ---------------------------------------------------------------------------------------------------------------------
# Reading the command line
# ---------------------------------------------------------------------------------------------------------------------


def flags_given(argv: Sequence[str]) -> dict[str, str]:
    """The value of every flag present in `argv` (`--flag value` or `--flag=value`; the last one wins, as argparse;
    `--flag-name` spells `--flag_name` too). A flag without a value is left out."""
    given, argv = {}, list(argv)
    for position, token in enumerate(argv):
        if not token.startswith("--"):
            continue
        name, has_value, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if has_value:
            given[name] = value
        elif position + 1 < len(argv) and not argv[position + 1].startswith("--"):
            given[name] = argv[position + 1]
    return given


def flags_from_json(path: str) -> dict[str, str]:
    """The flags of a JSON configuration file (`train.py config.json`), as the command line would spell them; a null
    is a setting left to its default, as the parser reads it."""
    with open(path) as file:
        values = json.load(file)
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()
            if value is not None}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# The scripts' checks: a flag means the same in every script, so each is checked by its name
# ---------------------------------------------------------------------------------------------------------------------

UNLABELED_POOL_FLAGS = ("unlabeled_dataset_name", "unlabeled_train_dir", "max_unlabeled_samples")  # train.py's only


def exit_on_input_error(run, argv: Sequence[str], prog: str):
    """`run(argv)` (a check, or a script's `main`); on an `InputError` print it as argparse prints usage errors and
    exit with status 2."""
    try:
        return run(argv)
    except InputError as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        sys.exit(2)


def check_train_command_line(argv: Sequence[str]) -> None:
    """`scripts/train.py`'s inputs; raises `InputError` listing every problem."""
    _raise(check_inputs(_read(argv), "train"))


def check_teacher_command_line(argv: Sequence[str]) -> None:
    """`scripts/train_teacher.py`'s inputs (`--model_name_or_path` is a checkpoint to fine-tune there)."""
    _raise(check_inputs(_read(argv), "teacher"))


def check_evaluate_command_line(argv: Sequence[str]) -> None:
    """`scripts/evaluate_model.py`'s inputs: the model and its teacher, the evaluation data, the numbers."""
    _raise(check_inputs(flags_given(argv), "evaluate"))


def check_inputs(given: dict, script: str) -> list[str]:
    """The problems of the flags in `given` (name -> value as typed) for `script`: "train" (a student), "teacher"
    (train_teacher.py) or "evaluate" (a saved model and its data: evaluate_model.py, the figures, the demo)."""
    problems = choices.problems(given, flag="--")
    overrides, override_problems = _parse_overrides(given.get("config_overrides"))
    problems += override_problems
    size = given.get("image_size")
    if "image_size" in overrides and size is not None and str(overrides["image_size"]) != size:
        problems.append(f"--image_size {size} and --config_overrides image_size={overrides['image_size']} disagree: "
                        "the model's input size is --image_size; drop image_size from --config_overrides.")  # fmt: skip
    model = given.get("model_name_or_path")
    if model is not None and not (script == "train" and model in MODEL_PRESETS):
        problems += check_saved_model("--model_name_or_path", model, presets=MODEL_PRESETS if script == "train" else ())
    teacher = given.get("teacher_name_or_path")
    if teacher is not None:
        problems += check_saved_model("--teacher_name_or_path", teacher, role="teacher")
    teacher_size = given.get("teacher_image_size")
    if teacher_size is not None and teacher_size != "student" and not (teacher_size.isdigit() and int(teacher_size)):
        problems.append(f"--teacher_image_size {teacher_size}: give 'student' (the student's batch as is) or a size in "
                        "pixels (e.g. 224); leave it out for the teacher's own preprocessing size.")  # fmt: skip
    elif teacher_size is not None and teacher is None:
        problems.append(f"--teacher_image_size {teacher_size} sets what a teacher sees, and no --teacher_name_or_path "
                        "was given: pass the teacher, or leave the flag out.")  # fmt: skip
    problems += check_data(given, needs_train=script != "evaluate")
    pool = [f"--{name}" for name in UNLABELED_POOL_FLAGS if name in given]
    if pool and script == "teacher":
        problems.append(f"{', '.join(pool)}: the teacher learns from labelled images only; pass the unlabelled pool to "
                        "scripts/train.py, where the teacher labels it.")  # fmt: skip
    if script == "train":
        problems += _check_distillation(given)
    output_dir, output_file = given.get("output_dir"), given.get("output_file")
    if output_dir and os.path.isfile(output_dir):
        problems.append(f"--output_dir {output_dir} is a file: pass a folder (it is created if missing).")
    elif script == "train" and output_dir and teacher and os.path.realpath(output_dir) == os.path.realpath(os.path.expanduser(teacher)):
        problems.append(f"--output_dir {output_dir} is the teacher's folder (--teacher_name_or_path): the student "
                        "would be written over its teacher. Pass another --output_dir, e.g. outputs/deit.")
    if output_file and os.path.isdir(output_file):
        problems.append(f"--output_file {output_file} is a folder: name a file to write, e.g. "
                        f"{os.path.join(output_file, 'results.json')}.")  # fmt: skip
    tracker = given.get("report_to")
    if tracker in TRACKER_PACKAGES and not any(_installed(name) for name in TRACKER_PACKAGES[tracker]):
        problems.append(f"--report_to {tracker}: {TRACKER_PACKAGES[tracker][0]} is not installed. Install it with "
                        f"{install_hint('tracking')}.")
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise InputError(problems)


def _read(argv: Sequence[str]) -> dict[str, str]:
    """Every flag of a command line, or of its JSON settings file."""
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith(".json") and os.path.isfile(argv[0]):
        return flags_from_json(argv[0])
    return flags_given(argv)


def check_data(given: dict, needs_train: bool) -> list[str]:
    problems = []
    train_dir, validation_dir = given.get("train_dir"), given.get("validation_dir")
    if (train_dir or validation_dir) and "dataset_name" in given:
        problems.append(
            f"--dataset_name {given['dataset_name']} and --train_dir/--validation_dir both name the data: keep one."
        )
    elif "dataset_name" in given:
        problems += check_dataset_name("--dataset_name", given["dataset_name"])
    if validation_dir and not train_dir and needs_train:
        problems.append("--validation_dir needs a --train_dir (the training images) as well.")
    elif validation_dir and train_dir and os.path.realpath(validation_dir) == os.path.realpath(train_dir):
        problems.append(f"--validation_dir {validation_dir} is --train_dir: the model would be judged on the images "
                        "it learns, and the teacher check could not see how it generalises. Pass a folder of other "
                        "images, or leave --validation_dir out (--train_val_split holds out 15% of train).")
    train_classes = None
    if train_dir:
        train_classes, folder_problems = check_class_folder("--train_dir", train_dir)
        problems += folder_problems
    if validation_dir:
        validation_classes, folder_problems = check_class_folder("--validation_dir", validation_dir)
        problems += folder_problems
        if train_classes and validation_classes:
            problems += check_split_classes(train_classes, validation_classes, train_dir, validation_dir)
    return problems


def _check_distillation(given: dict) -> list[str]:
    problems = []
    record = given.get("teacher_outputs")
    if record is not None and not os.path.isfile(os.path.join(record, "manifest.json")):
        problems.append(f"--teacher_outputs {record}: no teacher record there (no manifest.json): write one with "
                        "scripts/record_teacher.py and this run's flags, or pass --teacher_name_or_path instead.")
    if "unlabeled_train_dir" in given:
        folder = given["unlabeled_train_dir"]
        problems += _check_folder("--unlabeled_train_dir", folder) or (
            [] if has_image(folder) else [f"--unlabeled_train_dir {folder} holds no images ({_extensions()})."]
        )
    if "unlabeled_dataset_name" in given:
        problems += check_dataset_name("--unlabeled_dataset_name", given["unlabeled_dataset_name"])
    needs_teacher = [] if given.get("teacher_name_or_path") or record else teacher_needed_by(given)
    if needs_teacher:
        problems.append(
            f"{', '.join('--' + setting for setting in needs_teacher)} learn(s) from a teacher, and no "
            "--teacher_name_or_path was given: pass one (a folder written by scripts/train_teacher.py, or a Hub id), "
            "or leave these out (with --distillation_type none the student learns from the labels alone)."
        )
    return problems


# The trackers the README shows, and the packages transformers' callbacks for them import (either will do).
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",)}


def install_hint(extra: str) -> str:
    """How to install one of the package's extras (setup.cfg's extras_require), from the index or in a clone."""
    return f"pip install 'hf-deit[{extra}]' (or pip install -e '.[{extra}]' in a clone)"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # a module set to None in sys.modules: not importable
        return False


# ---------------------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------------------


def check_class_folder(flag: str, path: str) -> tuple[list[str], list[str]]:
    """(class names, problems) of an image folder of one split."""
    problems = _check_folder(flag, path)
    if problems:
        return [], problems
    folders = find_class_folders(path)
    example = os.path.join(path, "<class name>", "<image>.jpg")
    if not folders.classes and not folders.loose:
        return [], [f"{flag} {path} holds no images ({_extensions()}). It needs one sub-folder per class with that "
                    f"class's images: {example}."]  # fmt: skip
    if folders.loose:
        where = "beside its class folders" if folders.classes else "and no class folders"
        problems.append(
            f"{flag} {path} has {len(folders.loose)} image(s) directly in it ({', '.join(folders.loose[:3])}) "
            f"{where}: an image's class is the sub-folder it is in ({example}). Move them into class folders "
            "(images without labels go to --unlabeled_train_dir)."
        )
    splits = [name for name in folders.classes if name.lower() in SPLIT_FOLDER_NAMES]
    if len(splits) >= 2 or (splits and len(folders.classes) == len(splits)):
        problems.append(
            f"{flag} {path} holds the folders {', '.join(splits)}: that is the parent of the splits, not one split. "
            f"Pass --train_dir {os.path.join(path, splits[0])} (and --validation_dir for the other)."
        )
    elif len(folders.classes) == 1:
        problems.append(
            f"{flag} {path} has a single class folder ({folders.classes[0]}): a classifier needs at least two. "
            f"Pass the folder that holds the class folders ({example})."
        )
    return list(folders.classes), problems


def check_split_classes(train_classes: Sequence[str], validation_classes: Sequence[str], train_dir: str,
                        validation_dir: str) -> list[str]:  # fmt: skip
    """A validation class that train lacks cannot be predicted by the model: refused. (A class missing from
    validation is allowed; the loader warns.)"""
    extra = [name for name in validation_classes if name not in set(train_classes)]
    if not extra:
        return []
    hints = [f"{name!r} (closest in train: {match[0]!r})" if (match := difflib.get_close_matches(name, train_classes, 1))
             else repr(name) for name in extra]  # fmt: skip
    return [
        f"--validation_dir {validation_dir} has class folder(s) that --train_dir {train_dir} does not: "
        f"{', '.join(hints)}. The model learns only train's classes ({', '.join(train_classes)}); rename or remove "
        "these folders, or add training images for them."
    ]


def _check_folder(flag: str, path: str) -> list[str]:
    if os.path.isdir(path):
        return []
    if os.path.exists(path):
        return [f"{flag} {path} is a file, not a folder: pass the folder that holds the images (unpack an archive)."]
    return [f"{flag} {path}: no such folder{_close_names(path)}."]


def _close_names(path: str) -> str:
    """' (did you mean ...? ...)' from the nearest existing parent folder, or '' when nothing helps."""
    path = os.path.normpath(os.path.expanduser(path))
    absolute = os.path.isabs(path)  # suggestions in the form the path was given
    parent, missing = os.path.dirname(path) or os.curdir, os.path.basename(path)
    while not os.path.isdir(parent) and parent not in ("", os.sep, os.curdir):
        parent, missing = os.path.dirname(parent) or os.curdir, os.path.basename(parent)
    if not os.path.isdir(parent):
        return ""
    names = sorted(name for name in os.listdir(parent) if not name.startswith("."))
    close = difflib.get_close_matches(missing, names, n=3, cutoff=0.6)
    where = os.path.abspath(parent)
    if close:
        base = os.path.abspath(parent) if absolute else os.path.relpath(parent)
        return f" (did you mean {' or '.join(os.path.join(base, name) for name in close)}?)"
    if names:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f" ({missing} is not in {where}, which holds: {shown})"
    return f" ({where} is empty)"


def _extensions() -> str:
    common = [extension for extension in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif") if extension in IMAGE_EXTENSIONS]
    return f"image files: {', '.join(common)}, ..."


# ---------------------------------------------------------------------------------------------------------------------
# Names: presets, saved models, Hub ids
# ---------------------------------------------------------------------------------------------------------------------


def looks_like_path(name: str) -> bool:
    """Meant as a local path rather than a Hub id: starts with / . ~, has more than one '/', a backslash, ends with
    '/', or its first part is a folder here (`outputs/teacher` where outputs/ exists)."""
    if name.startswith(("/", ".", "~")) or name.endswith(("/", os.sep)) or "\\" in name or name.count("/") > 1:
        return True
    return "/" in name and os.path.isdir(name.split("/", 1)[0])


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def in_hub_cache(repo_id: str, repo_type: str = "model") -> bool:
    """Whether the Hub cache holds a snapshot of `repo_id` (what `from_pretrained` can use offline)."""
    folder = os.path.join(hub_cache_dir(), f"{repo_type}s--{repo_id.replace('/', '--')}", "snapshots")
    return os.path.isdir(folder) and bool(os.listdir(folder))


CHECKPOINT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def check_saved_model(flag: str, name: str, role: str = "model", presets: Sequence[str] = ()) -> list[str]:
    """A folder with a saved model (config.json), or a Hub id that can be reached (or is cached when offline)."""
    what = "teacher" if role == "teacher" else "model"
    if os.path.isdir(os.path.expanduser(name)):
        if os.path.isfile(os.path.join(os.path.expanduser(name), "config.json")):
            return []
        return [f"{flag} {name} is a folder without config.json, so not a saved {what}: pass the folder that "
                f"save_pretrained wrote (config.json and model.safetensors){_presets_hint(presets)}."]  # fmt: skip
    if os.path.isfile(os.path.expanduser(name)):
        if name.endswith(CHECKPOINT_FILE_SUFFIXES):  # a facebook/timm weights file, converted on load (hf_deit.convert)
            return []
        return [f"{flag} {name} is a file but not a checkpoint ({', '.join(CHECKPOINT_FILE_SUFFIXES)}): pass such a "
                f"file, or the folder that save_pretrained wrote (config.json){_presets_hint(presets)}."]  # fmt: skip
    if presets and "/" not in name:
        close = difflib.get_close_matches(name, presets, n=1, cutoff=0.5)
        suggestion = f"Did you mean {close[0]!r}? " if close else ""
        return [f"{flag} {name}: unknown preset, and no such folder. {suggestion}Presets: {', '.join(presets)}. A "
                "saved model is a folder or a Hub id (organisation/name)."]  # fmt: skip
    written = " such as one written by scripts/train_teacher.py" if role == "teacher" else ""
    if looks_like_path(name) or not _HUB_ID.fullmatch(name):
        kind = "no such folder" if looks_like_path(name) else "neither a folder here nor a Hub id (organisation/name)"
        return [f"{flag} {name}: {kind}{_close_names(name) if looks_like_path(name) else ''}. Pass a folder "
                f"with a saved {what} (config.json){written}, or a Hub id{_presets_hint(presets)}."]  # fmt: skip
    if hub_offline() and not in_hub_cache(name):
        return [f"{flag} {name}: the Hub is off (HF_HUB_OFFLINE is set) and {name} is neither a folder here nor in "
                f"the Hub cache ({hub_cache_dir()}). Download it once online, or pass a local folder{written}."]  # fmt: skip
    return []


def check_dataset_name(flag: str, name: str) -> list[str]:
    """An embedded set, a local folder (save_to_disk or data files), or a Hub dataset id (cached when offline)."""
    if name in EMBEDDED_DATASETS or os.path.isdir(os.path.expanduser(name)):
        return []
    if looks_like_path(name):
        return [f"{flag} {name}: no such folder{_close_names(name)}. For a folder of class sub-folders of images "
                "use --train_dir (and --validation_dir)."]  # fmt: skip
    close = difflib.get_close_matches(name, EMBEDDED_DATASETS, n=1, cutoff=0.6)
    if hub_offline() and not (in_hub_cache(name, "dataset") or _in_datasets_cache(name)):
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        return [f"{flag} {name}: the Hub is off (HF_HUB_OFFLINE is set) and {name} is not an embedded set "
                f"({', '.join(EMBEDDED_DATASETS)}), a folder here or a cached Hub dataset.{suggestion} Download it "
                "once online, or pass image folders with --train_dir/--validation_dir."]  # fmt: skip
    if close and "/" not in name and name != close[0]:
        return [f"{flag} {name}: did you mean the embedded {close[0]!r}? (Hub datasets are named organisation/name.)"]
    return []


def _in_datasets_cache(name: str) -> bool:
    home = os.environ.get("HF_DATASETS_CACHE") or os.path.join(os.path.dirname(hub_cache_dir()), "datasets")
    return os.path.isdir(os.path.join(home, name.replace("/", "___")))


def _presets_hint(presets: Sequence[str]) -> str:
    return f", or a preset ({', '.join(presets)})" if presets else ""


# ---------------------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------------------


def parse_config_overrides(text: Optional[str]) -> dict:
    """`--config_overrides` of both training scripts: 'hidden_size=128,qkv_bias=false,hidden_sizes=[32,64]' -> typed
    values (JSON where the value parses as JSON: numbers, true/false, lists; else the text). Commas inside brackets
    belong to the value."""
    text = (text or "").strip()
    if text.startswith("{"):
        raise ValueError("--config_overrides takes key=value pairs separated by commas, not a JSON object: e.g. "
                         "'depths=[1,1],hidden_sizes=[32,64]'.")  # fmt: skip
    overrides = {}
    for item in filter(None, (part.strip() for part in _split_top_level(text))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config_overrides: expected key=value, got {item!r}.")
        value = value.strip()
        try:
            overrides[key.strip()] = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def _split_top_level(text: str) -> list[str]:
    """Split at the commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for position, character in enumerate(text):
        if character in "[{(":
            depth += 1
        elif character in "]})":
            depth -= 1
        elif character == "," and depth == 0:
            parts.append(text[start:position])
            start = position + 1
    return [*parts, text[start:]]


def _parse_overrides(text: str) -> tuple[dict, list[str]]:
    """`parse_config_overrides`, its error as a problem to report."""
    try:
        return parse_config_overrides(text), []
    except ValueError as error:
        return {}, [f"{error} (e.g. 'hidden_size=128,num_hidden_layers=6')."]
