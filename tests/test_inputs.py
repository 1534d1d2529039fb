"""First contact: every input named on a command line is checked before any model or dataset work, in a second,
with a message that says what is wrong and how to fix it (`hf_deit_inputs`)."""

import ast
import dataclasses
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hf_deit_inputs import InputError, check_teacher_command_line, check_train_command_line, find_class_folders
from hf_deit_inputs import checks, choices, terms

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def write_images(folder: Path, count: int = 2, size=(12, 9)) -> None:
    """`count` small real images, JPEG and PNG, RGB, RGBA and grayscale, of several sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        mode, suffix = (("RGB", "jpg"), ("RGBA", "png"), ("L", "png"))[index % 3]
        Image.new(mode, (size[0] + 3 * index, size[1] + index), 40 * index).save(folder / f"{index}.{suffix}")


@pytest.fixture
def image_root(tmp_path) -> Path:
    """data/train with classes cat, dog, fox and data/val (deeper elsewhere) with cat and dog."""
    for name in ("cat", "dog", "fox"):
        write_images(tmp_path / "data" / "train" / name)
    for name in ("cat", "dog"):
        write_images(tmp_path / "elsewhere" / "deeper" / "val" / name, count=1)
    return tmp_path


def problems(argv, cwd=None) -> str:
    with pytest.raises(InputError) as caught:
        check_train_command_line(argv)
    return str(caught.value)


def test_valid_inputs_pass(image_root):
    check_train_command_line(["--train_dir", str(image_root / "data/train"), "--validation_dir",
                              str(image_root / "elsewhere/deeper/val"), "--model_name_or_path", "tiny",
                              "--image_size", "32", "--distillation_type", "none", "--output_dir", str(image_root / "o")])
    check_train_command_line([])  # the defaults
    check_train_command_line(["--dataset_name", "digits", "--max_steps", "3", "--push_to_hub"])  # other flags skipped


def test_missing_and_empty_folders_name_the_fix(image_root):
    train = image_root / "data" / "train"
    message = problems(["--train_dir", str(image_root / "data" / "trian")])
    assert "no such folder" in message and "did you mean" in message and str(train) in message
    (image_root / "empty").mkdir()
    assert "holds no images" in problems(["--train_dir", str(image_root / "empty")])
    (image_root / "notes.txt").write_text("x")
    assert "is a file" in problems(["--train_dir", str(image_root / "notes.txt")])
    # The parent of the splits, a single class, images outside class folders.
    assert "parent of the splits" in problems(["--train_dir", str(image_root / "data"), "--validation_dir",
                                               str(image_root / "elsewhere/deeper/val")])  # fmt: skip
    write_images(image_root / "one" / "cat")
    assert "single class folder" in problems(["--train_dir", str(image_root / "one")])
    write_images(image_root / "flat", count=3)
    message = problems(["--train_dir", str(image_root / "flat")])
    assert "directly in it" in message and "--unlabeled_train_dir" in message
    assert "needs a --train_dir" in problems(["--validation_dir", str(image_root / "elsewhere/deeper/val")])


def test_an_extra_validation_class_is_refused_naming_it(image_root):
    write_images(image_root / "elsewhere" / "deeper" / "val" / "cats", count=1)
    message = problems(["--train_dir", str(image_root / "data/train"), "--validation_dir",
                        str(image_root / "elsewhere/deeper/val")])
    assert "'cats' (closest in train: 'cat')" in message and "cat, dog, fox" in message


def test_unknown_preset_lists_them_and_suggests_the_closest():
    message = problems(["--model_name_or_path", "tinny"])
    assert "Did you mean 'tiny'?" in message and "small-384" in message and "deit_base_distilled_patch16_224" in message


def test_teacher_and_model_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "teacher_run").mkdir(parents=True)
    # A path whose parent exists: a missing folder, with what is there.
    message = problems(["--teacher_name_or_path", "outputs/teacher", "--distillation_type", "hard"])
    assert "no such folder" in message and "teacher_run" in message
    # A folder without a saved model.
    assert "without config.json" in problems(["--teacher_name_or_path", "outputs/teacher_run"])
    # Offline (the tests' HF_HUB_OFFLINE=1): a Hub id not in the cache is said to be unreachable, not a network error.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    message = problems(["--teacher_name_or_path", "facebook/regnet-y-160"])
    assert "HF_HUB_OFFLINE" in message and "Hub cache" in message
    # A teacher not trained yet, named as a folder that is not there (step 3 before step 2): the script to train it.
    message = problems(["--teacher_name_or_path", "runs/teacher"])
    assert "neither a folder here nor in the Hub cache" in message and "written by scripts/train_teacher.py" in message
    (tmp_path / "cache" / "models--facebook--regnet-y-160" / "snapshots" / "abc").mkdir(parents=True)
    check_train_command_line(["--teacher_name_or_path", "facebook/regnet-y-160"])  # cached: fine offline
    assert "neither a folder here nor a Hub id" in problems(["--teacher_name_or_path", "my teacher"])
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "config.json").write_text('{"image_size": 224}')
    check_train_command_line(["--teacher_name_or_path", "saved", "--model_name_or_path", "saved"])


def test_choices_are_checked_with_or_without_a_teacher(tmp_path):
    assert "not a choice" in problems(["--distillation_type", "bogus"])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "config.json").write_text("{}")
    message = problems(["--distillation_type", "Hard", "--teacher_name_or_path", str(tmp_path / "t"),
                        "--attention_distillation_token", "class", "--feature_distillation_loss", "l2",
                        "--preset", "imagenette", "--distillation_alpha", "1.5"])
    assert message.startswith("5 problems")
    assert "did you mean hard?" in message and "did you mean imagenet?" in message and "[0, 1]" in message


def test_contradicting_flags(tmp_path):
    assert "learn(s) from a teacher" in problems(["--distillation_type", "soft"])
    assert "learn(s) from a teacher" in problems(["--labeled_fraction", "0.1"])
    # Every term's switch, not a list that forgot some (the feature-map term's weight was checked only after torch).
    for flag in [term.switch for term in terms.TERMS.values()]:
        value = "soft" if flag == "distillation_type" else "0.5"
        assert f"--{flag} {value} learn(s) from a teacher" in problems([f"--{flag}", value])
    # A value that is no choice or no number is said once, by its own rule.
    assert "learn(s) from a teacher" not in problems(["--distillation_type", "bogus"])
    assert problems(["--image_size", "abc"]) == "--image_size abc: give a whole number."
    assert "disagree" in problems(["--image_size", "32", "--config_overrides", "image_size=64"])
    # A size in whole patches is the model's rule, checked where the config is made (tests/test_configuration.py).
    assert "keep one" in problems(["--dataset_name", "digits", "--train_dir", str(tmp_path)])


def test_dataset_names_offline():
    message = problems(["--dataset_name", "mnsit"])
    assert "Did you mean 'mnist'?" in message and "HF_HUB_OFFLINE" in message


def test_the_teacher_script_checks_its_inputs(tmp_path):
    with pytest.raises(InputError, match="choose one of resnet, regnet"):
        check_teacher_command_line(["--architecture", "resnt"])
    with pytest.raises(InputError, match="no such folder"):
        check_teacher_command_line(["--train_dir", str(tmp_path / "missing")])
    with pytest.raises(InputError, match="--unlabeled_dataset_name: the teacher learns from labelled images only"):
        check_teacher_command_line(["--unlabeled_dataset_name", "digits"])


def test_repeated_augmentation_is_checked_for_both_scripts():
    assert "give 1 (off) or more copies" in problems(["--repeated_augmentation", "0"])
    assert "give a whole number" in problems(["--repeated_augmentation", "three"])
    with pytest.raises(InputError, match="give 1 \\(off\\) or more copies"):
        check_teacher_command_line(["--repeated_augmentation", "-1"])
    check_train_command_line(["--repeated_augmentation", "1"])  # no error


def test_json_configuration_files_are_checked_too(tmp_path):
    (tmp_path / "run.json").write_text('{"distillation_type": "bogus", "max_steps": 3}')
    assert "not a choice" in problems([str(tmp_path / "run.json")])
    # Every flag is read, so a null (a setting left to its default, as run_settings.json holds it) is no value to check.
    (tmp_path / "run.json").write_text('{"distillation_type": null, "feature_map_distillation_weight": null, '
                                       '"labeled_fraction": null, "image_size": null}')
    check_train_command_line([str(tmp_path / "run.json")])


def test_class_folders_at_any_depth_and_hidden_files(image_root):
    (image_root / "data" / "train" / ".ipynb_checkpoints").mkdir()
    (image_root / "data" / "train" / "empty_class").mkdir()
    write_images(image_root / "data" / "train" / "cat" / "2019" / "deep", count=1)
    folders = find_class_folders(str(image_root / "data" / "train"))
    assert folders.classes == ("cat", "dog", "fox") and folders.empty == ("empty_class",)
    paths, labels = folders.labelled_files()
    assert len(paths) == 7 and labels == [0, 0, 0, 1, 1, 2, 2]


def test_the_model_presets_mirror_the_model_file():
    # The model file travels to the Hub as remote code and imports nothing of this package: its presets are mirrored.
    from hf_deit.configuration_distilled_deit import PRESET_ALIASES, PRESETS

    assert set(checks.MODEL_PRESETS) == set(PRESET_ALIASES) | set(PRESETS)
    assert set(checks.PRESET_ALIASES) == set(PRESET_ALIASES)  # --help lists them
    assert {PRESETS[PRESET_ALIASES.get(name, name)].get("patch_size", 16) for name in checks.MODEL_PRESETS} == {16}


# Strings that are choices of a setting but also ordinary values of other things (report_to="none", precision "auto",
# top_k "all", a script's --check both): a comparison with one counts as a copy only when the other side names the
# setting.
COMMON_WORDS = {"none", "auto", "all", "both"}


def declared_choices() -> dict[str, tuple]:
    """Every setting's choices: `hf_deit_inputs.choices`' and the distillation terms' (`hf_deit_inputs.terms`)."""
    return {**choices.CHOICES, **{item.name: item.choices for item in terms.term_settings() if item.choices}}


