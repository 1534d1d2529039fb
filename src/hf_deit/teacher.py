"""The teacher: load any image classifier, check that it predicts the student's classes, feed it the student's batch.

DeiT's teacher sees exactly the student's input tensor (augmented, mixed, normalised). A teacher trained with
another normalisation or resolution gets that same tensor re-normalised and resized on the fly by
`TeacherInputAdapter`, so that augmentation stays shared and nothing is decoded twice.
"""

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


# Weights files a teacher can be given as, with the timm architecture named by the file or by `timm_model_name`.
TEACHER_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_HUB_OPTIONS = ("cache_dir", "revision", "token", "local_files_only", "force_download")


def load_teacher(
    teacher: "str | nn.Module",
    *,
    trust_remote_code: bool = False,
    timm_model_name: str | None = None,
    **from_pretrained_kwargs,
) -> nn.Module:
    """An image-classification teacher from a module, a local folder, a Hub id or a timm weights file.

    - Folders and Hub ids load with `AutoModelForImageClassification`: transformers models, models with remote code
      (`trust_remote_code=True`), and timm models (`timm/...` ids, or folders saved by timm's `save_for_hf`, whose
      `config.json` has `architecture` and `model_args`) through transformers' `TimmWrapperForImageClassification`.
    - A weights file (`.pth`, `.pt`, `.bin`, `.safetensors`, loaded safely) of a timm model: the architecture is
      `timm_model_name`, or else the file's name up to a `-` (`regnety_160-a5fe301d.pth`, as the DeiT authors ship
      their teacher, or `regnety_160.deit_in1k.safetensors`). It is wrapped in `TimmWrapperForImageClassification`
      with the class count of its weights and timm's preprocessing for that architecture.
    - A module is returned as is; it must map `pixel_values` to logits or to an output with `.logits`.
    """
    if isinstance(teacher, nn.Module):
        return teacher
    if not isinstance(teacher, (str, Path)):
        raise TypeError(
            f"teacher must be a module, a folder, a Hub id or a weights file, got {type(teacher).__name__}."
        )
    teacher = str(teacher)
    if Path(teacher).is_file():
        return _timm_teacher_from_file(Path(teacher), timm_model_name)
    if teacher.endswith(TEACHER_WEIGHT_SUFFIXES) and not Path(teacher).exists():
        raise FileNotFoundError(f"The teacher's weights file {teacher} does not exist.")
    from transformers import AutoConfig, AutoModelForImageClassification

    hub_options = {key: from_pretrained_kwargs[key] for key in _HUB_OPTIONS if key in from_pretrained_kwargs}
    config = AutoConfig.from_pretrained(teacher, trust_remote_code=trust_remote_code, **hub_options)
    if config.model_type == "timm_wrapper":
        _drop_arguments_the_timm_wrapper_passes(config)
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


def _drop_arguments_the_timm_wrapper_passes(config) -> None:
    """timm's `save_for_hf` records `num_classes` (and `pretrained_cfg` may) among `model_args`; transformers'
    wrapper passes `num_classes=config.num_labels` as well, and `timm.create_model` then gets it twice (TypeError).
    The class count is `num_labels`, which transformers reads from the same config's `num_classes`."""
    model_args = dict(config.model_args or {})
    duplicate = model_args.pop("num_classes", None)
    if duplicate is not None and duplicate != config.num_labels:
        raise ValueError(
            f"The timm teacher's config.json says num_classes={config.num_labels} but model_args has "
            f"num_classes={duplicate}; fix the config so that both agree."
        )
    model_args.pop("pretrained_cfg", None)
    config.model_args = model_args or None


