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