def choice_copies(tree: ast.AST) -> list[str]:
    """Where a module spells out choices of a setting again: a tuple, list or set holding two or more choices of one
    setting (either quote style: the parsed source is read), or a comparison with a choice (`== "soft"`,
    `in ("soft", ...)`, `!= "none"` of a variable named after the setting)."""
    owners = {}  # choice -> the settings it belongs to
    for name, values in declared_choices().items():
        for value in values:
            owners.setdefault(value, set()).add(name)

    def strings(node) -> list[str]:
        return [item.value for item in getattr(node, "elts", ()) if isinstance(item, ast.Constant)
                and isinstance(item.value, str)]  # fmt: skip

    def names_setting(node, setting: str) -> bool:
        identifier = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
        return bool(identifier) and (setting == identifier or setting.endswith("_" + identifier))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            for setting, values in declared_choices().items():
                if len(set(strings(node)) & set(values)) >= 2:
                    found.append(f"line {node.lineno}: {ast.unparse(node)[:60]} (choices of {setting})")
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for side in sides:
                values = [side.value] if isinstance(side, ast.Constant) else strings(side)
                for value in (value for value in values if isinstance(value, str) and value in owners):
                    others = [other for other in sides if other is not side]
                    if value not in COMMON_WORDS or any(names_setting(other, setting) for other in others
                                                        for setting in owners[value]):  # fmt: skip
                        found.append(f"line {node.lineno}: {ast.unparse(node)[:60]} (a choice of "
                                     f"{', '.join(sorted(owners[value]))})")
    return list(dict.fromkeys(found))


