"""The run sized to the data (issue 33, point 2): the input size chosen from a folder's images
(`hf_deit.data.sizing`), and the evaluation and checkpoint cadence sized to the run's length (`hf_deit.run`)."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from hf_deit.arguments import DistillationConfig, TeacherTrainingArguments
from hf_deit.data import load_image_folders, size_input
from hf_deit.data.sizing import SMALL_MODEL_SIZE, STANDARD_SIZES, choose_input_size, far_size_warning
from hf_deit.run import CADENCE_TARGET, EMBEDDED_STUDENT, size_run


def scan_folder(root, per_class: int, offset: int = 0):
    """`root/<digit>/<n>.png`: scikit-learn's bundled 8x8 grey scans of handwritten digits, as a user's folder."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        indices = np.flatnonzero(digits.target == digit)[offset : offset + per_class]
        for index in indices:
            pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / str(digit) / f"{index}.png")
    return root


def test_small_model_size_is_the_embedded_students():
    assert SMALL_MODEL_SIZE == EMBEDDED_STUDENT["image_size"]


def test_the_rule_sizes_tiny_images_to_the_small_model_and_photos_to_a_standard_size():
    scans = choose_input_size([(8, 8)] * 30)
    assert (scans.image_size, scans.small_model, scans.median_side) == (28, True, 8)
    assert choose_input_size([(28, 28), (32, 40)] * 5).small_model  # digits, CIFAR-like thumbnails
    photos = choose_input_size([(side, side + 30) for side in (48, 90, 110, 130, 200)])  # median short side 110
    assert (photos.image_size, photos.small_model) == (128, False)
    assert choose_input_size([(640, 480)] * 3).image_size == 224  # capped at the paper's size
    assert choose_input_size([(64, 64)]).image_size == 64
    assert choose_input_size([]) is None


def test_far_size_warning_names_both_sizes():
    assert far_size_warning(224, 100) is None and far_size_warning(32, 100) is None
    enlarged = far_size_warning(224, 8)
    assert "--image_size 224" in enlarged and "median short side 8 px" in enlarged and "28.0x" in enlarged
    shrunk = far_size_warning(32, 400)
    assert "--image_size 32" in shrunk and "400 px" in shrunk


def test_a_folder_of_scans_gets_the_small_model_and_a_given_size_far_off_is_warned_of(tmp_path, caplog):
    split = load_image_folders(str(scan_folder(tmp_path / "scans", per_class=5)))["train"]
    with caplog.at_level(logging.INFO, logger="hf_deit.data.sizing"):
        chosen = size_input(split, seed=0)
    assert (chosen.image_size, chosen.small_model, chosen.median_side) == (28, True, 8)
    assert "Input size 28 px" in caplog.text and "median short side of 48 sampled images is 8 px" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_deit.data.sizing"):
        assert size_input(split, image_size=224) is None  # a given size stands
        assert size_input(split, image_size=28) is None
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "--image_size 224" in warnings[0] and "8 px" in warnings[0], warnings


def test_a_photo_folder_gets_the_smallest_standard_size_at_or_above_its_median(tmp_path):
    from test_user_folder import photo_folder

    split = load_image_folders(str(photo_folder(tmp_path / "photos", per_class=6, seed=0)))["train"]
    chosen = size_input(split, seed=0)
    sides = sorted(min(Image.open(path).size) for path in (tmp_path / "photos").rglob("*.*"))
    assert chosen.median_side == pytest.approx(np.median(sides))  # 18 images: every one is read
    assert not chosen.small_model and 40 <= chosen.median_side <= 160
    assert chosen.image_size == min(size for size in STANDARD_SIZES if size >= chosen.median_side)
    assert size_input(split, seed=0) == chosen  # seeded: a rerun (a resume) sizes the same


class Sized:
    """A training set of `n` examples: the sizing reads its length only."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n


def test_cadence_follows_the_run_length_not_the_epoch(tmp_path, caplog):
    # 90 images, batch 64: 2 steps an epoch, so 300 steps are 150 epochs: about 20 evaluations and checkpoints.
    with caplog.at_level(logging.INFO, logger="hf_deit.run"):
        student = size_run(DistillationConfig(output_dir=str(tmp_path), report_to=[]), None, Sized(90), Sized(30))
    assert student.max_steps <= 0 and student.num_train_epochs == 150
    assert (student.eval_strategy, student.eval_steps) == ("steps", 15)
    assert (student.save_strategy, student.save_steps) == ("steps", 15)
    assert 300 / student.eval_steps <= CADENCE_TARGET
    assert "evaluation every 15 steps" in caplog.text and "checkpoints every 15 steps" in caplog.text

    # The teacher keeps its best checkpoint: evaluation and saving move together.
    teacher = size_run(TeacherTrainingArguments(output_dir=str(tmp_path), report_to=[]), None, Sized(90), Sized(30))
    assert teacher.load_best_model_at_end and teacher.metric_for_best_model == "accuracy"
    assert teacher.eval_strategy == teacher.save_strategy == "steps" and teacher.eval_steps == teacher.save_steps

    # Long epochs keep the epoch; a cadence given is kept; a given one with the best model kept holds the other.
    long_epochs = size_run(DistillationConfig(output_dir=str(tmp_path), report_to=[]), None, Sized(50_000), Sized(30))
    assert long_epochs.eval_strategy == long_epochs.save_strategy == "epoch"
    no_saves = size_run(DistillationConfig(output_dir=str(tmp_path), report_to=[], save_strategy="no"), None,
                        Sized(90), Sized(30))  # fmt: skip
    assert (no_saves.eval_strategy, no_saves.save_strategy) == ("steps", "no")
    given = size_run(DistillationConfig(output_dir=str(tmp_path), report_to=[], eval_strategy="epoch"), None,
                     Sized(90), Sized(30))  # fmt: skip
    assert given.eval_strategy == "epoch" and given.save_strategy == "steps"
    held = size_run(TeacherTrainingArguments(output_dir=str(tmp_path), report_to=[], eval_strategy="epoch"), None,
                    Sized(90), Sized(30))  # fmt: skip
    assert held.load_best_model_at_end and held.eval_strategy == held.save_strategy == "epoch"
    # No evaluation set: the checkpoints alone.
    unevaluated = size_run(DistillationConfig(output_dir=str(tmp_path), report_to=[]), None, Sized(90), None)
    assert (unevaluated.eval_strategy, unevaluated.save_strategy) == ("no", "steps")


@pytest.mark.slow
def test_both_scripts_size_a_folder_of_scans_with_default_flags(tmp_path, caplog):
    import train
    import train_teacher

    train_dir = scan_folder(tmp_path / "scans" / "train", per_class=20)
    val_dir = scan_folder(tmp_path / "scans" / "val", per_class=3, offset=20)
    data = ["--train_dir", str(train_dir), "--validation_dir", str(val_dir), "--report_to", "none",
            "--disable_tqdm", "true", "--max_steps", "3"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        train_teacher.main(["--output_dir", str(tmp_path / "teacher"), *data])
    processor = json.loads((tmp_path / "teacher" / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 28, "width": 28}, processor
    assert "Input size 28 px, sized to the images" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO):
        train.main(["--output_dir", str(tmp_path / "student"), *data])
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert {key: config[key] for key in EMBEDDED_STUDENT} == EMBEDDED_STUDENT  # the small-image student
    assert "Input size 28 px, sized to the images" in caplog.text
    assert "learning rate 0.001" in caplog.text  # the small student's own rate at batch 64
