"""The teacher: load any image classifier, check that it predicts the student's classes, feed it the student's batch.

DeiT's teacher sees exactly the student's input tensor (augmented, mixed, normalised). A teacher trained with
another normalisation or resolution gets that same tensor re-normalised and resized on the fly by
`TeacherInputAdapter`, so that augmentation stays shared and nothing is decoded twice.
"""

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# transformers names unnamed classes "LABEL_0", "LABEL_1", ...: those carry no meaning and are not compared.
_DEFAULT_LABEL_NAME = re.compile(r"LABEL_\d+")


class TeacherLogits(nn.Module):
    """Calls a teacher and returns its logits tensor, whether it returns a tensor or an output with `.logits`."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.teacher(pixel_values)
        logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
        if logits is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            logits = output[0]
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ValueError(
                f"The teacher ({type(self.teacher).__name__}) must return logits of shape (batch, num_classes) or an "
                f"output with `.logits`; got {type(output).__name__}. Pass an image-classification model."
            )
        return logits


def load_teacher(teacher: "str | nn.Module", *, trust_remote_code: bool = False, **from_pretrained_kwargs) -> nn.Module:
    """An image-classification teacher from a module, a local folder or a Hub id.

    Folders and Hub ids load with `AutoModelForImageClassification`: transformers models, models with remote code
    (`trust_remote_code=True`), and timm models (`timm/...` ids, or folders whose `config.json` is a timm config with
    an `architecture` key) through transformers' `TimmWrapperForImageClassification`. A module is returned as is;
    it must map `pixel_values` to logits or to an output with `.logits`.
    """
    if isinstance(teacher, nn.Module):
        return teacher
    if not isinstance(teacher, str):
        raise TypeError(f"teacher must be a module, a folder or a Hub id, got {type(teacher).__name__}.")
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(teacher, trust_remote_code=trust_remote_code)
    try:
        return AutoModelForImageClassification.from_pretrained(
            teacher, config=config, trust_remote_code=trust_remote_code, **from_pretrained_kwargs
        )
    except ValueError as error:
        if "Unrecognized configuration class" not in str(error):
            raise
        raise ValueError(
            f"The teacher {teacher!r} (model_type {config.model_type!r}) is not an image classifier: "
            "AutoModelForImageClassification has no class for it. Pass an image-classification checkpoint."
        ) from error


def _has_real_names(config) -> bool:
    names = list(config.id2label.values())
    return not all(_DEFAULT_LABEL_NAME.fullmatch(str(name)) for name in names)


def check_label_space(student_config, teacher_config) -> torch.Tensor | None:
    """Check that the teacher predicts the student's classes, before any training step.

    Returns None when the teacher's logits can be used as they are, or an index tensor `order` such that
    `teacher_logits[:, order]` lists the classes in the student's order (same names, different order).
    Raises ValueError when the class counts differ, or when both models name their classes and the names differ.
    Names are compared only when both configs have real names (not transformers' default `LABEL_<i>`).
    """
    student_count, teacher_count = student_config.num_labels, teacher_config.num_labels
    if student_count != teacher_count:
        raise ValueError(
            f"The teacher predicts {teacher_count} classes, the student {student_count}. Distillation needs the "
            "same label space: fine-tune the teacher on the student's dataset first (scripts/train_teacher.py)."
        )
    if not (_has_real_names(student_config) and _has_real_names(teacher_config)):
        return None
    student_names = [str(student_config.id2label[i]) for i in range(student_count)]
    teacher_names = [str(teacher_config.id2label[i]) for i in range(teacher_count)]
    if student_names == teacher_names:
        return None
    teacher_index = {name: i for i, name in enumerate(teacher_names)}
    if len(teacher_index) != teacher_count or set(student_names) != set(teacher_names):
        only_student = sorted(set(student_names) - set(teacher_names))[:5]
        only_teacher = sorted(set(teacher_names) - set(student_names))[:5]
        raise ValueError(
            "The teacher's class names are not the student's: "
            f"only the student has {only_student}, only the teacher has {only_teacher}"
            f"{' (the teacher repeats a name)' if len(teacher_index) != teacher_count else ''}. "
            "Give both models the dataset's label names (config.id2label), or fine-tune the teacher on this dataset."
        )
    logger.info("The teacher lists the student's classes in another order; its logits are re-ordered by name.")
    return torch.tensor([teacher_index[name] for name in student_names], dtype=torch.long)


@dataclass
class TeacherPreprocessing:
    """What the teacher expects: normalisation after scaling to [0, 1], input size, channels (None = unknown)."""

    image_mean: Sequence[float] | None = None
    image_std: Sequence[float] | None = None
    image_size: tuple[int, int] | None = None
    num_channels: int | None = None
    interpolation: str = "bicubic"


def _size_from_processor(processor) -> tuple[int, int] | None:
    for enabled, size in (("do_center_crop", "crop_size"), ("do_resize", "size")):
        size = getattr(processor, size, None)
        if getattr(processor, enabled, False) and size is not None:
            size = dict(size)
            if "height" in size and "width" in size:
                return int(size["height"]), int(size["width"])
    return None


def teacher_preprocessing(teacher: "str | nn.Module", processor=None) -> TeacherPreprocessing:
    """Read what the teacher expects from its image processor (given, or loaded from the teacher's folder or Hub id
    when one is saved there) and its config. Anything not found stays None: the batch then passes unchanged."""
    if processor is None and isinstance(teacher, str):
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(teacher)
        except (OSError, ValueError):  # no preprocessing config saved with this teacher
            processor = None
    config = getattr(teacher, "config", None)
    expected = TeacherPreprocessing(num_channels=getattr(config, "num_channels", None))
    if processor is None:
        return expected
    data_config = getattr(processor, "data_config", None)  # timm models: timm's resolved data config
    if data_config is not None:
        channels, height, width = data_config["input_size"]
        expected.image_mean, expected.image_std = data_config["mean"], data_config["std"]
        expected.image_size, expected.num_channels = (height, width), channels
        expected.interpolation = data_config.get("interpolation", "bicubic")
        return expected
    if getattr(processor, "do_normalize", False):
        expected.image_mean, expected.image_std = processor.image_mean, processor.image_std
    elif hasattr(processor, "do_normalize"):  # a processor that scales to [0, 1] and stops there
        expected.image_mean, expected.image_std = (0.0,), (1.0,)
    expected.image_size = _size_from_processor(processor)
    resample = getattr(processor, "resample", None)
    expected.interpolation = "bilinear" if getattr(resample, "name", "") == "BILINEAR" else "bicubic"
    return expected


class TeacherInputAdapter(nn.Module):
    """Turns the student's normalised batch into the teacher's: re-normalise, resize, re-order nothing else.

    Re-normalising `(x * student_std + student_mean - teacher_mean) / teacher_std` is one per-channel affine map,
    folded here into `x * scale + shift`. Resizing (antialiased) happens only when the batch's size differs from the
    teacher's. With nothing to change, `forward` returns its input tensor itself.
    """

    def __init__(
        self,
        student_mean: Sequence[float] | None = None,
        student_std: Sequence[float] | None = None,
        teacher_mean: Sequence[float] | None = None,
        teacher_std: Sequence[float] | None = None,
        teacher_size: tuple[int, int] | None = None,
        teacher_channels: int | None = None,
        interpolation: str = "bicubic",
    ):
        super().__init__()
        self.teacher_size = tuple(teacher_size) if teacher_size is not None else None
        self.teacher_channels = teacher_channels
        self.interpolation = interpolation
        self.renormalize = False
        if teacher_mean is not None and teacher_std is not None:
            if student_mean is None or student_std is None:
                logger.warning(
                    "The teacher's normalisation is known but the student's is not: the teacher gets the student's "
                    "batch as is. Pass student_mean/student_std (or the student's image processor) to re-normalise."
                )
            else:
                s_mean, s_std, t_mean, t_std = (
                    torch.as_tensor(v, dtype=torch.float32).view(-1, 1, 1)
                    for v in (student_mean, student_std, teacher_mean, teacher_std)
                )
                self.renormalize = not (torch.equal(s_mean, t_mean) and torch.equal(s_std, t_std))
                if self.renormalize:
                    self.register_buffer("scale", s_std / t_std, persistent=False)
                    self.register_buffer("shift", (s_mean - t_mean) / t_std, persistent=False)

    @property
    def is_identity(self) -> bool:
        return not self.renormalize and self.teacher_size is None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.teacher_channels is not None and pixel_values.shape[1] != self.teacher_channels:
            raise ValueError(
                f"The teacher expects {self.teacher_channels}-channel images, the student's batch has "
                f"{pixel_values.shape[1]}. Convert the images for both (e.g. grayscale to RGB) or use a teacher "
                "trained on the same channels."
            )
        if self.renormalize:
            pixel_values = pixel_values * self.scale.to(pixel_values.dtype) + self.shift.to(pixel_values.dtype)
        if self.teacher_size is not None and tuple(pixel_values.shape[-2:]) != self.teacher_size:
            pixel_values = F.interpolate(
                pixel_values, size=self.teacher_size, mode=self.interpolation, align_corners=False, antialias=True
            )
        return pixel_values

    @classmethod
    def from_preprocessing(cls, expected: TeacherPreprocessing, student_mean=None, student_std=None):
        return cls(
            student_mean=student_mean,
            student_std=student_std,
            teacher_mean=expected.image_mean,
            teacher_std=expected.image_std,
            teacher_size=expected.image_size,
            teacher_channels=expected.num_channels,
            interpolation=expected.interpolation,
        )

    def extra_repr(self) -> str:
        return f"renormalize={self.renormalize}, teacher_size={self.teacher_size}, interpolation={self.interpolation!r}"