def test_every_choice_is_written_once():
    """Each setting's choices are spelled in one place, `hf_deit_inputs.choices` or a term's declaration
    (`hf_deit_inputs.terms`); code elsewhere names them through it (a copy is a list that drifts when a choice is
    added, a comparison that silently misses a renamed one)."""
    import hf_deit.arguments
    import hf_deit.data

    assert hf_deit.data.AUGMENTATION_PRESETS is choices.AUGMENTATION_PRESETS
    assert hf_deit.arguments.TEACHER_ARCHITECTURES is choices.TEACHER_ARCHITECTURES
    copies = {}
    for path in sorted([*(REPO / "src").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]):
        if path not in (Path(choices.__file__), Path(terms.__file__)):
            found = choice_copies(ast.parse(path.read_text(), str(path)))
            if found:
                copies[str(path.relative_to(REPO))] = found
    assert not copies, "choices spelled outside hf_deit_inputs/choices.py and terms.py:\n" + json.dumps(copies, indent=1)
    assert choices.RANGES["rand_augment"].high == choices.RAND_AUGMENT_MAX_MAGNITUDE


def test_the_written_once_check_catches_both_quote_styles_and_comparisons():
    source = """
TYPES = ('none', 'soft', "hard")
LOSSES = ["kl", "mse"]
if args.distillation_type == "soft": pass
if loss.distillation_type in ("soft", "hard"): pass
if self.weak_teacher_fallback != 'all': pass
if top_k == "all" or report_to == "none": pass
ONE = ("soft", "other")
"""
    found = "\n".join(choice_copies(ast.parse(source)))
    for line in (2, 3, 4, 5, 6):
        assert f"line {line}:" in found, found
    assert "line 7:" not in found and "line 8:" not in found, found


