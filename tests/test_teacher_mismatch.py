"""Teachers that do not match the student, saved as real folders (tiny transformers ResNets + image processors) and
given to scripts/train.py: errors before the first step, or re-ordering and resizing where the mismatch is benign."""

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, ResNetConfig, ResNetForImageClassification

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.arguments import DistillationConfig
from hf_deit.data import load_image_classification_dataset
from hf_deit.image_processing import deit_image_processor
from hf_deit.trainer import DistillationTrainer


DIGITS = [str(d) for d in range(10)]
TINY_STUDENT = "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2"
EVAL_SAMPLES = 64


def save_teacher(folder: Path, names: list[str], image_size: int = 16, num_channels: int = 3, seed: int = 0,
                 predicts: str | None = None) -> Path:  # fmt: skip
    """A tiny ResNet classifier with its image processor; `predicts` makes it always answer that class name."""
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=len(names),
        id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
    )  # fmt: skip
    model = ResNetForImageClassification(config).eval()
    if predicts is not None:
        head = model.classifier[-1]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[names.index(predicts)] = 10.0
    model.save_pretrained(folder)
    deit_image_processor(image_size, crop_pct=1.0).save_pretrained(folder)
    return folder


def run_train(tmp_path: Path, teacher: Path, *extra: str) -> dict:
    import train

    return train.main([
        "--output_dir", str(tmp_path / "run"), "--dataset_name", "digits", "--config_overrides", TINY_STUDENT,
        "--image_size", "16", "--max_steps", "3", "--per_device_train_batch_size", "16", "--max_eval_samples",
        str(EVAL_SAMPLES), "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to",
        "none", "--teacher_name_or_path", str(teacher), "--distillation_type", "hard", *extra,
    ])  # fmt: skip


def assert_not_trained(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert not (run / "model.safetensors").exists() and not list(run.glob("checkpoint-*"))


def test_another_number_of_classes_stops_before_the_first_step(tmp_path):
    teacher = save_teacher(tmp_path / "teacher", ["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="The teacher predicts 5 classes, the student 10.*train_teacher.py"):
        run_train(tmp_path, teacher)
    assert_not_trained(tmp_path)


def test_other_class_names_stop_before_the_first_step(tmp_path):
    teacher = save_teacher(tmp_path / "teacher", [f"class_{d}" for d in range(10)])
    with pytest.raises(ValueError, match=r"class names are not the student's: only the student has \['0', '1'"):
        run_train(tmp_path, teacher)
    assert_not_trained(tmp_path)


def test_a_model_that_is_not_an_image_classifier_is_refused(tmp_path):
    folder = tmp_path / "teacher"
    BertModel(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=8)).save_pretrained(folder)  # fmt: skip
    with pytest.raises(ValueError, match="model_type 'bert'.*is not an image classifier"):
        run_train(tmp_path, folder)
    assert_not_trained(tmp_path)


def test_another_channel_count_stops_before_the_first_step(tmp_path):
    teacher = save_teacher(tmp_path / "teacher", DIGITS, num_channels=1)
    with pytest.raises(ValueError, match="The teacher expects 1-channel images, the student 3"):
        run_train(tmp_path, teacher)
    assert_not_trained(tmp_path)


def test_reordered_classes_and_another_size_reach_the_loss_in_the_students_order_and_size(tmp_path):
    reversed_names = DIGITS[::-1]
    folder = save_teacher(tmp_path / "teacher", reversed_names, image_size=32, seed=1)
    student = DistilledDeiTForImageClassification(DistilledDeiTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_labels=10,
        id2label=dict(enumerate(DIGITS)), label2id={name: i for i, name in enumerate(DIGITS)},
    ))  # fmt: skip
    args = DistillationConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, eval_strategy="no",
                              distillation_type="hard")
    trainer = DistillationTrainer(model=student, args=args, teacher=str(folder),
                                  processing_class=deit_image_processor(16, crop_pct=1.0))  # fmt: skip
    assert trainer.teacher.input_adapter.teacher_size == (32, 32)

    seen_sizes = []
    teacher = trainer.teacher.model
    teacher.register_forward_pre_hook(lambda module, inputs: seen_sizes.append(tuple(inputs[0].shape)))
    pixel_values = torch.randn(4, 3, 16, 16)
    used = trainer.teacher_logits(pixel_values)
    assert seen_sizes == [(4, 3, 32, 32)]  # the adapter resized the student's batch for the teacher

    with torch.no_grad():
        resized = torch.nn.functional.interpolate(pixel_values, size=(32, 32), mode="bicubic", antialias=True)
        own_order = teacher(resized).logits
    # Column j of what the loss sees is the teacher's score for the student's class j (name DIGITS[j]).
    torch.testing.assert_close(used, own_order[:, [reversed_names.index(name) for name in DIGITS]])
    assert not torch.equal(used, own_order)


@pytest.mark.slow
def test_reordered_teacher_through_train_script_agrees_by_name(tmp_path):
    """A teacher that always answers "3", stored at its index 6 of the reversed names: the run's teacher accuracy is
    the share of 3s in the evaluation set, which it would not be if index 6 were read as the student's "6"."""
    folder = save_teacher(tmp_path / "teacher", DIGITS[::-1], image_size=32, predicts="3")
    labels = load_image_classification_dataset("digits", max_eval_samples=EVAL_SAMPLES, seed=42)["validation"]["label"]
    share = {digit: sum(label == digit for label in labels) / len(labels) for digit in (3, 6)}
    assert share[3] != share[6]
    metrics = run_train(tmp_path, folder)
    assert metrics["eval_teacher_accuracy"] == pytest.approx(share[3])


@pytest.mark.parametrize("setting, seen", [(None, (32, 32)), ("student", (16, 16)), (24, (24, 24)), ("20", (20, 20))])
def test_teacher_image_size_decides_what_the_teacher_sees(tmp_path, setting, seen):
    """By default the teacher sees its own preprocessing size; "student" keeps the student's batch as it is (the
    paper's fine-tuning at a new resolution, teacher included), a number resizes to that."""
    folder = save_teacher(tmp_path / "teacher", DIGITS, image_size=32)
    student = DistilledDeiTForImageClassification(DistilledDeiTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_labels=10,
    ))  # fmt: skip
    args = DistillationConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, eval_strategy="no",
                              teacher_image_size=setting)
    trainer = DistillationTrainer(model=student, args=args, teacher=str(folder),
                                  processing_class=deit_image_processor(16, crop_pct=1.0))  # fmt: skip
    sizes = []
    trainer.teacher.model.register_forward_pre_hook(lambda module, inputs: sizes.append(tuple(inputs[0].shape[-2:])))
    trainer.teacher_logits(torch.randn(2, 3, 16, 16))
    assert sizes == [seen]


def test_teacher_image_size_rejects_nonsense(tmp_path):
    folder = save_teacher(tmp_path / "teacher", DIGITS)
    student = DistilledDeiTForImageClassification(DistilledDeiTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_labels=10,
    ))  # fmt: skip
    args = DistillationConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, eval_strategy="no",
                              teacher_image_size="teacher")
    with pytest.raises(ValueError, match="teacher_image_size must be 'student'"):
        DistillationTrainer(model=student, args=args, teacher=str(folder))
