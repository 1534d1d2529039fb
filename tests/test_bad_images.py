"""Bad images in an image folder (real files written here): what can be converted is, what cannot be decoded is skipped
with a count and its path in the log, or, with skipping off, stops with an error naming the file."""

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Image as ImageFeature
from PIL import Image

from hf_deit.data import (
    AugmentationArguments,
    BadImageError,
    MixupCutmixCollator,
    apply_transforms,
    build_eval_transform,
    build_train_transform,
    load_image_classification_dataset,
    make_batch_transform,
    undecoded_images,
)


TINY_STUDENT = "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2"
CROP = 32


def _rgb(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_convertible(folder: Path) -> dict[str, str]:
    """Decodable images in every awkward mode and shape; returns {file name: mode as saved}."""
    folder.mkdir(parents=True, exist_ok=True)
    _rgb(40, 40, 1).convert("CMYK").save(folder / "cmyk.jpg")
    sixteen = (np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 113).astype(np.uint16)
    Image.frombytes("I;16", (24, 24), sixteen.astype("<u2").tobytes()).save(folder / "sixteen_bit.png")
    _rgb(24, 24, 2).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    _rgb(24, 24, 3).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    rgba = _rgb(24, 24, 4).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(0, 240, 10, dtype=np.uint8), (24, 1))))
    rgba.save(folder / "rgba.png")
    _rgb(30, 30, 5).convert("L").save(folder / "gray.jpg")
    _rgb(5, 5, 6).save(folder / "tiny_5x5.png")
    _rgb(3, 1000, 7).save(folder / "wide_1000x3.png")
    _rgb(1000, 3, 8).save(folder / "tall_3x1000.png")
    return {path.name: Image.open(path).mode for path in folder.iterdir()}


def write_undecodable(folder: Path) -> list[str]:
    """Files that no decoder can read; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg, png = io.BytesIO(), io.BytesIO()
    _rgb(64, 64, 9).save(jpeg, "JPEG")
    _rgb(64, 64, 10).save(png, "PNG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "half.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes_renamed.jpg").write_text("not an image at all\n")
    return ["truncated.jpg", "half.png", "empty.png", "notes_renamed.jpg"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/ and val/ image folders with classes a and b: every convertible kind in a, undecodable files in b."""
    root = tmp_path_factory.mktemp("images")
    modes = write_convertible(root / "train" / "a")
    bad = write_undecodable(root / "train" / "b")
    for i in range(4):
        _rgb(20, 20, 20 + i).save(root / "train" / "b" / f"good_{i}.png")
    write_convertible(root / "val" / "a")
    write_undecodable(root / "val" / "b")
    _rgb(20, 20, 30).save(root / "val" / "b" / "good.png")
    (root / "train" / "README.txt").write_text("imagefolder leaves files without an image extension out\n")
    return root, modes, bad


def test_written_files_are_what_they_claim(image_folder):
    _, modes, _ = image_folder
    assert modes == {
        "cmyk.jpg": "CMYK", "sixteen_bit.png": "I;16", "palette.gif": "P", "palette.png": "P", "rgba.png": "RGBA",
        "gray.jpg": "L", "tiny_5x5.png": "RGB", "wide_1000x3.png": "RGB", "tall_3x1000.png": "RGB",
    }  # fmt: skip


def file_names(split) -> list[str]:
    return [Path(value["path"]).name for value in split.cast_column("image", ImageFeature(decode=False))["image"]]


def _loader(root, skip: bool, num_workers: int):
    dataset = load_image_classification_dataset(train_dir=str(root / "train"), validation_dir=str(root / "val"))
    args = AugmentationArguments(image_size=CROP)
    ready = apply_transforms(dataset, build_train_transform(args), build_eval_transform(args), skip_bad_images=skip)
    collator = MixupCutmixCollator(num_classes=2).for_evaluation()
    return dataset, {
        name: torch.utils.data.DataLoader(split, batch_size=4, num_workers=num_workers, collate_fn=collator)
        for name, split in ready.items()
    }


@pytest.mark.parametrize("split", ["train", "validation"])
def test_two_workers_convert_what_decodes_and_skip_the_rest(image_folder, split):
    root, modes, bad = image_folder
    dataset, loaders = _loader(root, skip=True, num_workers=2)
    files = file_names(dataset[split])
    assert "README.txt" not in files and set(bad) <= set(files)  # the renamed text file is in, the .txt is not
    batches = list(loaders[split])
    pixel_values = torch.cat([batch["pixel_values"] for batch in batches])
    labels = torch.cat([batch["labels"] for batch in batches])
    # Every place is filled (a bad file's by another image of its split, with that image's label): full batches.
    assert [len(batch["labels"]) for batch in batches[:-1]] == [4] * (len(batches) - 1)
    assert pixel_values.shape == (len(files), 3, CROP, CROP) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()
    assert (labels == 0).sum() >= len(modes)  # every convertible image of class a arrived