def test_a_setting_is_checked_by_the_same_rule_on_the_command_line_and_in_python(tmp_path):
    from hf_deit.arguments import AugmentationArguments, DataArguments, DistillationConfig

    for name, value in (("distillation_alpha", "1.5"), ("distillation_type", "bogus"), ("feature_distillation_token",
                                                                                          "patch")):  # fmt: skip
        with pytest.raises(InputError) as command_line:
            check_train_command_line([f"--{name}", value, "--teacher_name_or_path", str(tmp_path)])
        rule = choices.problem(name, value)
        assert f"--{rule}" in str(command_line.value)
        typed = float(value) if name == "distillation_alpha" else value
        with pytest.raises(ValueError, match=choices.problem(name, typed).split(":")[0]):
            DistillationConfig(output_dir=str(tmp_path), report_to="none", **{name: typed})
    with pytest.raises(ValueError, match=r"rand_augment 11: give a magnitude from 0 to 10"):
        AugmentationArguments(rand_augment="11").resolved()
    with pytest.raises(ValueError, match=r"labeled_fraction 0: give a number in \(0, 1\]"):
        DataArguments(labeled_fraction=0)
    assert "rand_augment 11: give a magnitude from 0 to 10" in str(choices.problems({"rand_augment": "11"}))


@pytest.mark.parametrize("script, argv, expected", [
    ("train.py", ["--train_dir", "no/such/folder"], "no such folder"),
    ("train.py", ["--model_name_or_path", "tinny"], "Did you mean 'tiny'?"),
    ("train.py", ["--teacher_name_or_path", "./teacher", "--distillation_type", "bogus"], "2 problems"),
    ("train_teacher.py", ["--architecture", "resnt"], "did you mean resnet?"),
    ("demo.py", ["no/such/folder"], "no such folder"),
])  # fmt: skip
def test_scripts_answer_in_well_under_two_seconds_before_importing_torch(tmp_path, script, argv, expected):
    """Timed in CPU seconds of the child (the machine may be busy): torch alone costs more than the budget."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                                           os.environ.get("PYTHONPATH")]))}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *argv], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{script}: error:" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr
    assert cpu_seconds < 2.0


@pytest.mark.parametrize("argv, expected", [
    (["--model_name_or_path", "tiny", "--image_size", "30"], "image_size 30 is not divisible by patch_size 16"),
    (["--resume_from_checkpoint", "nowhere"], "--resume_from_checkpoint nowhere: not a checkpoint folder"),
    (["--epochs", "3"], "--epochs: no such flag (did you mean --num_train_epochs?)."),  # after torch: transformers' flags
])  # fmt: skip
def test_a_rule_the_package_keeps_where_it_acts_is_answered_as_an_input_error(tmp_path, argv, expected):
    """Not repeated before torch loads: the model's config and the resume refuse these, and the script prints it as
    argparse prints usage errors, before any training."""
    result, _ = run_script("train.py", "--dataset_name", "digits", "--output_dir", str(tmp_path), *argv, cwd=tmp_path)
    assert result.returncode == 2 and "train.py: error: " in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.glob("checkpoint-*"))


@pytest.mark.parametrize("argv, expected", [
    (["--epochs", "3", "--batch-size", "8"], "--epochs: no such flag (did you mean --num_train_epochs?).\n- "
     "--batch_size: no such flag (did you mean --per_device_train_batch_size?)."),
    (["--lr", "1e-3"], "--lr: no such flag (did you mean --learning_rate?)."),  # the official DeiT code's name
    (["--teacher_name", "x"], "--teacher_name: no such flag (did you mean --teacher_name_or_path"),  # no abbreviations
    (["--train_dir", "data/train", "data/val"], "data/val: a value without its flag (--name value)."),
])  # fmt: skip
def test_a_flag_no_dataclass_has_is_answered_with_the_closest_ones(argv, expected):
    from hf_deit.arguments import train_argument_parser
    from hf_deit.run import parse_command_line

    with pytest.raises(InputError) as error:
        parse_command_line(train_argument_parser(), argv, check=lambda command_line: None)
    assert expected in str(error.value)


def test_a_settings_file_key_no_dataclass_has_is_answered_as_a_flag_would_be(tmp_path):
    from hf_deit.arguments import teacher_argument_parser
    from hf_deit.run import parse_command_line

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"output_dir": str(tmp_path), "num_train_epochs": 3}))
    assert parse_command_line(teacher_argument_parser(), [str(settings)], lambda _: None)[-1].num_train_epochs == 3
    settings.write_text(json.dumps({"output_dir": str(tmp_path), "epochs": 3}))
    with pytest.raises(InputError, match=r"--epochs: no such flag \(did you mean --num_train_epochs\?\)"):
        parse_command_line(teacher_argument_parser(), [str(settings)], lambda _: None)


def test_a_saved_model_at_a_size_its_patches_do_not_divide_is_answered_as_an_input_error(tmp_path):
    from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification

    config = DistilledDeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)  # fmt: skip
    DistilledDeiTForImageClassification(config).save_pretrained(tmp_path / "saved")
    test_a_rule_the_package_keeps_where_it_acts_is_answered_as_an_input_error(
        tmp_path, ["--model_name_or_path", str(tmp_path / "saved"), "--image_size", "30"],
        "image_size 30 is not a multiple of the checkpoint's patch size (8, 8): pass a multiple (e.g. 24)")


# ----------------------------------------------------------------------------------------------------------- --help


def run_script(script, *argv, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                                           os.environ.get("PYTHONPATH")]))}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *argv], cwd=cwd or REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_help_is_grouped_with_examples_on_top_and_answers_at_once():
    result, cpu_seconds = run_script("train.py", "--help")
    assert result.returncode == 0 and cpu_seconds < 3.0
    text = result.stdout
    assert text.index("python scripts/train.py --train_dir data/train") < text.index("Model (the student):")
    titles = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == ["Model (the student):", "Data:", "Augmentation:", "Distillation:", "Training:"]
    for flag in ("--teacher_name_or_path", "--distillation_type", "--train_dir", "--rand_augment", "--max_steps",
                 "--overwrite_output_dir", "--image_size"):
        assert f"  {flag} " in text, flag
    assert len(text.splitlines()) < 300 and "--help_all" in text


def test_the_help_gives_transformers_defaults_for_its_own_flags():
    from transformers import TrainingArguments

    from hf_deit_inputs.help import TRANSFORMERS_FLAGS

    defaults = {item.name: item.default for item in dataclasses.fields(TrainingArguments)}
    assert {name: default for name, (_, default, _) in TRANSFORMERS_FLAGS.items()} == {
        name: defaults[name] for name in TRANSFORMERS_FLAGS}


@pytest.mark.slow
def test_help_all_lists_every_flag_in_groups():
    result, _ = run_script("train.py", "--help_all")
    assert result.returncode == 0
    for title in ("Model (the student):", "Data:", "Augmentation:", "Distillation:"):
        assert f"\n{title}\n" in result.stdout, title
    assert "--gradient_accumulation_steps" in result.stdout


def test_the_training_images_are_not_the_validation_images(image_root):
    train = str(image_root / "data" / "train")
    message = problems(["--train_dir", train, "--validation_dir", train + "/"])
    assert message.startswith("--validation_dir")
    assert "is --train_dir: the model would be judged on the images it learns" in message
    assert "leave --validation_dir out (--train_val_split holds out 15% of train)" in message


def test_the_student_is_not_written_over_its_teacher(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}")
    message = problems(["--teacher_name_or_path", "teacher", "--output_dir", str(tmp_path / "teacher")])
    assert "is the teacher's folder (--teacher_name_or_path): the student would be written over its teacher" in message
    check_train_command_line(["--teacher_name_or_path", "teacher", "--output_dir", "teacher/student"])


def test_checkpoint_files_are_accepted_other_files_are_not(tmp_path):
    (tmp_path / "deit.pth").write_bytes(b"weights")
    (tmp_path / "notes.txt").write_text("not a model")
    check_train_command_line(["--model_name_or_path", str(tmp_path / "deit.pth")])  # converted on load
    message = problems(["--model_name_or_path", str(tmp_path / "notes.txt")])
    assert "is a file but not a checkpoint" in message and ".safetensors" in message


# ------------------------------------------------------------------ evaluate_model.py and visualize_attention.py


@pytest.fixture
def saved_model(tmp_path) -> Path:
    """A folder that looks like a saved model to the checks (config.json), beside the image folders."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"image_size": 32, "patch_size": 8}')
    return tmp_path / "model"


