"""Bad labels and columns through scripts/train.py, on datasets written to disk here: missing columns name the ones
that exist, out-of-range labels stop before training naming the value and the class count, and a label column that
is not a ClassLabel is mapped from its values (logged) and trained on."""

import logging
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage

from hf_deit.data import load_image_classification_dataset


TINY_STUDENT = "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2"


def images(count: int) -> list:
    rng = np.random.default_rng(0)
    return [PILImage.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(count)]


def save(tmp_path: Path, columns: dict, features: Features) -> str:
    folder = tmp_path / "dataset"
    Dataset.from_dict(columns, features=features).save_to_disk(str(folder))
    return str(folder)


def run_train(tmp_path: Path, dataset: str, *extra: str) -> dict:
    import train

    return train.main([
        "--output_dir", str(tmp_path / "run"), "--dataset_name", dataset, "--config_overrides", TINY_STUDENT,
        "--image_size", "16", "--max_steps", "3", "--per_device_train_batch_size", "4", "--eval_strategy", "no",
        "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none", "--train_val_split", "0.25", *extra,
    ])  # fmt: skip


def test_missing_columns_list_the_columns_that_exist(tmp_path):
    dataset = save(tmp_path, {"img": images(8), "target": [0, 1] * 4},
                   Features({"img": Image(), "target": ClassLabel(names=["a", "b"])}))  # fmt: skip
    with pytest.raises(ValueError, match=r"The image column 'image' is not in the dataset; its columns are \['img', 'target'\]"):
        run_train(tmp_path, dataset)
    with pytest.raises(ValueError, match=r"The label column 'label' is not in the dataset; its columns are \['img', 'target'\]"):
        run_train(tmp_path, dataset, "--image_column_name", "img")
    assert not (tmp_path / "run").exists()


def test_labels_out_of_range_stop_before_training_naming_value_and_class_count(tmp_path):
    # cast_column to ClassLabel keeps any integer: 7 slips into a 3-class label column.
    table = Dataset.from_dict({"image": images(9), "label": [0, 1, 2, 0, 1, 2, 0, 7, 1]},
                              features=Features({"image": Image(), "label": Value("int64")}))  # fmt: skip
    folder = str(tmp_path / "dataset")
    table.cast_column("label", ClassLabel(names=["a", "b", "c"])).save_to_disk(folder)
    with pytest.raises(ValueError) as raised:
        run_train(tmp_path, folder)
    message = str(raised.value)
    assert "e.g. 7" in message and "outside the 3 classes" in message and "0..2" in message
    assert not (tmp_path / "run").exists()  # before the trainer existed: nothing written


def test_negative_labels_other_than_missing_are_rejected(tmp_path):
    table = Dataset.from_dict({"image": images(6), "label": [0, 1, -3, 0, 1, 0]},
                              features=Features({"image": Image(), "label": Value("int64")}))  # fmt: skip
    table = table.cast_column("label", ClassLabel(names=["a", "b"]))
    folder = str(tmp_path / "dataset")
    table.save_to_disk(folder)
    with pytest.raises(ValueError, match="e.g. -3"):
        load_image_classification_dataset(folder)


@pytest.mark.slow
def test_label_column_of_strings_is_mapped_logged_and_trained(tmp_path, caplog):
    names = ["dog", "cat", "fox"] * 4
    dataset = save(tmp_path, {"image": images(12), "label": names}, Features({"image": Image(), "label": Value("string")}))
    caplog.set_level(logging.WARNING, logger="hf_deit.data")
    metrics = run_train(tmp_path, dataset)
    assert "not a ClassLabel: mapped its 3 sorted unique values to class ids ('cat' -> 0, 'dog' -> 1, 'fox' -> 2)" in caplog.text
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    from transformers import AutoConfig

    import hf_deit  # noqa: F401

    assert AutoConfig.from_pretrained(tmp_path / "run").id2label == {0: "cat", 1: "dog", 2: "fox"}
