"""End-to-end runs of the command-line scripts on the embedded digits: what a user types, in small."""

import importlib.machinery
import json
import os
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"

TINY_STUDENT = "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2"
TINY_TEACHER = "hidden_sizes=[16,32],depths=[1,1],embedding_size=16"
FAST_RUN = ["--dataset_name", "digits", "--image_size", "16", "--max_steps", "8", "--per_device_train_batch_size",
            "32", "--logging_steps", "4", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true",
            "--max_eval_samples", "64"]


def test_no_script_is_named_like_a_module_it_would_hide():
    # A running script's folder comes first on sys.path: a script named like a library or standard module (as
    # evaluate.py was, for the `evaluate` library the metrics use) would be imported in its place.
    elsewhere = [path for path in sys.path if Path(path or os.curdir).resolve() != SCRIPTS.resolve()]
    hidden = [
        script.stem for script in sorted(SCRIPTS.glob("*.py"))
        if script.stem in sys.stdlib_module_names or importlib.machinery.PathFinder.find_spec(script.stem, elsewhere)
    ]  # fmt: skip
    assert hidden == []


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    metrics = train_teacher.main(["--output_dir", str(out), "--config_overrides", TINY_TEACHER, *FAST_RUN])
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_top5_accuracy" in metrics
    return out


def test_train_teacher_saves_a_loadable_classifier_with_its_preprocessing(teacher_dir):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    teacher = AutoModelForImageClassification.from_pretrained(teacher_dir)
    assert teacher.config.model_type == "resnet"
    assert teacher.config.id2label == {i: str(i) for i in range(10)}
    processor = AutoImageProcessor.from_pretrained(teacher_dir)
    assert processor.crop_size == {"height": 16, "width": 16}
    card = (teacher_dir / "README.md").read_text()  # the teacher has a card too
    assert "(`resnet`)" in card and "- Training data: `digits`" in card and "- Final training loss: " in card
    assert "top-1 accuracy" in card and "(1438 images)" in card


def test_train_with_hard_distillation_writes_model_code_card_and_per_head_metrics(teacher_dir, tmp_path):
    import train

    out = tmp_path / "student"
    metrics = train.main(["--output_dir", str(out), "--config_overrides", TINY_STUDENT,
                          "--teacher_name_or_path", str(teacher_dir), "--distillation_type", "hard", *FAST_RUN])
    for key in ("accuracy", "cls_accuracy", "distillation_accuracy", "teacher_accuracy", "teacher_agreement",
                "top5_accuracy"):
        assert 0.0 <= metrics[f"eval_{key}"] <= 1.0, key
    files = {path.name for path in out.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_distilled_deit.py", "modeling_distilled_deit.py",
            "preprocessor_config.json", "README.md"} <= files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "distilled_deit" and config["hidden_size"] == 32
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    weights = load_file(out / "model.safetensors")
    assert "distillation_classifier.weight" in weights and not any("teacher" in key for key in weights)
    card = (out / "README.md").read_text()
    assert "distillation_type" in card or "hard" in card
    assert str(teacher_dir) in card  # the teacher is named
    # The learning rate left unset follows the small-data rule, and the resolved value is what was used.
    state = json.loads((out / "trainer_state.json").read_text())
    assert max(entry.get("learning_rate", 0) for entry in state["log_history"]) <= 1e-3


def test_train_without_a_teacher_falls_back_to_no_distillation(tmp_path, caplog):
    import train

    metrics = train.main(["--output_dir", str(tmp_path), "--config_overrides", TINY_STUDENT, *FAST_RUN])
    assert "eval_teacher_agreement" not in metrics
    assert any("distillation_type none" in record.getMessage() for record in caplog.records)


