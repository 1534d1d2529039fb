"""No flag that does nothing: every flag of scripts/train.py and scripts/train_teacher.py (their HfArgumentParser
dataclasses), changed from its default to another valid value, changes something the run is built with: the model,
the teacher, the data and its transforms, the collator, the objective, the sampler's repeats, or the settings the
trainer resolves. Each script's `build_run` builds what `main` trains with (no training here).

transformers' own `TrainingArguments` fields are the trainer's `args` themselves and are read by transformers'
`Trainer`; the fields our argument classes add are walked like every other flag. A flag that only matters in a
context (a loss's option when that loss is on) is walked in that context (`CONTEXT`). `NOT_BUILT` lists, each with
its reason, the few flags that by design change nothing the run is built with."""

import dataclasses
import enum
import functools
import json
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from torch import nn
from transformers import (
    PretrainedConfig,
    RegNetConfig,
    RegNetForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    TrainingArguments,
    set_seed,
)

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.arguments import teacher_argument_parser, train_argument_parser
from hf_deit_inputs import InputError, check_teacher_command_line

pytestmark = pytest.mark.filterwarnings("ignore")

DIGITS = [str(digit) for digit in range(10)]
TINY_STUDENT = "patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64"
TINY_TEACHER = "hidden_sizes=[8,16],depths=[1,1],embedding_size=8"