def evaluate_problems(argv) -> str:
    with pytest.raises(InputError) as caught:
        checks.check_evaluate_command_line(argv)
    return str(caught.value)


def test_evaluate_inputs(image_root, saved_model):
    val = str(image_root / "elsewhere/deeper/val")
    checks.check_evaluate_command_line(["--model_name_or_path", str(saved_model), "--validation_dir", val,
                                        "--teacher_name_or_path", str(saved_model), "--teacher_image_size", "student",
                                        "--output_file", str(image_root / "new" / "results.json")])  # fmt: skip
    message = evaluate_problems(["--model_name_or_path", str(image_root / "modle"), "--validation_dir", val + "x"])
    assert message.startswith("2 problems") and "did you mean" in message and str(saved_model) in message
    assert "holds no images" in evaluate_problems(["--model_name_or_path", str(saved_model), "--validation_dir",
                                                   str(saved_model)])  # fmt: skip
    message = evaluate_problems(["--model_name_or_path", str(saved_model), "--teacher_image_size", "big"])
    assert "give 'student'" in message
    message = evaluate_problems(["--model_name_or_path", str(saved_model), "--teacher_image_size", "224"])
    assert "no --teacher_name_or_path was given" in message
    message = evaluate_problems(["--model_name_or_path", str(saved_model), "--batch_size", "0", "--output_file",
                                 str(image_root)])  # fmt: skip
    assert "--batch_size 0" in message and "is a folder: name a file to write" in message
    assert "no such folder" in problems(["--teacher_image_size", "student", "--teacher_name_or_path", "./teachr"])


