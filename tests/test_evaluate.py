"""hf_deit.evaluation and scripts/evaluate_model.py: streamed per-batch metrics equal the metrics over all logits at once,
any image classifier works, classes are matched by name, bad images are dropped and counted, the script's table and
JSON."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, ResNetConfig, ResNetForImageClassification

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.data import load_image_classification_dataset
from hf_deit.evaluation import dataset_label_order, eval_transform_for, evaluate_classifier, format_results
from hf_deit.image_processing import deit_image_processor
from hf_deit.metrics import make_compute_metrics
from hf_deit_inputs import InputError

DIGITS = [str(d) for d in range(10)]


def load_script():
    import evaluate_model  # scripts/ is on the path (conftest)

    return evaluate_model


@pytest.fixture(scope="module")
def saved_deit(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("deit")
    torch.manual_seed(0)
    config = DistilledDeiTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=10, id2label=dict(enumerate(DIGITS)), label2id={name: i for i, name in enumerate(DIGITS)},
    )  # fmt: skip
    DistilledDeiTForImageClassification(config).save_pretrained(folder)
    deit_image_processor(16, crop_pct=1.0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def digits():
    return load_image_classification_dataset("digits", max_eval_samples=90)["validation"]


def all_at_once(model, dataset, transform) -> dict:
    """The reference: every logit in memory, one call of the training metrics."""
    pixel_values = torch.stack([transform(image) for image in dataset["image"]])
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    heads = [getattr(outputs, name, None) for name in ("logits", "cls_logits", "distillation_logits")]
    predictions = tuple(head.numpy() for head in heads if head is not None)
    return make_compute_metrics()(EvalPrediction(predictions=predictions, label_ids=np.asarray(dataset["label"])))


def test_streamed_metrics_equal_the_metrics_of_all_logits_at_once(saved_deit, digits):
    model = DistilledDeiTForImageClassification.from_pretrained(saved_deit).eval()
    transform = eval_transform_for(str(saved_deit), model.config)
    streamed = evaluate_classifier(model, digits, transform, batch_size=7)  # 90 = 12 x 7 + 6: a ragged last batch
    reference = all_at_once(model, digits, transform)
    assert streamed.pop("num_images") == 90 and streamed.pop("num_skipped") == 0
    assert set(streamed) == set(reference) == {
        "accuracy", "top5_accuracy", "cls_accuracy", "cls_top5_accuracy", "distillation_accuracy",
        "distillation_top5_accuracy", "cls_majority_share", "distillation_majority_share",
    }  # fmt: skip
    for key, value in reference.items():
        assert streamed[key] == pytest.approx(value, abs=1e-12), key


def test_eval_transform_follows_the_saved_preprocessing(saved_deit, tmp_path):
    model = DistilledDeiTForImageClassification.from_pretrained(saved_deit)
    transform = eval_transform_for(str(saved_deit), model.config)
    sizes = [step.size for step in transform.transforms if hasattr(step, "size")]
    assert sizes[-1] == 16 and sizes[0] in ([16], 16)  # crop_pct 1.0: resize to 16, crop 16
    deit_image_processor(16).save_pretrained(tmp_path)  # crop_pct 0.875: resize to 18 first
    assert [step.size for step in eval_transform_for(str(tmp_path), model.config).transforms if hasattr(step, "size")][0] in ([18], 18)


def test_any_classifier_with_its_classes_in_another_order(tmp_path, digits):
    reversed_names = DIGITS[::-1]
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10,
                          id2label=dict(enumerate(reversed_names)), label2id={n: i for i, n in enumerate(reversed_names)})  # fmt: skip
    model = ResNetForImageClassification(config).eval()
    order = dataset_label_order(DIGITS, config)
    assert order.tolist() == [reversed_names.index(name) for name in DIGITS]
    transform = eval_transform_for("no-such-folder", DistilledDeiTConfig(image_size=16))
    results = evaluate_classifier(model, digits, transform, label_order=order, batch_size=32)
    assert set(results) == {"num_images", "num_skipped", "accuracy", "top5_accuracy"}

    pixel_values = torch.stack([transform(image) for image in digits["image"]])
    with torch.no_grad():
        logits = model(pixel_values=pixel_values).logits[:, order]
    expected = (logits.argmax(-1).numpy() == np.asarray(digits["label"])).mean()
    assert results["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_a_model_for_other_classes_is_refused(digits):
    with pytest.raises(InputError, match="The model predicts 3 classes, the dataset has 10"):
        dataset_label_order(DIGITS, ResNetConfig(num_labels=3))
    other = ResNetConfig(num_labels=10, id2label={i: f"c{i}" for i in range(10)})
    with pytest.raises(InputError, match=r"The model's classes are not the dataset's: only the dataset has \['0', "):
        dataset_label_order(DIGITS, other)


def test_bad_images_are_dropped_and_counted(saved_deit, tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "val" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (10, 10), (40 * i, 90, 200)).save(tmp_path / "val" / name / f"{i}.png")
    (tmp_path / "val" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "val" / "b" / "empty.jpg").write_bytes(b"")
    dataset = load_image_classification_dataset(train_dir=str(tmp_path / "val"), eval_split="train")["validation"]
    torch.manual_seed(0)
    model = DistilledDeiTForImageClassification(DistilledDeiTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_labels=2,
    ))  # fmt: skip
    transform = eval_transform_for(str(saved_deit), model.config)
    results = evaluate_classifier(model, dataset, transform, batch_size=1)  # one batch of a bad image alone: empty
    assert results["num_images"] == 6 and results["num_skipped"] == 2
    assert "6 images evaluated, 2 undecodable skipped" in format_results(results)


def test_script_prints_the_per_head_table_and_writes_json_with_teacher_agreement(saved_deit, tmp_path, capsys):
    output = tmp_path / "results.json"
    script = load_script()
    # The model as its own teacher: agreement 1, teacher accuracy = accuracy.
    results = script.main(["--model_name_or_path", str(saved_deit), "--teacher_name_or_path", str(saved_deit),
                           "--dataset_name", "digits", "--max_eval_samples", "60", "--batch_size", "16",
                           "--num_workers", "2", "--output_file", str(output)])  # fmt: skip
    printed = capsys.readouterr().out
    for row in ("averaged", "cls", "distillation", "teacher", "teacher agreement"):
        assert any(line.startswith(row) for line in printed.splitlines()), row
    assert "top-5" in printed and "60 images evaluated, 0 undecodable skipped" in printed
    written = json.loads(output.read_text())
    assert written["teacher_agreement"] == 1.0 and written["teacher_accuracy"] == pytest.approx(written["accuracy"])
    assert written["num_images"] == 60 and written["model"] == str(saved_deit)
    assert {key: value for key, value in written.items() if key not in ("model", "teacher")} == results


def test_evaluation_does_not_load_the_trainer():
    # Evaluating a saved model needs the metrics, not the training side (Trainer, losses, teacher distillation).
    code = "import sys, hf_deit.evaluation; print('hf_deit.trainer' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_teacher_sees_the_size_training_gave_it(tmp_path):
    """--teacher_image_size as in training: default the teacher's own preprocessing size (the batch is resized to
    it), 'student' the batch as is, N px."""
    from hf_deit.evaluation import teacher_for_evaluation

    torch.manual_seed(0)
    teacher = ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10,
        id2label=dict(enumerate(DIGITS)), label2id={name: i for i, name in enumerate(DIGITS)},
    )).eval()  # fmt: skip
    teacher.save_pretrained(tmp_path / "teacher")
    processor = deit_image_processor(32, crop_pct=1.0)  # the teacher's own size: 32 px
    processor.save_pretrained(tmp_path / "teacher")
    batch = torch.randn(3, 3, 16, 16)  # the evaluated model's 16 px batch, normalised as the teacher's
    with torch.no_grad():
        as_is = teacher(batch).logits
        resized = teacher(torch.nn.functional.interpolate(batch, size=(24, 24), mode="bicubic")).logits

    def logits(size):
        run = teacher_for_evaluation(str(tmp_path / "teacher"), DIGITS, processor.image_mean, processor.image_std,
                                     teacher_image_size=size)  # fmt: skip
        with torch.no_grad():
            return run.logits(batch)

    torch.testing.assert_close(logits("student"), as_is)
    own_size = logits(None)
    assert not torch.allclose(own_size, as_is, atol=1e-4)
    assert not torch.allclose(logits("24"), own_size, atol=1e-4)
    torch.testing.assert_close(logits(24), logits("24"))
    assert torch.nn.functional.cosine_similarity(logits(24).flatten(), resized.flatten(), dim=0) > 0.99