# Flags that by design change nothing a run is built with, and why; each is covered where it acts.
NOT_BUILT = {
    "trust_remote_code": "permission to run a checkpoint's own code, which the model built does not depend on where "
    "it is allowed (remote code: tests/test_modeling.py::test_remote_code_loads_where_hf_deit_is_not_importable)",
    "teacher_trust_remote_code": "the same permission for the teacher's code",
    "overwrite_output_dir": "acts on --output_dir before anything is built (hf_deit.checkpointing.prepare_output_dir; "
    "tests/test_resume.py::test_a_rerun_with_other_settings_is_refused_and_the_card_stays_true)",
    "dataset_config_name": "a configuration of a Hub dataset; offline tests have no Hub dataset with configurations",
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """Small real inputs for every flag: a saved dataset with two image and two label columns and three splits,
    image folders, two students and two teachers of the digits' classes, and a teacher of other classes."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("flags")
    digits = load_digits()
    images = [PILImage.fromarray((image * 15).astype("uint8")).resize((16, 16)) for image in digits.images[:120]]
    labels = [int(label) for label in digits.target[:120]]

    def split(indices):
        return Dataset.from_dict(
            {"image": [images[i] for i in indices], "image2": [images[i].transpose(0) for i in indices],
             "label": [labels[i] for i in indices], "label2": [(labels[i] + 1) % 10 for i in indices]},
            features=Features({"image": Image(), "image2": Image(), "label": ClassLabel(names=DIGITS),
                               "label2": ClassLabel(names=DIGITS)}),
        )  # fmt: skip

    DatasetDict(train=split(range(80)), validation=split(range(80, 100)), test=split(range(100, 120))).save_to_disk(
        root / "saved"
    )
    for folder, indices in (("train_dir", range(0, 60)), ("validation_dir", range(60, 90)), ("pool", range(90, 120))):
        for i in indices:
            target = root / folder / (DIGITS[labels[i]] if folder != "pool" else "")
            target.mkdir(parents=True, exist_ok=True)
            images[i].save(target / f"{i}.png")

    torch.manual_seed(0)
    names = dict(enumerate(DIGITS))
    student = DistilledDeiTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, num_labels=10, id2label=names)
    DistilledDeiTForImageClassification(student).save_pretrained(root / "student")
    teacher = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10,
                   id2label=names)  # fmt: skip
    ResNetForImageClassification(ResNetConfig(**teacher)).save_pretrained(root / "teacher")
    RegNetForImageClassification(RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8,
                                              num_labels=10, id2label=names)).save_pretrained(root / "other_teacher")
    ResNetForImageClassification(ResNetConfig(**{**teacher, "num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}})
                                 ).save_pretrained(root / "three_class_teacher")  # fmt: skip
    paths = {name: str(root / name) for name in
             ("saved", "train_dir", "validation_dir", "pool", "student", "teacher", "other_teacher",
              "three_class_teacher")}  # fmt: skip
    import record_teacher  # the teacher's outputs over one epoch of the base command's views

    record_teacher.main(["--record_dir", str(root / "record"), "--num_epochs", "1",
                         *base_command_line("train", paths, root / "recorded")])  # fmt: skip
    return {**paths, "record": str(root / "record")}


def base_command_line(script: str, sources: dict, output_dir: Path) -> list[str]:
    common = ["--dataset_name", sources["saved"], "--image_size", "16", "--output_dir", str(output_dir),
              "--report_to", "none", "--per_device_train_batch_size", "16"]  # fmt: skip
    if script == "train":
        return [*common, "--config_overrides", TINY_STUDENT, "--teacher_name_or_path", sources["teacher"]]
    return [*common, "--config_overrides", TINY_TEACHER]


# Another valid value for each flag (paths from `sources` by name, written "{name}").
CHANGED = {
    # Model (the student)
    "model_name_or_path": "{student}",
    "config_overrides": TINY_STUDENT.replace("num_hidden_layers=2", "num_hidden_layers=1"),
    "drop_path_rate": "0.2", "attn_implementation": "eager", "ignore_mismatched_sizes": "true",
    # Data
    "dataset_name": "digits", "train_dir": "{train_dir}", "validation_dir": "{validation_dir}",
    "image_column_name": "image2", "label_column_name": "label2", "eval_split": "test", "train_val_split": "0.3",
    "max_train_samples": "32", "max_eval_samples": "8", "streaming": "true", "skip_bad_images": "false",
    "unlabeled_dataset_name": "digits", "unlabeled_train_dir": "{pool}", "max_unlabeled_samples": "10",
    "labeled_fraction": "0.5",
    # Augmentation
    "preset": "imagenet", "image_size": "32", "crop_pct": "0.8", "scale_min": "0.5", "hflip": "0.25",
    "rand_augment": "5", "rand_augment_num_ops": "3", "rand_augment_mstd": "0.2", "color_jitter": "0.3",
    "reprob": "0.1", "mean": ["0.4", "0.4", "0.4"], "std": ["0.3", "0.3", "0.3"], "mixup": "0.3", "cutmix": "0.3",
    "mixup_prob": "0.5", "mixup_switch_prob": "0.25",
    # Training fields of our own
    "repeated_augmentation": "2",
    # Distillation
    "teacher_name_or_path": "{other_teacher}", "teacher_outputs": "{record}", "distillation_type": "soft", "distillation_alpha": "0.3",
    "distillation_tau": "2.0", "teacher_image_size": "24", "attention_distillation_weight": "0.5",
    "attention_distillation_layers": ["0"], "attention_distillation_token": "cls", "attention_distillation_loss": "mse",
    "feature_distillation_weight": "0.5", "feature_distillation_loss": "mse", "feature_distillation_token": "cls",
    "feature_map_distillation_weight": "0.5", "feature_map_distillation_layers": ["1"],
    "pseudo_label_threshold": "0.5",
    "protect_from_weak_teacher": "false", "weak_teacher_fallback": "where_wrong", "min_teacher_accuracy": "0.0",
    # Model (the teacher)
    "architecture": "regnet",
}  # fmt: skip
# The teacher script's own values where its flag of the same name means something else.
CHANGED_FOR_TEACHER = {"model_name_or_path": "{teacher}", "config_overrides": "hidden_sizes=[8,32],depths=[1,1]"}
# Flags that act only in a context, given to both command lines.
CONTEXT = {
    "train_dir": ["--dataset_name", "mnist"],  # the default name gives way to the folders; another is an error
    "validation_dir": ["--dataset_name", "mnist", "--train_dir", "{train_dir}"],
    "train_val_split": ["--dataset_name", "mnist", "--train_dir", "{train_dir}"],  # carves a split when none is given
    "rand_augment_num_ops": ["--rand_augment", "9"],  # off in the small-image preset
    "rand_augment_mstd": ["--rand_augment", "9"],
    "streaming": ["--max_steps", "4"],
    "max_unlabeled_samples": ["--unlabeled_dataset_name", "digits"],
    "distillation_tau": ["--distillation_type", "soft"],
    "attention_distillation_layers": ["--attention_distillation_weight", "0.5"],
    "attention_distillation_token": ["--attention_distillation_weight", "0.5"],
    "attention_distillation_loss": ["--attention_distillation_weight", "0.5"],
    "feature_distillation_loss": ["--feature_distillation_weight", "0.5"],
    "feature_distillation_token": ["--feature_distillation_weight", "0.5"],
    # The student's other weights do not fit a model of another width: refused unless asked.
    "ignore_mismatched_sizes": ["--model_name_or_path", "{student}", "--config_overrides", "intermediate_size=48"],
}
CONTEXT_FOR_TEACHER = {
    # A checkpoint of other classes: a new head only when asked (transformers' rule).
    "ignore_mismatched_sizes": ["--model_name_or_path", "{three_class_teacher}"],
}
# The teacher learns from labelled images only: the unlabelled pool's flags are refused, not ignored.
REFUSED_BY_TEACHER = ("unlabeled_dataset_name", "unlabeled_train_dir", "max_unlabeled_samples")


def walked_flags(parser) -> list[str]:
    """Every flag of the parser's dataclasses but transformers' own TrainingArguments fields."""
    transformers_own = {item.name for item in dataclasses.fields(TrainingArguments)}
    names = []
    for dataclass_type in parser.dataclass_types:
        for item in dataclasses.fields(dataclass_type):
            if item.init and item.name not in transformers_own and item.name not in names:
                names.append(item.name)
    return names


def describe(value, depth: int = 6):
    """What an object holds, as JSON values: its public attributes, closures' captured values, modules' parameter
    sums; no memory addresses, so that two builds of the same settings describe the same."""
    if isinstance(value, (bool, int, str, type(None))):
        return value
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, enum.Enum):
        return describe(value.value)
    if isinstance(value, torch.Tensor):
        return [list(value.shape), round(float(value.detach().double().sum()), 4)]
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [describe(item, depth) for item in items]
    if isinstance(value, dict):
        return {str(key): describe(item, depth) for key, item in value.items()}
    if isinstance(value, PretrainedConfig):
        return {**describe(value.to_dict(), depth), "attn_implementation": value._attn_implementation}
    if isinstance(value, Dataset):
        return {"rows": value.num_rows, "features": str(value.features)}
    if depth == 0:
        return type(value).__name__
    if isinstance(value, functools.partial):
        return {"partial": describe(value.func, depth - 1), "args": describe(value.args, depth - 1),
                "keywords": describe(value.keywords, depth - 1)}  # fmt: skip
    if hasattr(value, "__code__"):  # a function: what its closure captured
        cells = zip(value.__code__.co_freevars, value.__closure__ or ())
        captured = {name: describe(cell.cell_contents, depth - 1) for name, cell in cells}
        return {"function": value.__qualname__, **captured}
    described = {"type": type(value).__name__}
    if isinstance(value, nn.Module):
        described["parameters"] = [round(float(sum(p.detach().double().sum() for p in value.parameters())), 4),
                                   sum(p.numel() for p in value.parameters())]  # fmt: skip
        described.update({name: describe(child, depth - 1) for name, child in value.named_children()})
    public = {name: item for name, item in getattr(value, "__dict__", {}).items() if not name.startswith("_")}
    described.update({name: describe(item, depth - 1) for name, item in public.items()})
    return described


def data_sample(split) -> dict:
    """A split as the trainer reads it: its size and its first items' labels and pixel sums (transforms seeded)."""
    torch.manual_seed(0)
    if not hasattr(split, "__len__"):
        items = [item for _, item in zip(range(4), split)]
        return {"streamed": True, "items": describe(items)}
    items = [split[i] for i in range(min(4, len(split)))]
    return {"rows": len(split), "items": describe(items)}


def what_the_run_uses(script: str, argv: list[str]) -> dict:
    """Everything `main` would train with, described; or the error building it raised."""
    module = __import__(script)
    parser = train_argument_parser() if script == "train" else teacher_argument_parser()
    groups = parser.parse_args_into_dataclasses(args=argv)
    set_seed(groups[-1].seed)  # as start_run does
    try:
        trainer, dataset, aug_args = module.build_run(*groups)
    except Exception as error:  # a flag that turns a refusal into a run (or the reverse) changes the run
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    if hasattr(trainer, "check_teacher"):
        trainer.check_teacher()  # what train() does before the first step: it settles the loss's targets
    args = trainer.args
    return {
        "model": describe(trainer.model.config), "weights": describe(trainer.model, depth=1)["parameters"],
        "train data": data_sample(trainer.train_dataset), "eval data": data_sample(trainer.eval_dataset),
        "train transform": describe(getattr(trainer.train_dataset, "_format_kwargs", {}).get("transform")),
        "collator": describe(trainer.train_data_collator), "eval collator": describe(trainer.data_collator),
        "processor": describe(trainer.processing_class.to_dict()),
        "teacher": describe(getattr(trainer, "teacher", None), depth=3),
        "teacher record": describe(getattr(trainer, "teacher_record", None), depth=2),
        "objective": describe(getattr(trainer, "objective", None)),
        "repeated augmentation": trainer.repeated_augmentation,
        "resolved": describe([args.learning_rate, args.num_train_epochs, args.eval_strategy, args.bf16]),
    }


def command_line(base: list[str], flag: str, value, sources: dict) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [*base, f"--{flag}", *[item.format(**sources) for item in values]]


def with_context(base: list[str], context: list[str], sources: dict) -> list[str]:
    return [*base, *[item.format(**sources) for item in context]]


@pytest.mark.parametrize("script", ["train", "train_teacher"])
def test_every_flag_changes_what_the_run_is_built_with(script, sources, tmp_path):
    parser = train_argument_parser() if script == "train" else teacher_argument_parser()
    flags = walked_flags(parser)
    base = base_command_line(script, sources, tmp_path / "run")
    reference = json.dumps(what_the_run_uses(script, base), sort_keys=True)
    assert "error" not in json.loads(reference), reference
    assert json.dumps(what_the_run_uses(script, base), sort_keys=True) == reference, "two builds of one command differ"

    unchanged, missing = [], []
    for flag in flags:
        if flag in NOT_BUILT:
            continue
        value = (CHANGED_FOR_TEACHER if script == "train_teacher" else {}).get(flag, CHANGED.get(flag))
        if value is None:
            missing.append(flag)
            continue
        context = (CONTEXT_FOR_TEACHER if script == "train_teacher" else {}).get(flag, CONTEXT.get(flag, []))
        if script == "train_teacher" and flag in REFUSED_BY_TEACHER:  # refused before anything is built
            with pytest.raises(InputError, match=f"--{flag}.*: the teacher learns from labelled images only"):
                check_teacher_command_line(command_line(with_context(base, context, sources), flag, value, sources))
            continue
        before = what_the_run_uses(script, with_context(base, context, sources)) if context else json.loads(reference)
        after = what_the_run_uses(script, command_line(with_context(base, context, sources), flag, value, sources))
        assert "error" not in after, f"--{flag} {value}: {after}"
        if json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True):
            unchanged.append(flag)
    assert missing == [], f"give these new flags a changed value in CHANGED (or a reason in NOT_BUILT): {missing}"
    assert unchanged == [], f"these flags change nothing the run is built with: {unchanged}"
    assert set(NOT_BUILT) <= set(flags) | set(walked_flags(train_argument_parser())), "NOT_BUILT names a flag no more"


def test_the_teacher_learns_from_the_images_train_keeps_labelled(sources, tmp_path):
    """--labeled_fraction with the same --seed: the teacher trains on exactly the images train.py keeps labelled."""
    import train
    import train_teacher

    flags = ["--labeled_fraction", "0.5", "--seed", "3", "--bf16", "false"]  # one precision for both trainers
    student_run = train_argument_parser().parse_args_into_dataclasses(
        args=[*base_command_line("train", sources, tmp_path / "student"), *flags])
    teacher_run = teacher_argument_parser().parse_args_into_dataclasses(
        args=[*base_command_line("train_teacher", sources, tmp_path / "teacher"), *flags])
    _, student_data, _ = train.build_run(*student_run)
    _, teacher_data, _ = train_teacher.build_run(*teacher_run)

    def images_and_labels(split):
        rows = split.with_format(None)
        return [(image["bytes"], label) for image, label in
                zip(rows.cast_column("image", Image(decode=False))["image"], rows["label"])]  # fmt: skip

    labelled = [row for row in images_and_labels(student_data["train"]) if row[1] != -1]
    assert abs(len(labelled) - 40) <= 2  # a stratified half of the 80 training images
    assert images_and_labels(teacher_data["train"]) == labelled
