"""scripts/visualize_attention.py writes real PNG figures, with and without a teacher."""

import importlib.util
import os

import pytest
import torch
from PIL import Image

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.image_processing import deit_image_processor
from hf_deit_inputs import InputError

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "visualize_attention.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_script():
    spec = importlib.util.spec_from_file_location("visualize_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_png(path, min_width):
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= min_width and image.height >= 200


def test_writes_one_png_per_dataset_image_with_the_teacher_panel(model_folders, tmp_path):
    student, teacher = model_folders
    written = load_script().main([str(student), "--num_images", "2", "--teacher_name_or_path", str(teacher),
                                  "--dataset_name", "mnist", "--output_dir", str(tmp_path / "figures")])  # fmt: skip
    assert [os.path.basename(path) for path in written] == ["mnist_0_attention.png", "mnist_1_attention.png"]
    for path in written:
        assert_png(path, min_width=6 * 200)  # image + 4 student maps + teacher, ~220 px each


def test_writes_pngs_for_given_image_files(model_folders, tmp_path):
    student, _ = model_folders
    photo = tmp_path / "photo.jpg"
    Image.effect_mandelbrot((60, 40), (-2, -1.2, 1, 1.2), 50).convert("RGB").save(photo)
    written = load_script().main([str(student), "--images", str(photo), "--output_dir", str(tmp_path / "out")])
    assert len(written) == 1 and written[0].endswith("photo_attention.png")
    assert_png(written[0], min_width=5 * 200)


def test_uses_the_evaluation_data_the_run_recorded_never_another_dataset(tmp_path):
    """A 3-class model trained on a user's folders: its figures show those validation images, with true labels."""
    import json

    torch.manual_seed(0)
    names = ["cat", "dog", "fox"]
    model = DistilledDeiTForImageClassification(DistilledDeiTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_labels=3,
        id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
    ))  # fmt: skip
    model.save_pretrained(tmp_path / "model")
    deit_image_processor(32, crop_pct=1.0).save_pretrained(tmp_path / "model")
    for split, count in (("train", 2), ("val", 1)):
        for index, name in enumerate(names):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for item in range(count):
                Image.new("RGBA" if item else "RGB", (20 + 7 * index, 30), (60 * index, 90, 30)).save(folder / f"{item}.png")
    (tmp_path / "model" / "run_settings.json").write_text(json.dumps(
        {"train_dir": str(tmp_path / "data/train"), "validation_dir": str(tmp_path / "data/val"), "seed": 42}))
    script = load_script()
    written = script.main([str(tmp_path / "model"), "--num_images", "3", "--output_dir", str(tmp_path / "out")])
    assert [os.path.basename(path) for path in written] == [f"{name}_0_attention.png" for name in names]
    assert_png(written[0], min_width=5 * 200)
    assert script.panel_title("cat", "dog", 0.873) == "true cat (wrong)\npredicted dog (87%)"
    assert script.panel_title(None, "dog", 0.5) == "predicted dog (50%)"
    # Nothing recorded and no data flags: an error saying what to pass, not another dataset's images.
    (tmp_path / "model" / "run_settings.json").unlink()
    with pytest.raises(InputError, match="pass --images, or the data flags"):
        script.main([str(tmp_path / "model"), "--output_dir", str(tmp_path / "out2")])
