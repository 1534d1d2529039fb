"""The model card: metadata parsed back, sections, secrets kept out, and a usage snippet that really runs."""

import os
import re
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard, metadata_load

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.card import TEMPLATE_PATH, build_model_card, write_model_card
from hf_deit.image_processing import deit_image_processor

TOKEN = "hf_secretToken0123456789abcdefABCDEF"
EVAL_RESULTS = {
    "eval_accuracy": 0.91, "top5_accuracy": 0.995, "cls_accuracy": 0.88, "cls_top5_accuracy": 0.99,
    "distillation_accuracy": 0.9, "distillation_top5_accuracy": 0.993, "teacher_agreement": 0.87,
    "teacher_accuracy": 0.95, "loss": 0.42,
}  # fmt: skip


def tiny_config():
    return DistilledDeiTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"}, label2id={"cat": 0, "dog": 1, "fox": 2},
    )  # fmt: skip


def full_card_fields(**overrides):
    fields = dict(
        model_name="deit-tiny-digits", eval_results=EVAL_RESULTS, dataset_name="digits", teacher_name="me/resnet-teacher",
        distillation_type="hard", distillation_alpha=0.5, distillation_tau=1.0,
        hyperparameters={"learning_rate": 5e-4, "num_train_epochs": 3, "hub_token": TOKEN, "push_to_hub_token": "x"},
        repo_id="me/deit-tiny-digits", config=tiny_config(),
    )  # fmt: skip
    fields.update(overrides)
    return fields


