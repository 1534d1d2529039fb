"""Every setting's choices and range, as data, in one place (standard library only).

The early input checks (`hf_deit_inputs.checks`, before torch is imported) and the package (`hf_deit.arguments`'
dataclasses, the transforms) read them from here; nothing keeps a copy. The distillation terms' settings are declared
with their terms (`hf_deit_inputs.terms`) and checked here alike. A setting is checked by its name, so a command-line
flag and the dataclass field it fills are checked by the same rule:

    problem("distillation_alpha", 1.5)  ->  "distillation_alpha 1.5: give a number in [0, 1]."
    check(settings)                     raises ValueError listing every problem of a dataclass (its __post_init__)

The recipe's augmentation presets and the teacher architectures are here too, as the data they are.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Optional

# ---- data and augmentation ----

EMBEDDED_DATASETS = ("mnist", "digits")  # hf_deit.data loads these sets
DEFAULT_DATASET = EMBEDDED_DATASETS[0]  # the scripts' --dataset_name
# Images up to this size get the small-image augmentation preset and, with a CNN teacher, feature-map distillation.
SMALL_IMAGE_MAX_SIZE = 64
RAND_AUGMENT_MAX_MAGNITUDE = 10.0  # timm's magnitude scale: m9 applies 90% of each op's largest strength
DEFAULT_CROP_PCT = 0.875  # DeiT evaluates on a center crop of 224 / 256 of the shorter side
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation's default
IMAGENET_STD = (0.229, 0.224, 0.225)

# The augmentation recipe's presets: the paper's, less what does not fit. "small_images": 28-32 px digits, where the
# paper's crops would cut most of a digit away and mirror images are other symbols, in the short budgets these images
# get (README, "Where the defaults come from"). "cnn_from_scratch": a new CNN teacher on a small folder of larger
# images (train_teacher.py's default above 64 px): RandAugment, erasing and mixup/cutmix are for a ViT on ImageNet.
AUTO_PRESET = "auto"  # by the image size (hf_deit_inputs.flags.AugmentationArguments.resolved)
_PAPER = dict(
    image_size=224, crop_pct=DEFAULT_CROP_PCT, scale_min=0.08, hflip=0.5, rand_augment="9", rand_augment_num_ops=2,
    rand_augment_mstd=0.5, color_jitter=0.0, reprob=0.25, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
)  # fmt: skip
_CROPS_AND_FLIPS = dict(rand_augment="none", reprob=0.0, mixup=0.0, cutmix=0.0)  # no RandAugment, erasing, mixing
AUGMENTATION_PRESETS = {
    "imagenet": _PAPER,
    "small_images": {**_PAPER, **_CROPS_AND_FLIPS, "image_size": 32, "crop_pct": 1.0, "scale_min": 0.8, "hflip": 0.0},
    "cnn_from_scratch": {**_PAPER, **_CROPS_AND_FLIPS, "scale_min": 0.25},
}

# ---- resuming: --resume_from_checkpoint takes a folder or one of these words ----

RESUME_LATEST = ("auto", "true", "latest", "last", "yes")  # the newest checkpoint in --output_dir
RESUME_NEVER = ("false", "no", "none", "never")  # start fresh (refused over existing checkpoints)
RUN_SETTINGS_NAME = "run_settings.json"  # a run's settings, saved beside its checkpoints and its model

# ---- the teacher's own script ----

# Small CNNs for small images, random init; any field can be overridden with --config_overrides.
TEACHER_ARCHITECTURES = {
    "resnet": dict(model_type="resnet", embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                   layer_type="basic", downsample_in_first_stage=False),
    "regnet": dict(model_type="regnet", embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                   groups_width=16, layer_type="y"),
    "convnext": dict(model_type="convnext", hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], patch_size=2),
}  # fmt: skip

# ---- every named choice and range, by setting (the distillation terms': declared in hf_deit_inputs.terms) ----

CHOICES = {
    "preset": (AUTO_PRESET, *AUGMENTATION_PRESETS),
    "architecture": tuple(TEACHER_ARCHITECTURES),
}


@dataclasses.dataclass(frozen=True)
class Range:
    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    whole: bool = False  # a whole number
    hint: str = ""  # what the number is, for the message

    def __contains__(self, value: float) -> bool:
        above = self.low < value if self.low_open else self.low <= value
        return above and (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


PROBABILITY = Range(0.0, 1.0)
NON_NEGATIVE = Range(0.0)
_FRACTION = Range(0.0, 1.0, low_open=True)  # (0, 1]
_IMAGE_COUNT = Range(1, whole=True, hint="a positive number of images (or leave it out for all)")

RANGES = {
    "labeled_fraction": _FRACTION,
    "max_train_samples": _IMAGE_COUNT,
    "max_eval_samples": _IMAGE_COUNT,
    "max_unlabeled_samples": _IMAGE_COUNT,
    # evaluate_model.py
    "batch_size": Range(1, whole=True, hint="a positive whole number"),
    "num_workers": Range(0, whole=True, hint="0 (decode in the main process) or more worker processes"),
    "top_k": Range(1, whole=True, hint="a positive whole number"),  # (record_teacher.py's is unchecked: a word too)
    # training
    "label_smoothing_factor": Range(0.0, 1.0, high_open=True),
    "repeated_augmentation": Range(1, whole=True, hint="1 (off) or more copies of each image per epoch"),
    # data and augmentation
    "train_val_split": Range(0.0, 1.0, low_open=True, high_open=True),
    "image_size": Range(1, whole=True, hint="the side of the model's input in pixels (e.g. 224)"),
    "crop_pct": _FRACTION,
    "scale_min": _FRACTION,
    "hflip": PROBABILITY,
    "reprob": PROBABILITY,
    "mixup_prob": PROBABILITY,
    "mixup_switch_prob": PROBABILITY,
    "mixup": NON_NEGATIVE,
    "cutmix": NON_NEGATIVE,
    "color_jitter": NON_NEGATIVE,
    "rand_augment_mstd": NON_NEGATIVE,
    "rand_augment": Range(0.0, RAND_AUGMENT_MAX_MAGNITUDE, hint="a magnitude from 0 to 10 (the paper uses 9), or none"),
}
NONE_WORDS = ("none", "off", "")  # a setting that may be off (rand_augment) is off when given one of these


def problem(name: str, value, flag: str = "") -> Optional[str]:
    """What is wrong with `value` for the setting `name` (checked against its `rule`), or None. `flag`
    ("--" on a command line) prefixes the name in the message. Values may be typed or text as typed."""
    shown = f"{flag}{name} {value}"
    choices, allowed = rule(name)
    if value is None:  # not set: the default decides
        return None
    if choices:
        if value in choices:
            return None
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        suggestion = f" (did you mean {close[0]}?)" if close else ""
        return f"{shown}: not a choice{suggestion}; choose one of {', '.join(choices)}."
    if allowed is None:
        return None
    if name == "rand_augment" and str(value).strip().lower() in NONE_WORDS:
        return None
    number = as_number(value, allowed.whole)
    if number is not None and number in allowed:
        return None
    if number is None and allowed.whole:
        return f"{shown}: give a whole number."
    return f"{shown}: give {allowed.hint or f'a number in {allowed}'}."


def rule(name: str) -> tuple[tuple, Optional[Range]]:
    """(the choices, the range) of the setting `name`: a distillation term's declaration, or `CHOICES`/`RANGES`."""
    from .terms import setting  # declared there, with this module's Range

    declared = setting(name)
    if declared is not None:
        return declared.choices, declared.range
    return CHOICES.get(name, ()), RANGES.get(name)


def problems(settings: dict, flag: str = "") -> list[str]:
    """The problems of the settings in `settings` (name -> value)."""
    return [message for name, value in settings.items() if (message := problem(name, value, flag))]


def check(settings) -> None:
    """Raise a ValueError listing what is wrong with the fields of `settings` (a dataclass) that have a rule."""
    found = problems({item.name: getattr(settings, item.name, None) for item in dataclasses.fields(settings)})
    if found:
        raise ValueError(" ".join(found))


def as_number(value, whole: bool) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if whole and (not math.isfinite(number) or number != int(number) or "." in str(value)):
        return None
    return number
