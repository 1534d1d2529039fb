#!/usr/bin/env python
"""Where a trained distilled DeiT looks: its cls-token and distillation-token attention over a few images.

    python scripts/visualize_attention.py outputs/deit --num_images 4 --output_dir figures   # the run's own data
    python scripts/visualize_attention.py outputs/deit --train_dir data/train --validation_dir data/val
    python scripts/visualize_attention.py outputs/deit --images cat.png dog.jpg --teacher_name_or_path outputs/teacher

Images come from `--images`, else from the model's evaluation data: the data flags given here (train.py's:
`--dataset_name`, `--train_dir`, `--validation_dir`, `--eval_split`, `--seed`, ...), else those its training run
recorded (`run_settings.json` beside the model); never from another dataset. For each image, one PNG with a row of
panels: the image titled with its true label and the model's prediction and probability, then the cls and dist
tokens' attention over the patches in the last layer (mean over heads) and by attention rollout (all layers), each
with its colour scale, then the teacher's map when a teacher is given (a ViT's cls attention in its last layer, or
a CNN's last-stage activation attention). Images are the model's evaluation view (its image processor).
"""

import argparse
import json
import os
import sys

from hf_deit_inputs import InputError, exit_on_input_error
from hf_deit_inputs.checks import check_inputs, check_saved_model
from hf_deit_inputs.choices import RUN_SETTINGS_NAME
from hf_deit_inputs.folders import is_image_file