def test_model_index_has_every_head_and_parses_back(tmp_path):
    path = write_model_card(tmp_path, **full_card_fields())
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    assert {"image-classification", "deit", "distillation", "vision", "hf-deit"} <= set(card.data.tags)
    assert card.data.datasets == ["digits"]
    results = {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert {r.dataset_name for r in card.data.eval_results} == {"digits"}
    by_name = {name: value for (_, name), value in results.items()}
    assert by_name["top-1 accuracy, average of both heads (`logits`)"] == 0.91
    assert by_name["top-1 accuracy, cls head (`cls_logits`)"] == 0.88
    assert by_name["top-1 accuracy, distillation head (`distillation_logits`)"] == 0.9
    assert by_name["top-5 accuracy, distillation head (`distillation_logits`)"] == 0.993
    assert by_name["top-1 agreement with the teacher"] == 0.87
    assert len(results) == 7  # 3 heads x (top-1, top-5) + agreement; the teacher's own accuracy is not ours
    raw = metadata_load(path)
    assert raw["model-index"][0]["name"] == "deit-tiny-digits"


def test_body_explains_heads_recipe_and_results(tmp_path):
    text = build_model_card(**full_card_fields()).content
    for needle in ("cls_logits", "distillation_logits", "average of the two heads", "me/resnet-teacher", "`hard`",
                   "alpha: 0.5", "| learning_rate | 0.0005 |", "| 88.00% | 99.00% |", "Teacher top-1 accuracy on the same data: 95.00%",
                   "| parameters | ", "cat, dog, fox", "## Limitations", "pmlr-v139-touvron21a", "J{\\'e}gou", "volume    = {139}"):  # fmt: skip
        assert needle in text, needle


def test_no_secret_reaches_the_card(tmp_path):
    path = write_model_card(tmp_path, **full_card_fields(hub_token=TOKEN, notes=f"token {TOKEN}"))
    text = path.read_text()
    assert TOKEN not in text
    assert "hub_token" not in text and "push_to_hub_token" not in text


def test_renders_with_only_the_model_name(tmp_path):
    card = build_model_card(model_name="bare-deit")
    text = card.content
    assert "# bare-deit" in text and "No evaluation results were recorded" in text
    assert "None" not in text.split("## Citation")[0]
    assert card.data.eval_results is None and card.data.datasets is None
    assert 'repo_id = "your-username/bare-deit"' in text
    assert ModelCard.load(write_model_card(tmp_path, model_name="bare-deit")).data.model_name == "bare-deit"


def test_template_ships_inside_the_package():
    # src/hf_deit/model_cards is a symlink to model_cards/; setup.cfg's package_data puts it in wheels.
    assert TEMPLATE_PATH.is_file() and TEMPLATE_PATH.parent.name == "model_cards"


@pytest.mark.slow
def test_usage_snippet_runs_against_a_saved_model(tmp_path):
    folder = tmp_path / "model"
    DistilledDeiTForImageClassification(tiny_config()).save_pretrained(folder)
    deit_image_processor(32).save_pretrained(folder)
    card_path = write_model_card(folder, **full_card_fields())
    snippet = re.search(r"```python\n(.*?)```", card_path.read_text(), re.DOTALL).group(1)
    assert 'repo_id = "me/deit-tiny-digits"' in snippet
    snippet = snippet.replace('"me/deit-tiny-digits"', repr(str(folder)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    run = subprocess.run([sys.executable, "-c", snippet], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0] in {"cat", "dog", "fox"}
    assert "'label'" in lines[1] and "'score'" in lines[1]


def test_the_data_is_named_as_given_never_by_an_absolute_path(tmp_path):
    from hf_deit.card import data_card_fields, describe_data, local_name

    assert local_name("/home/me/photos/train") == "photos/train" and local_name("data/train") == "data/train"
    assert describe_data("me/flowers", "hub") == "[me/flowers](https://huggingface.co/datasets/me/flowers)"
    folder = tmp_path / "photos" / "train"
    folder.mkdir(parents=True)

    class Flags:
        train_dir, validation_dir, dataset_name, eval_split, train_val_split = str(folder), None, "mnist", None, 0.15

    fields = data_card_fields(Flags, seed=3)
    assert fields["dataset_name"] == "photos/train" and fields["hub_dataset"] is False
    assert "15% of the training data held out (stratified, seed 3)" == fields["evaluation_data"]
    card = build_model_card(**full_card_fields(num_train_images=120, num_eval_images=30, final_train_loss="0.5000",
                                               augmentation="preset `imagenet`, changed: --reprob 0", **fields))
    text = str(card)
    assert str(tmp_path) not in text and card.data.datasets is None
    assert {r.dataset_name for r in card.data.eval_results} == {"photos/train"}
    assert "- Training data: `photos/train` (a local image folder, one sub-folder per class) (120 images)" in text
    assert "- Evaluation data: 15% of the training data held out (stratified, seed 3) (30 images)" in text
    assert "On 15% of the training data held out" in text and "- Final training loss: 0.5000" in text
    assert "- Augmentation: preset `imagenet`, changed: --reprob 0" in text
    Flags.train_dir, Flags.dataset_name = None, "me/flowers"
    assert data_card_fields(Flags, seed=0)["hub_dataset"] is True


def test_the_augmentation_recipe_names_the_preset_and_what_differs():
    from hf_deit.card import augmentation_recipe
    from hf_deit.data import AugmentationArguments

    assert augmentation_recipe(AugmentationArguments(image_size=32).resolved()) == "preset `small_images` as it is"
    changed = AugmentationArguments(image_size=224, reprob=0.0, rand_augment="none").resolved()
    assert augmentation_recipe(changed) == "preset `imagenet`, changed: --rand_augment none, --reprob 0"


def test_the_teacher_card(tmp_path):
    from transformers import ResNetConfig

    from hf_deit.card import write_teacher_card

    config = ResNetConfig(num_labels=2, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    path = write_teacher_card(tmp_path, model_name="teacher", config=config, eval_results={"eval_accuracy": 0.75},
                              dataset_name="digits", training_data="`digits`", num_train_images=10,
                              final_train_loss="0.3000 (logged at step 4)", hyperparameters={"seed": 1, "x": None})
    text = path.read_text()
    assert "(`resnet`)" in text and "Classes (2): cat, dog" in text and "| average of both heads" not in text
    assert "75.00%" in text and "Final training loss: 0.3000" in text and "(10 images)" in text
    assert ModelCard.load(path).data.eval_results[0].metric_value == 0.75


def test_the_card_carries_its_learning_curves_beside_the_per_head_table(tmp_path):
    from PIL import Image

    from hf_deit.card import LEARNING_CURVES_NAME, curve_data, write_learning_curves

    log_history = [
        {"loss": 2.0, "step": 10},
        {"eval_accuracy": 0.5, "eval_cls_accuracy": 0.45, "eval_distillation_accuracy": 0.52,
         "eval_teacher_accuracy": 0.95, "step": 20},
        {"eval_accuracy": 0.8, "eval_cls_accuracy": 0.78, "eval_distillation_accuracy": 0.81,
         "eval_teacher_accuracy": 0.95, "step": 40},
    ]  # fmt: skip
    curves, teacher = curve_data(log_history)
    assert curves == {"average of both heads (`logits`)": [(20, 0.5), (40, 0.8)],
                      "cls head (`cls_logits`)": [(20, 0.45), (40, 0.78)],
                      "distillation head (`distillation_logits`)": [(20, 0.52), (40, 0.81)]}  # fmt: skip
    assert teacher == 0.95

    name = write_learning_curves(tmp_path, log_history, "deit-tiny-digits")
    assert name == LEARNING_CURVES_NAME  # a name relative to the card: the Hub shows the picture beside it
    with Image.open(tmp_path / name) as image:
        assert image.format == "PNG" and image.width > 300
    text = write_model_card(tmp_path, **full_card_fields(learning_curves=name)).read_text()
    assert "### Learning curves" in text and f"]({LEARNING_CURVES_NAME})" in text
    assert "| cls head (`cls_logits`) | 88.00% | 99.00% |" in text  # the per-head table stays
    assert text.index("| output | top-1 accuracy") < text.index("### Learning curves")

    # One evaluation is no curve: no picture, and no section pointing to one.
    elsewhere = tmp_path / "one"
    assert write_learning_curves(elsewhere, log_history[:2], "deit-tiny-digits") is None
    assert not (elsewhere / LEARNING_CURVES_NAME).exists()
    assert "Learning curves" not in build_model_card(**full_card_fields()).content


def test_both_scripts_cards_take_their_hyperparameters_from_the_same_table(tmp_path):
    from hf_deit.arguments import DistillationConfig, TeacherTrainingArguments
    from hf_deit.card import training_hyperparameters
    from hf_deit.run import size_run

    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, gradient_accumulation_steps=2, report_to=[],
                  use_cpu=True, bf16=False)  # fmt: skip
    student = training_hyperparameters(size_run(DistillationConfig(**common, max_steps=5)), num_processes=2)
    assert student["total_train_batch_size"] == 32 and student["max_steps"] == 5 and "num_epochs" not in student
    assert student["mixed_precision"] == "no" and student["optimizer"] == "adamw_torch_fused"
    teacher = training_hyperparameters(size_run(TeacherTrainingArguments(**common)), num_processes=1)
    assert teacher.keys() == {*student.keys(), "num_epochs"} - {"max_steps"}
    assert teacher["num_epochs"] == 10 and teacher["learning_rate"] == 2e-3 and teacher["total_train_batch_size"] == 16
