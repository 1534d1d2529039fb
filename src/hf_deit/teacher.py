"""The teacher: load any image classifier, check that it predicts the student's classes, feed it the student's batch.

DeiT's teacher sees exactly the student's input tensor (augmented, mixed, normalised). A teacher trained with
another normalisation or resolution gets that same tensor re-normalised and resized on the fly, so that
augmentation stays shared and nothing is decoded twice.
"""

import contextlib
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hf_deit_inputs.checks import CHECKPOINT_FILE_SUFFIXES

from .attention_maps import (
    CLS_TOKEN,
    activation_attention_map,
    capture_attention,
    capture_input,
    classifier_layer,
    is_distilled_deit,
    is_vit_like,
    patch_grid,
    token_attention_map,
)

logger = logging.getLogger(__name__)

# transformers names unnamed classes "LABEL_0", "LABEL_1", ...: those carry no meaning and are not compared.
_DEFAULT_LABEL_NAME = re.compile(r"LABEL_\d+")


# The epoch of the evaluation images' views: one per image, (EVALUATION_EPOCH, i, i).
EVALUATION_EPOCH = -1


def load_teacher(
    teacher: "str | nn.Module", *, trust_remote_code: bool = False, timm_model_name: str | None = None
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
    if teacher.endswith(CHECKPOINT_FILE_SUFFIXES) and not Path(teacher).exists():
        raise FileNotFoundError(f"The teacher's weights file {teacher} does not exist.")
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(teacher, trust_remote_code=trust_remote_code)
    if config.model_type == "timm_wrapper":
        _drop_arguments_the_timm_wrapper_passes(config)
    try:
        return AutoModelForImageClassification.from_pretrained(
            teacher, config=config, trust_remote_code=trust_remote_code
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


def teacher_preprocessing(teacher: "str | nn.Module", module: nn.Module | None = None) -> TeacherPreprocessing:
    """Read what the teacher expects from its image processor (saved in the teacher's folder or Hub id) and its config
    (of `module`, the loaded teacher, when given). A timm model without a saved processor gets timm's data config for
    its architecture. Anything not found stays None: the batch then passes unchanged."""
    processor = None
    if isinstance(teacher, str) and not Path(teacher).is_file():
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(teacher)
        except (OSError, ValueError):  # no preprocessing config saved with this teacher
            pass
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
    """Turns the student's normalised batch into the one the `teacher` expects: re-normalise, resize, nothing else.

    Re-normalising `(x * student_std + student_mean - teacher_mean) / teacher_std` is one per-channel affine map,
    folded here into `x * scale + shift`. Resizing (antialiased) happens only when the batch's size differs from the
    teacher's. With nothing to change, `forward` returns its input tensor itself.
    """

    def __init__(
        self,
        student_mean: Sequence[float] | None = None,
        student_std: Sequence[float] | None = None,
        teacher: TeacherPreprocessing | None = None,
    ):
        super().__init__()
        teacher = teacher or TeacherPreprocessing()
        self.teacher_size = tuple(teacher.image_size) if teacher.image_size is not None else None
        self.teacher_channels, self.interpolation = teacher.num_channels, teacher.interpolation
        self.renormalize = False
        if teacher.image_mean is not None and teacher.image_std is not None:
            if student_mean is None or student_std is None:
                logger.warning(
                    "The teacher's normalisation is known but the student's is not: the teacher gets the student's "
                    "batch as is. Pass student_mean/student_std (or the student's image processor) to re-normalise."
                )
            else:
                s_mean, s_std, t_mean, t_std = (
                    torch.as_tensor(v, dtype=torch.float32).view(-1, 1, 1)
                    for v in (student_mean, student_std, teacher.image_mean, teacher.image_std)
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

    def extra_repr(self) -> str:
        return f"renormalize={self.renormalize}, teacher_size={self.teacher_size}, interpolation={self.interpolation!r}"


def _input_size(value) -> tuple[int, int] | None:
    """`image_size` of `Teacher.load`: "student" (None: no resizing), N or "N" px, or (height, width)."""
    if value == "student":
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    size = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise ValueError(f"teacher_image_size must be 'student', a size in pixels or (height, width); got {value!r}.")
    return size


@dataclass
class TeacherForwardOutput:
    """What one teacher forward pass gives: the logits in the student's class order and, when asked, the
    `attention_map` (a transformer's cls token attention over the patches in the asked layers, averaged over heads and
    layers; a CNN's `activation_attention_map` of its last stage), pooled `features` and a CNN's `stage_maps`."""

    logits: torch.Tensor
    attention_map: torch.Tensor | None = None  # (batch, rows, columns)
    features: torch.Tensor | None = None  # (batch, features): the input of the classifier layer (`classifier_layer`)
    stage_maps: tuple[torch.Tensor, ...] | None = None  # a CNN's 4-D hidden states (batch, channels, h, w), in order


def logits_of(output) -> torch.Tensor:
    """The `(batch, num_classes)` logits of a classifier's output: a tensor, an output with `.logits`, or a tuple."""
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(
            f"The teacher must return logits of shape (batch, num_classes) or an output with `.logits`; got "
            f"{type(output).__name__}. Pass an image-classification model."
        )
    return logits


class Teacher(nn.Module):
    """A frozen image classifier that labels the student's batches.

    `Teacher(model)` wraps a module whose input and classes already match the student's; `Teacher.load(...)` builds
    one from a module, folder, Hub id or weights file and fits it to the student. The module stays in eval mode
    without gradients, whatever its parent does (`train()` keeps it frozen).

    Calling it gives a `TeacherForwardOutput` from one forward pass. Maps come from our distilled DeiT, transformers'
    ViT/DeiT and transformers' CNNs (ResNet, RegNet, ConvNeXt, ...).

    What a trainer asks of any teacher, live or recorded: the call, `name`, `report` (an accuracy check made
    earlier, when the teacher cannot be run on images now), `check_run(trainer)` (before training) and
    `reads_views` (whether batches must carry their views: (batch, 3) rows of epoch, position, image, each row's place
    in the run, `hf_deit.data.samplers`). The live teacher ignores the views; a recorded one
    (`hf_deit.teacher_record.RecordedTeacher`) finds its outputs by them.
    """

    reads_views = False
    report = None

    def __init__(
        self,
        model: nn.Module,
        input_adapter: "TeacherInputAdapter | None" = None,
        label_order: torch.Tensor | None = None,
        name: str | None = None,
    ):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.input_adapter = input_adapter if input_adapter is not None else TeacherInputAdapter()
        self.register_buffer("label_order", label_order, persistent=False)
        config = getattr(model, "config", None)
        self.name = name or getattr(config, "_name_or_path", None) or type(model).__name__
        self.compiled = None  # the compiled model, once compile() is called

    @classmethod
    def load(
        cls,
        teacher: "str | nn.Module",
        student_config=None,
        *,
        student_mean: Sequence[float] | None = None,
        student_std: Sequence[float] | None = None,
        image_size: "int | Sequence[int] | str | None" = None,
        trust_remote_code: bool = False,
        attention_maps: bool = False,
    ) -> "Teacher":
        """Load `teacher` (`load_teacher`) and fit it to the student:

        - its classes are checked against `student_config`'s (`num_labels`, `id2label`; any object with those), and
          re-ordered by name when they are the same classes in another order (`check_label_space`);
        - the student's batch, normalised with `student_mean`/`student_std`, is re-normalised to the teacher's and
          resized to `image_size`: None (default) for the teacher's own preprocessing size (from the image processor
          saved with the teacher), "student" for the student's batch as it is (the paper's fine-tuning at a
          new resolution; a CNN takes any size), or N px / (height, width);
        - `attention_maps=True` prepares a transformers ViT-like teacher to return attention weights (eager).
        """
        module = load_teacher(teacher, trust_remote_code=trust_remote_code)
        config = getattr(module, "config", None)
        label_order = None
        if student_config is not None and config is not None and hasattr(config, "id2label"):
            label_order = check_label_space(student_config, config)
        expected = teacher_preprocessing(teacher if isinstance(teacher, str) else module, module)
        if image_size is not None:
            expected.image_size = _input_size(image_size)
        student_channels = getattr(student_config, "num_channels", None)
        if None not in (expected.num_channels, student_channels) and expected.num_channels != student_channels:
            raise ValueError(
                f"The teacher expects {expected.num_channels}-channel images, the student {student_channels}. "
                "Use a teacher trained on the same kind of images."
            )
        # transformers computes attention weights on the eager path only; our distilled DeiT's hooks ask the chosen
        # blocks alone for them (`capture_attention`), and a CNN has none
        if attention_maps and is_vit_like(config) and not is_distilled_deit(module):
            module.set_attn_implementation("eager")
        adapter = TeacherInputAdapter(student_mean, student_std, expected)
        return cls(module, adapter, label_order, name=teacher if isinstance(teacher, str) else None)

    def check_run(self, trainer) -> None:
        """A live teacher fits any run: nothing to check before training."""

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # frozen: its outputs never change with its parent's mode

    def compile(self, **options) -> "Teacher":
        """Compile the teacher's forward pass with `torch.compile(**options)` (backend, mode, ...); with inductor its
        weights are frozen into the graph as constants (it never trains), pre-packed for the CPU's convolution and
        matrix libraries (`hf_deit.inference.compile_for_inference`). Passes that hook into the model (`features=True`,
        the classifier's input; `attention_map=True` of our distilled DeiT, its chosen blocks) run eagerly."""
        from .inference import compile_for_inference

        self.compiled = compile_for_inference(self.model, **{"dynamic": None, **options})
        return self

    @torch.no_grad()
    def forward(
        self,
        pixel_values: torch.Tensor,
        attention_map: bool = False,
        features: bool = False,
        stage_maps: bool = False,
        layers: Sequence[int] = (-1,),
        views: torch.Tensor | None = None,
    ) -> TeacherForwardOutput:
        pixel_values = self.input_adapter(pixel_values)
        config = getattr(self.model, "config", None)
        # A plain module gives logits alone: what it lacks is said (these raise) before a pass that would be wasted.
        if config is None and stage_maps:
            self._stage_maps(None)
        if config is None and attention_map:
            self._map(None, None, pixel_values, False, layers)
        kwargs = {"output_hidden_states": True} if stage_maps and config is not None else {}  # a plain module: pixels
        transformer = is_vit_like(config)
        our_blocks = attention_map and is_distilled_deit(self.model)  # its chosen blocks only, by hooks
        if attention_map and not our_blocks and config is not None:
            kwargs["output_attentions" if transformer else "output_hidden_states"] = True
        head = classifier_layer(self.model, getattr(config, "num_labels", None)) if features else None
        call = self.compiled if self.compiled is not None and head is None and not our_blocks else self.model
        with contextlib.ExitStack() as hooks:
            captured = hooks.enter_context(capture_input(head)) if head is not None else {}
            attentions = hooks.enter_context(capture_attention(self.model, layers)) if our_blocks else None
            output = call(pixel_values, **kwargs)
        logits = logits_of(output)
        if self.label_order is not None:
            logits = logits.index_select(1, self.label_order)
        spatial = self._map(output, attentions, pixel_values, transformer, layers) if attention_map else None
        maps = self._stage_maps(output) if stage_maps else None
        return TeacherForwardOutput(logits, spatial, captured["input"] if head is not None else None, maps)

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's batch, in the student's class order."""
        return self(pixel_values).logits

    def _stage_maps(self, output) -> tuple[torch.Tensor, ...]:
        maps = tuple(state for state in getattr(output, "hidden_states", None) or () if state.ndim == 4)
        if not maps:
            raise ValueError(f"The teacher {type(self.model).__name__} returns no spatial stage outputs (4-D hidden "
                             "states): feature-map distillation needs a CNN teacher, such as transformers' ResNet, "
                             "RegNet or ConvNeXt (scripts/train_teacher.py trains one).")
        return maps

    def _map(self, output, attentions, pixel_values, transformer: bool, layers: Sequence[int]) -> torch.Tensor:
        """The teacher's spatial map: `attentions` (our distilled DeiT's chosen blocks), or from `output`."""
        name = type(self.model).__name__
        if transformer:
            if attentions is None:  # every layer came back: pick the requested ones
                attentions = getattr(output, "attentions", None)
                if not attentions:
                    raise ValueError(f"The teacher {name} returned no attention weights; load it with "
                                     "Teacher.load(..., attention_maps=True) (transformers computes them with eager "
                                     "attention only).")
                attentions = [attentions[index] for index in layers]
            return token_attention_map(attentions, patch_grid(self.model.config, pixel_values), CLS_TOKEN)
        hidden_states = getattr(output, "hidden_states", None)
        if not hidden_states or hidden_states[-1].ndim != 4:
            raise ValueError(
                f"The teacher {name} gives neither attention weights nor CNN stage outputs (output_hidden_states): "
                "attention distillation supports transformers' ViT/DeiT, our distilled DeiT and transformers' CNNs."
            )
        if hidden_states[-1].shape[-2:].numel() == 1:
            warnings.warn(
                f"The teacher {name}'s last stage is 1x1 at {tuple(pixel_values.shape[-2:])} px: its attention map is "
                "uniform, so the attention term only spreads the student's attention. Use a teacher that downsamples "
                "less (scripts/train_teacher.py --config_overrides 'hidden_sizes=[32,64],depths=[1,1]') or larger "
                "images.",
                stacklevel=3,
            )
        return activation_attention_map(hidden_states[-1])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, compiled={self.compiled is not None}, reordered={self.label_order is not None}"