def visualize_problems(**values) -> str:
    from visualize_attention import check, parse_args

    given = [values.pop("model"), *(["--images", *values.pop("images")] if "images" in values else [])]
    with pytest.raises(InputError) as caught:
        check(parse_args([*given, *(f"--{name}={value}" for name, value in values.items())]))
    return str(caught.value)


def test_visualize_inputs(image_root, saved_model):
    from visualize_attention import check, parse_args, recorded_data_flags

    train, val = str(image_root / "data/train"), str(image_root / "elsewhere/deeper/val")
    photo = image_root / "data" / "train" / "cat" / "0.jpg"
    check(parse_args([str(saved_model), "--images", str(photo), "--num_images", "4"]))
    check(parse_args([str(saved_model), "--validation_dir", val]))  # an evaluation folder alone
    assert "no such folder" in visualize_problems(model=str(image_root / "missing"), images=[str(photo)])
    message = visualize_problems(model=str(saved_model), images=[str(image_root / "cat.jpg"), train])
    assert "cat.jpg: no such file" in message and "train: not an image file" in message
    (image_root / "notes.txt").write_text("x")
    assert "not an image file" in visualize_problems(model=str(saved_model), images=[str(image_root / "notes.txt")])
    assert "keep one" in visualize_problems(model=str(saved_model), images=[str(photo)], train_dir=train)
    assert "--num_images 0" in visualize_problems(model=str(saved_model), images=[str(photo)], num_images=0)
    assert "no such folder" in visualize_problems(model=str(saved_model), validation_dir=val + "2")
    # Neither images nor data flags: the data the run recorded, which must say what it was.
    with pytest.raises(InputError, match="pass --images, or the data flags"):
        recorded_data_flags(str(saved_model))
    # As train.py records it: --dataset_name's default beside the folders, which are the data.
    (saved_model / "run_settings.json").write_text(json.dumps({"dataset_name": "mnist", "train_dir": train,
                                                               "validation_dir": val, "train_val_split": 0.1}))
    assert recorded_data_flags(str(saved_model)) == {"train_dir": train, "validation_dir": val, "train_val_split": 0.1}


