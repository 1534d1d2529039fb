"""The defaults on data the project does not ship: a small image folder of real photos (crops of scikit-image's
astronaut, cat and coffee pictures, JPEG and PNG, many sizes, grayscale and RGBA among them), a CNN teacher trained
on it with `scripts/train_teacher.py`, then `scripts/train.py` with hard distillation and default training flags.
Only the student's size is set (a DeiT-Tiny at 224 px would take minutes here)."""

import json

import numpy as np
import pytest
from PIL import Image


CLASSES = ("astronaut", "cat", "coffee")
SMALL_STUDENT = "image_size=32,patch_size=8,hidden_size=64,num_hidden_layers=4,num_attention_heads=2"


def photo_folder(root, per_class: int, seed: int):
    """`root/<class>/<n>.jpg|png`: random crops (15-60% of the side) of each class's photo, resized to 40-160 px."""
    from skimage import data

    rng = np.random.default_rng(seed)
    for name in CLASSES:
        photo = Image.fromarray(getattr(data, name)())
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            side = int(min(photo.size) * rng.uniform(0.15, 0.6))
            left, top = rng.integers(0, photo.width - side), rng.integers(0, photo.height - side)
            crop = photo.crop((left, top, left + side, top + side)).resize((int(rng.integers(40, 160)),) * 2)
            if index % 7 == 0:
                crop = crop.convert("L")
            elif index % 7 == 1:
                crop = crop.convert("RGBA")
            suffix = "png" if crop.mode == "RGBA" or index % 2 else "jpg"
            crop.save(root / name / f"{index}.{suffix}")
    return root


@pytest.mark.slow
def test_defaults_distil_a_student_that_learns_on_a_small_photo_folder(tmp_path, caplog):
    import train
    import train_teacher

    train_dir = photo_folder(tmp_path / "photos" / "train", per_class=30, seed=0)
    val_dir = photo_folder(tmp_path / "photos" / "val", per_class=10, seed=1)
    data = ["--train_dir", str(train_dir), "--validation_dir", str(val_dir), "--report_to", "none",
            "--disable_tqdm", "true", "--save_strategy", "no"]  # fmt: skip
    teacher_dir = tmp_path / "teacher"
    teacher = train_teacher.main(["--output_dir", str(teacher_dir), "--image_size", "32", *data])
    assert teacher["eval_accuracy"] >= 0.8, teacher

    out = tmp_path / "student"
    with caplog.at_level("WARNING"):
        metrics = train.main(["--output_dir", str(out), "--config_overrides", SMALL_STUDENT,
                              "--teacher_name_or_path", str(teacher_dir), "--distillation_type", "hard", *data])  # fmt: skip

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    training = [entry for entry in history if "loss" in entry]
    # 90 images, batch 64: 2 steps an epoch, so the schedule grows to 150 epochs (300 steps). The rate follows the
    # small-data rule (not 6e-5), the loss is logged at least 20 times, and the feature-map term is on (32 px images,
    # a CNN teacher).
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 300
    assert max(entry["learning_rate"] for entry in training) == pytest.approx(5e-4, rel=0.05)
    assert len(training) >= 20 and all("loss_feature_map" in entry for entry in training)
    assert training[-1]["loss_cls"] < 0.7 * training[0]["loss_cls"]
    # Evaluated about 20 times in the run, not at each of its 150 epochs (hf_deit.run.size_cadence): every 15 steps.
    evaluations = [entry["step"] for entry in history if "eval_accuracy" in entry]
    assert evaluations == list(range(15, 301, 15)), evaluations
    # It learns, on both heads, and the averaged output is not worse than the better head.
    assert metrics["eval_cls_accuracy"] >= 0.7 and metrics["eval_distillation_accuracy"] >= 0.7, metrics
    assert metrics["eval_accuracy"] >= max(metrics["eval_cls_accuracy"], metrics["eval_distillation_accuracy"]) - 0.05
    assert not any("collapsed" in record.getMessage() or "averaged logits" in record.getMessage()
                   for record in caplog.records)  # fmt: skip