def _timm_teacher_from_file(path: Path, timm_model_name: str | None) -> nn.Module:
    """A timm model from a weights file, in transformers' `TimmWrapperForImageClassification`."""
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    from .convert import load_checkpoint

    candidates = [timm_model_name] if timm_model_name else [path.name[: -len(path.suffix)], path.stem.split("-")[0]]
    architecture = next((name for name in candidates if timm.is_model(name)), None)
    if architecture is None:
        raise ValueError(
            f"The teacher {path} is a weights file, but {' or '.join(repr(c) for c in candidates)} is not a timm "
            "model name: name the file after its timm architecture (e.g. regnety_160-a5fe301d.pth), or pass "
            "timm_model_name."
        )
    state_dict, _ = load_checkpoint(path)
    pretrained_cfg = timm.models.get_pretrained_cfg(architecture).to_dict()
    classifier = pretrained_cfg.get("classifier")
    classifier = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
    if f"{classifier}.weight" not in state_dict:
        raise ValueError(
            f"The teacher {path} has no {classifier}.weight, the classifier of timm's {architecture!r}: it holds "
            "another architecture's weights, or no classification head."
        )
    num_classes = state_dict[f"{classifier}.weight"].shape[0]
    pretrained_cfg = {key: value for key, value in pretrained_cfg.items() if key not in ("num_classes", "state_dict")}
    # from_dict, as for a timm folder: it names ImageNet's classes when the pretrained config is an ImageNet one.
    config = TimmWrapperConfig.from_dict(
        {"architecture": architecture, "num_classes": num_classes, "pretrained_cfg": pretrained_cfg}
    )
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(state_dict)
    logger.info("Teacher: timm %s with the weights of %s (%d classes).", architecture, path, num_classes)
    return model.eval()


_WORDNET_ID = re.compile(r"n\d{8}")


def _are_wordnet_ids(names: Sequence[str]) -> bool:
    return bool(names) and all(_WORDNET_ID.fullmatch(name) for name in names)


def _imagenet_order(student_names: Sequence[str], teacher_names: Sequence[str]) -> list[int] | None:
    """ImageNet folders name their classes by WordNet id (n01440764), while transformers names a timm ImageNet model's
    classes by description ('tench, Tinca tinca'; not unique: two are 'crane'). When the student's classes are
    ImageNet-1k WordNet ids and the teacher lists ImageNet-1k's descriptions in ImageNet's order, the teacher's index
    of each student class; else None."""
    if not _are_wordnet_ids(student_names):
        return None
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return None
    info = ImageNetInfo("imagenet-1k")
    wordnet_ids = list(info.label_names())
    descriptions = info.label_descriptions(as_dict=True)  # as transformers' TimmWrapperConfig names the classes
    if list(teacher_names) != [descriptions[wordnet_id] for wordnet_id in wordnet_ids]:
        return None
    index = {wordnet_id: position for position, wordnet_id in enumerate(wordnet_ids)}
    return [index[name] for name in student_names] if all(name in index for name in student_names) else None


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
        wordnet = _are_wordnet_ids([str(name) for name in getattr(student_config, "id2label", {}).values()])
        raise ValueError(
            f"The teacher predicts {teacher_count} classes, the student {student_count}. Distillation needs the "
            "same label space: fine-tune the teacher on the student's dataset first (scripts/train_teacher.py)."
            + (" (The student's classes are ImageNet WordNet ids: a subset of ImageNet's 1000 classes; an ImageNet "
               "teacher teaches them only once fine-tuned on them.)" if wordnet else "")
        )
    if not (_has_real_names(student_config) and _has_real_names(teacher_config)):
        return None
    student_names = [str(student_config.id2label[i]) for i in range(student_count)]
    teacher_names = [str(teacher_config.id2label[i]) for i in range(teacher_count)]
    if student_names == teacher_names:
        return None
    imagenet_order = _imagenet_order(student_names, teacher_names)
    if imagenet_order is not None:
        logger.info("The student's classes are ImageNet WordNet ids (%s, ...), the teacher's ImageNet's descriptions "
                    "(%s, ...): matched through timm's ImageNet class list.", student_names[0], teacher_names[0])
        if imagenet_order == list(range(teacher_count)):
            return None
        return torch.tensor(imagenet_order, dtype=torch.long)
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


def teacher_preprocessing(
    teacher: "str | nn.Module", processor=None, module: nn.Module | None = None
) -> TeacherPreprocessing:
    """Read what the teacher expects from its image processor (given, or loaded from the teacher's folder or Hub id
    when one is saved there) and its config (of `module`, the loaded teacher, when given). A timm model without a
    saved processor gets timm's data config for its architecture. Anything not found stays None: the batch then
    passes unchanged."""
    if processor is None and isinstance(teacher, str) and not Path(teacher).is_file():
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(teacher)
        except (OSError, ValueError):  # no preprocessing config saved with this teacher
            processor = None
    config = getattr(module if module is not None else teacher, "config", None)
    if processor is None and getattr(config, "model_type", None) == "timm_wrapper":
        from transformers import TimmWrapperImageProcessor  # timm's resolved data config for this architecture

        processor = TimmWrapperImageProcessor(pretrained_cfg=getattr(config, "pretrained_cfg", None) or {})
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