def test_both_scripts_take_config_overrides_as_key_value_pairs():
    """One syntax for the student's and the teacher's --config_overrides: key=value pairs, JSON values for lists."""
    from hf_deit_inputs.checks import parse_config_overrides

    assert parse_config_overrides("hidden_sizes=[32, 64],depths=[1,1],qkv_bias=false,layer_type=basic,lr=1e-3") == {
        "hidden_sizes": [32, 64], "depths": [1, 1], "qkv_bias": False, "layer_type": "basic", "lr": 1e-3}
    check_teacher_command_line(["--config_overrides", "hidden_sizes=[32,64],depths=[1,1]"])
    for check in (check_teacher_command_line, check_train_command_line):
        with pytest.raises(InputError, match="key=value pairs separated by commas, not a JSON object"):
            check(["--config_overrides", '{"depths": [1, 1, 2, 1]}'])
        with pytest.raises(InputError, match="expected key=value"):
            check(["--config_overrides", "depths"])


@pytest.mark.parametrize("script, argv, expected", [
    ("evaluate_model.py", ["--model_name_or_path", "./model", "--validation_dir", "no/val"], "2 problems"),
    ("evaluate_model.py", ["--model_name_or_path", "me/deit", "--teacher_image_size", "big"], "HF_HUB_OFFLINE"),
    ("visualize_attention.py", ["./model", "--num_images", "2"], "no such folder"),
    ("visualize_attention.py", ["./model", "--images", "cat.jpg"], "no such file"),
])  # fmt: skip
def test_evaluate_and_visualize_answer_in_well_under_two_seconds(tmp_path, script, argv, expected):
    test_scripts_answer_in_well_under_two_seconds_before_importing_torch(tmp_path, script, argv, expected)


def test_teacher_help_is_grouped_and_answers_at_once():
    result, cpu_seconds = run_script("train_teacher.py", "--help")
    assert result.returncode == 0 and cpu_seconds < 3.0, result.stderr[-2000:]
    text = result.stdout
    assert text.index("python scripts/train_teacher.py --train_dir data/train") < text.index("Model (the teacher):")
    titles = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == ["Model (the teacher):", "Data:", "Augmentation:", "Training:"]
    for flag in ("--architecture", "--config_overrides", "--train_dir", "--rand_augment", "--max_steps"):
        assert f"  {flag} " in text, flag
    assert "(default: 0.002)" in text and "--help_all" in text  # the teacher's own learning rate, not DeiT's