def write_user_images(folder: Path, count: int, seed: int = 0) -> None:
    """A new user's images: JPEG and PNG of many sizes, RGB, RGBA and grayscale."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        mode, suffix = (("RGB", "jpg"), ("RGBA", "png"), ("L", "png"), ("L", "jpg"))[index % 4]
        width, height = (int(value) for value in rng.integers(9, 90, 2))
        pixels = rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8).squeeze(-1) if mode == "L" else \
            rng.integers(0, 256, (height, width, len(mode)), dtype=np.uint8)  # fmt: skip
        Image.fromarray(pixels, mode).save(folder / f"{index}.{suffix}")


@pytest.fixture
def user_folders(tmp_path) -> tuple[Path, Path]:
    """data/train with cat, dog, fox; a validation folder at another depth without fox."""
    train, validation = tmp_path / "data" / "train", tmp_path / "elsewhere" / "deeper" / "val"
    for name in ("cat", "dog", "fox"):
        write_user_images(train / name, 6)
    for name in ("cat", "dog"):
        write_user_images(validation / name, 3, seed=1)
    return train, validation


USER_RUN = ["--model_name_or_path", "tiny", "--image_size", "32", "--config_overrides",
            "hidden_size=32,num_hidden_layers=2,num_attention_heads=2", "--max_steps", "2",
            "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
            "--disable_tqdm", "true", "--report_to", "none"]  # fmt: skip


def test_a_new_users_image_folders_train_a_preset_at_the_size_asked(user_folders, tmp_path, caplog):
    import train

    train_dir, validation_dir = user_folders
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        metrics = train.main(["--output_dir", str(out), "--train_dir", str(train_dir), "--validation_dir",
                              str(validation_dir), "--distillation_type", "none", *USER_RUN])  # fmt: skip
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    # Three classes from train's folders (fox has no validation images: allowed, with a warning), at 32 px.
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "fox"} and config["image_size"] == 32
    assert any("fox" in record.getMessage() and "no images" in record.getMessage() for record in caplog.records)
    # The card: the folders as given (never the absolute path), image counts, recipe, final loss, precision used.
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card
    assert "- Training data: `data/train` (a local image folder, one sub-folder per class) (18 images)" in card
    assert "- Evaluation data: `deeper/val` (a local image folder, one sub-folder per class) (6 images)" in card
    assert "On `deeper/val`" in card and "- Augmentation: preset `small_images` as it is" in card
    assert "- Final training loss: " in card and "datasets:" not in card
    assert any(record.getMessage().startswith("Precision: ") for record in caplog.records)


@pytest.mark.slow
def test_experiment_script_quick_run_summarises_seeds(tmp_path):
    import experiment_distillation

    flags = ["--quick", "--dataset_name", "digits", "--variants", "none", "soft", "hard", "--output_dir", str(tmp_path),
             "--teacher_record", "always", "--", "--config_overrides", TINY_STUDENT, "--image_size", "16"]
    experiment_distillation.main(["--seeds", "0", *flags])
    summary = experiment_distillation.main(["--seeds", "1", *flags])  # a second process adds its seed
    assert set(summary) == {"teacher", "none", "soft", "hard"} and summary["hard"]["seeds"] == [0, 1]
    assert summary["hard"]["accuracy"]["n"] == 2
    for seed in (0, 1):  # soft and hard from one record of their seed's teacher
        served = json.loads((tmp_path / f"seed{seed}" / "records" / "records.json").read_text())
        assert [entry["students"] for entry in served.values()] == [["soft", "hard"]]
    assert "| DeiT, hard distillation |" in (tmp_path / "results.md").read_text()


def test_short_runs_are_warned_up_front_and_the_teacher_keeps_its_best_checkpoint(tmp_path, caplog):
    # 1,438 digits at batch 32: 45 steps an epoch. Two epochs are 90 steps, far below the 300 a new model needs: both
    # scripts say so before training, with the count and the setting that reaches 300 (and train anyway).
    import train
    import train_teacher

    short = ["--dataset_name", "digits", "--image_size", "16", "--per_device_train_batch_size", "32",
             "--num_train_epochs", "2", "--disable_tqdm", "true", "--max_eval_samples", "64", "--report_to", "none"]  # fmt: skip
    teacher_dir = tmp_path / "teacher"
    with caplog.at_level("WARNING"):
        metrics = train_teacher.main(["--output_dir", str(teacher_dir), "--config_overrides", TINY_TEACHER, *short])
    expected = ("--num_train_epochs 2 (45 step(s) an epoch) gives a new model 90 optimizer steps on 1438 images "
                "(global batch 32): far too few to learn; a model trained from scratch needs at least 300. Pass "
                "--num_train_epochs 7 (or --max_steps 300)")  # fmt: skip
    assert any(record.getMessage().startswith(expected) for record in caplog.records)
    # Evaluated and saved each epoch (the defaults): the best checkpoint by validation accuracy is the saved model,
    # and the card says which it is and how it scores.
    state = json.loads(next(teacher_dir.glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["best_model_checkpoint"] and state["best_metric"] == pytest.approx(metrics["eval_accuracy"])
    card = (teacher_dir / "README.md").read_text()
    assert f"- Checkpoint kept: the best by validation accuracy ({state['best_metric']:.1%}, step " in card
    assert "of 90)" in card and "top-1 accuracy" in card

    caplog.clear()
    with caplog.at_level("WARNING"):
        train.main(["--output_dir", str(tmp_path / "student"), "--config_overrides", TINY_STUDENT,
                    "--save_strategy", "no", "--eval_strategy", "no", *short])  # fmt: skip
    assert any(record.getMessage().startswith(expected) for record in caplog.records)