def test_without_substitutes_bad_images_are_marked_for_dropping(image_folder):
    root, modes, bad = image_folder
    dataset = load_image_classification_dataset(train_dir=str(root / "train"), validation_dir=str(root / "val"))
    split = undecoded_images(dataset["validation"])
    transform = make_batch_transform(build_eval_transform(AugmentationArguments(image_size=CROP)))
    out = transform(split[:])
    names = file_names(dataset["validation"])
    assert [name for name, pixels in zip(names, out["pixel_values"]) if pixels is None] == [n for n in names if n in bad]
    batch = MixupCutmixCollator(num_classes=2).for_evaluation()([{"pixel_values": p, "labels": l} for p, l in zip(out["pixel_values"], out["labels"])])
    assert len(batch["labels"]) == len(names) - len(bad)


def test_skipped_images_are_counted_and_named_in_the_log(image_folder, caplog, monkeypatch):
    import hf_deit.data.transforms

    monkeypatch.setattr(hf_deit.data.transforms, "_bad_image_count", 0)  # counted per process: earlier tests skipped some too
    root, _, bad = image_folder
    _, loaders = _loader(root, skip=True, num_workers=0)
    caplog.set_level(logging.WARNING, logger="hf_deit.data")
    list(loaders["validation"])
    skipped = [record.getMessage() for record in caplog.records if "Skipped undecodable image" in record.getMessage()]
    assert len(skipped) == len(bad)
    for name in bad:
        assert sum(name in message for message in skipped) == 1, name
    assert [int(m.split("; ")[-1].split()[0]) for m in skipped] == [1, 2, 3, 4]  # "<n> skipped so far"


def test_without_skipping_the_error_names_the_file_even_from_a_worker(image_folder):
    root, _, bad = image_folder
    _, loaders = _loader(root, skip=False, num_workers=2)
    batches = iter(loaders["validation"])
    with pytest.raises(BadImageError) as raised:
        list(batches)
    batches._shutdown_workers()  # now, rather than when the traceback is collected (a 5 s join timeout per worker)
    message = str(raised.value)
    assert "Cannot decode the image" in message and "--skip_bad_images" in message
    assert any(str(root / "val" / "b" / name) in message for name in bad)


def test_conversions_keep_the_picture(tmp_path):
    """Transparent pixels land on white, 16-bit keeps its range, a CMYK file its colour (through the eval transform)."""
    folder = tmp_path
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    clear.save(folder / "clear.png")
    Image.frombytes("I;16", (8, 8), np.full((8, 8), 65535, dtype="<u2").tobytes()).save(folder / "white16.png")
    Image.new("RGB", (8, 8), (200, 30, 30)).convert("CMYK").save(folder / "red_cmyk.jpg", quality=100)
    args = AugmentationArguments(image_size=8, crop_pct=1.0, mean=[0, 0, 0], std=[1, 1, 1])
    transform = make_batch_transform(build_eval_transform(args))
    names = sorted(path.name for path in folder.iterdir())
    batch = transform({"image": [{"path": str(folder / name), "bytes": None} for name in names], "label": [0] * 3})
    pixels = {name: values.mean(dim=(1, 2)) for name, values in zip(names, batch["pixel_values"])}
    torch.testing.assert_close(pixels["clear.png"], torch.ones(3))
    torch.testing.assert_close(pixels["white16.png"], torch.ones(3))
    torch.testing.assert_close(pixels["red_cmyk.jpg"], torch.tensor([200, 30, 30]) / 255, atol=0.04, rtol=0)


@pytest.mark.slow
def test_train_script_skips_bad_images_and_finishes(image_folder, tmp_path, caplog):
    import train

    root, _, bad = image_folder
    caplog.set_level(logging.WARNING, logger="hf_deit.data")
    metrics = train.main([
        "--output_dir", str(tmp_path / "run"), "--train_dir", str(root / "train"), "--validation_dir", str(root / "val"),
        "--config_overrides", TINY_STUDENT, "--image_size", "16", "--max_steps", "3", "--per_device_train_batch_size",
        "4", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none",
    ])  # fmt: skip
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert any(name in caplog.text for name in bad)


@pytest.mark.slow
def test_train_script_without_skipping_stops_naming_the_file(image_folder, tmp_path):
    import train

    root, _, bad = image_folder
    with pytest.raises(BadImageError) as raised:
        train.main([
            "--output_dir", str(tmp_path / "run"), "--train_dir", str(root / "train"), "--validation_dir",
            str(root / "val"), "--config_overrides", TINY_STUDENT, "--image_size", "16", "--max_steps", "3",
            "--per_device_train_batch_size", "16", "--eval_strategy", "no", "--save_strategy", "no",
            "--disable_tqdm", "true", "--report_to", "none", "--skip_bad_images", "false",
        ])  # fmt: skip
    assert any(name in str(raised.value) for name in bad)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_stream_leaves_undecodable_images_out(image_folder):
    root, _, bad = image_folder
    dataset = load_image_classification_dataset(train_dir=str(root / "train"), validation_dir=str(root / "val"),
                                                streaming=True)  # fmt: skip
    args = AugmentationArguments(image_size=CROP)
    ready = apply_transforms(dataset, build_train_transform(args), build_eval_transform(args))
    items = list(ready["validation"])
    num_files = len(list((root / "val").rglob("*.*")))
    assert len(items) == num_files - len(bad)
    assert all(item["pixel_values"].shape == (3, CROP, CROP) for item in items)