DATA_FLAGS = {  # train.py's data flags (hf_deit.arguments.DataArguments) that choose the evaluation images
    "dataset_name": str, "dataset_config_name": str, "train_dir": str, "validation_dir": str, "eval_split": str,
    "train_val_split": float, "image_column_name": str, "label_column_name": str, "seed": int,
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Folder (or Hub id) of a trained distilled DeiT.")
    parser.add_argument("--images", nargs="*", default=None, help="Image files (default: the model's evaluation data).")
    parser.add_argument("--num_images", type=int, default=4, help="Evaluation images shown (the first ones).")
    data = parser.add_argument_group("the evaluation data, as train.py's flags (default: what the run recorded)")
    for name, kind in DATA_FLAGS.items():
        data.add_argument(f"--{name}", type=kind, default=None)
    parser.add_argument("--teacher_name_or_path", default=None, help="Add the teacher's map beside the student's.")
    parser.add_argument("--output_dir", default="attention_maps", help="Where the PNG files go.")
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow remote code for the model/teacher.")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> None:
    """The model, its teacher and the data flags by the training scripts' rules, and the image files."""
    given = {name: str(getattr(args, name)) for name in (*DATA_FLAGS, "teacher_name_or_path")
             if getattr(args, name) is not None}  # fmt: skip
    problems = check_saved_model("model", args.model) + check_inputs(given, "evaluate")
    if args.num_images < 1:
        problems.append(f"--num_images {args.num_images}: give how many evaluation images to draw (1 or more).")
    if args.images and set(given) & set(DATA_FLAGS):
        problems.append("--images and the data flags both name the images: keep one.")
    for path in args.images or []:
        if not os.path.isfile(path) or not is_image_file(path):
            problems.append(f"--images {path}: {'no such file' if not os.path.exists(path) else 'not an image file'}"
                            "; pass image files, or an image folder as --validation_dir (one sub-folder per class).")
    if problems:
        raise InputError(problems)


def recorded_data_flags(model: str) -> dict:
    """The data flags that the training run of `model` (a folder) recorded beside it."""
    recorded = os.path.join(os.path.expanduser(model), RUN_SETTINGS_NAME)
    try:
        with open(recorded) as file:
            settings = json.load(file)
    except (OSError, ValueError) as error:
        raise InputError(f"{model} has no readable {RUN_SETTINGS_NAME} saying what it was trained on ({error}): "
                         "pass --images, or the data flags of its training run (--dataset_name, or "
                         "--train_dir/--validation_dir).") from None  # fmt: skip
    flags = {name: settings[name] for name in DATA_FLAGS if settings.get(name) is not None}
    if "train_dir" in flags or "validation_dir" in flags:  # the folders were the data; --dataset_name's default stays
        flags.pop("dataset_name", None)
    return flags


if __name__ == "__main__":  # the command line answered first (--help, every input checked), before torch loads
    exit_on_input_error(lambda argv: check(parse_args(argv)), sys.argv[1:], "visualize_attention.py")

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Image as ImageFeature  # noqa: E402
from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: E402

import hf_deit  # noqa: E402, F401  (registers the distilled DeiT with the Auto classes)
from hf_deit.attention_maps import distilled_deit_maps, relative_heat  # noqa: E402
from hf_deit.data import decode_image, load_image_classification_dataset, to_rgb  # noqa: E402
from hf_deit.teacher import Teacher  # noqa: E402


def load_images(args) -> list[tuple[str, "PIL.Image.Image", "str | None"]]:  # noqa: F821
    """(name, RGB image, true label name or None) for each image shown."""
    if args.images:
        from PIL import Image

        return [(os.path.splitext(os.path.basename(path))[0], to_rgb(Image.open(path)), None) for path in args.images]
    flags = evaluation_data_flags(args)
    if flags.get("validation_dir") and not flags.get("train_dir"):  # an evaluation folder alone: its only split
        flags.update(train_dir=flags.pop("validation_dir"), eval_split="train")
    dataset = load_image_classification_dataset(
        **{name: value for name, value in flags.items() if name != "seed"}, seed=flags.get("seed", 42)
    )
    validation = dataset["validation"].cast_column("image", ImageFeature(decode=False))
    names = validation.features["label"].names
    shown = []
    for index in range(min(args.num_images, len(validation))):
        row = validation[index]
        label = names[row["label"]] if row["label"] >= 0 else None
        path = row["image"].get("path")
        name = f"{label}_{os.path.splitext(os.path.basename(path))[0]}" if path else f"{flags.get('dataset_name')}_{index}"
        shown.append((name, to_rgb(decode_image(row["image"])), label))
    return shown


def evaluation_data_flags(args) -> dict:
    """The data flags given here, else those recorded by the model's training run (the checks found them)."""
    given = {name: getattr(args, name) for name in DATA_FLAGS if getattr(args, name) is not None}
    return given or recorded_data_flags(args.model)


def panel_title(true_label: "str | None", predicted: str, probability: float) -> str:
    prediction = f"predicted {predicted} ({100 * probability:.0f}%)"
    if true_label is None:
        return prediction
    return f"true {true_label}{'' if true_label == predicted else ' (wrong)'}\n{prediction}"


def teacher_map(teacher_name: str, pixel_values: torch.Tensor, processor, trust_remote_code: bool) -> torch.Tensor:
    teacher = Teacher.load(teacher_name, student_mean=processor.image_mean, student_std=processor.image_std,
                           trust_remote_code=trust_remote_code, attention_maps=True)  # fmt: skip
    return teacher(pixel_values, attention_map=True).attention_map


def overlay(figure, axis, image: np.ndarray, attention: torch.Tensor, title: str) -> None:
    """The image in grey with the map, upsampled to the image and scaled to [0, 1], on top, with its colour scale."""
    axis.imshow(image.mean(axis=-1), cmap="gray")
    heat = relative_heat(attention, image.shape[:2])
    if heat is None:
        title += f" ({attention.shape[-2]}x{attention.shape[-1]}: uniform)"
    else:
        shown = axis.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        scale = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.03, ticks=[0, 0.5, 1])
        scale.ax.tick_params(labelsize=6)
        scale.set_label("relative attention", fontsize=6)
        title += f" ({attention.shape[-2]}x{attention.shape[-1]})" if title == "teacher" else ""
    axis.set_title(title, fontsize=8)
    axis.axis("off")


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    check(args)  # every input, before any model or data is loaded
    model = AutoModelForImageClassification.from_pretrained(
        args.model, trust_remote_code=args.trust_remote_code, attn_implementation="eager"
    ).eval()
    processor = AutoImageProcessor.from_pretrained(args.model)
    named_images = load_images(args)
    pixel_values = processor([image for _, image, _ in named_images], return_tensors="pt")["pixel_values"]
    outputs, maps = distilled_deit_maps(model, pixel_values)
    if args.teacher_name_or_path:
        maps["teacher"] = teacher_map(args.teacher_name_or_path, pixel_values, processor, args.trust_remote_code)
    probabilities, predictions = outputs.logits.float().softmax(-1).max(-1)

    # What the model saw, back in [0, 1] for display.
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    shown = (pixel_values * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()

    os.makedirs(args.output_dir, exist_ok=True)
    written = []
    for index, (name, _, true_label) in enumerate(named_images):
        figure, axes = plt.subplots(1, 1 + len(maps), figsize=(2.5 * (1 + len(maps)), 2.8))
        axes[0].imshow(shown[index])
        predicted = str(model.config.id2label.get(int(predictions[index]), int(predictions[index])))
        axes[0].set_title(panel_title(true_label, predicted, float(probabilities[index])), fontsize=8)
        axes[0].axis("off")
        for axis, (title, attention) in zip(axes[1:], maps.items()):
            overlay(figure, axis, shown[index], attention[index], title)
        figure.tight_layout()
        path = os.path.join(args.output_dir, f"{name}_attention.png")
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    print("\n".join(written))
    return written


if __name__ == "__main__":
    sys.exit(0 if exit_on_input_error(main, sys.argv[1:], "visualize_attention.py") else 1)
