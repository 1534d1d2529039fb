"""The scripts' flags as `HfArgumentParser` dataclasses, with the DeiT recipe's defaults (standard library only).

Flag names follow transformers' image-classification example (`--dataset_name`, `--train_dir`, ...). `--help` reads
them before torch loads (`hf_deit_inputs.help`); `hf_deit.arguments` puts `DeiTTrainingFlags`, `TeacherTrainingFlags`
and `DistillationFlags` over transformers' `TrainingArguments`. A default of None is a preset's value, or sized to the
run (`hf_deit.run.size_run`).
"""

from dataclasses import asdict, dataclass, field
from typing import Optional

from . import choices, terms
from .checks import PRESET_ALIASES
from .choices import (AUGMENTATION_PRESETS, AUTO_PRESET, DEFAULT_DATASET, IMAGENET_MEAN, IMAGENET_STD,
                      SMALL_IMAGE_MAX_SIZE, TEACHER_ARCHITECTURES)  # fmt: skip

DEFAULT_EPOCHS = 30
# A ViT trained from scratch barely starts to learn in fewer steps (README, "Where the defaults come from"), and a
# small folder at batch 64 gives only a few steps an epoch.
MIN_FROM_SCRATCH_STEPS = 300


@dataclass
class ModelArguments:
    _argument_group_name = "Model (the student)"  # its heading in --help

    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "A preset (" + ", ".join(sorted(PRESET_ALIASES)) + ", or the timm names), a folder or a Hub id "
            "of a saved model. Default: a small DeiT for the embedded digits, else DeiT-Tiny."
        },
    )
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated config fields, e.g. 'hidden_size=128,num_hidden_layers=6,patch_size=4'; "
                  "for a loaded checkpoint, fields its weights leave open (e.g. 'num_attention_heads=4')."},
    )
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth of the last block (paper 0.1)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa, flex_attention, ..."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow remote code for models loaded by name."})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Load a checkpoint whose weights do not all fit the model, the misfits untrained. Not "
                  "needed for other classes than the checkpoint's: new heads are made for the data's classes."},
    )


@dataclass
class DataArguments:
    _argument_group_name = "Data"  # its heading in --help

    dataset_name: Optional[str] = field(
        default=DEFAULT_DATASET,
        metadata={
            "help": "'mnist' (5,000 embedded MNIST digits), 'digits' (scikit-learn 8x8), a Hub id, or a folder "
            "written by save_to_disk. Ignored when --train_dir is given."
        },
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "The dataset's configuration."})
    train_dir: Optional[str] = field(
        default=None, metadata={"help": "A folder of training images: one sub-folder per class (train/cat/1.jpg)."}
    )
    validation_dir: Optional[str] = field(
        default=None,
        metadata={"help": "A folder of validation images, one sub-folder per class (a subset of train's classes)."},
    )
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the labels."})
    eval_split: Optional[str] = field(default=None, metadata={"help": "Split used for evaluation (auto-detected)."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train carved out for validation when there is no such split."}
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluation set."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset instead of downloading it."})
    skip_bad_images: bool = field(
        default=True,
        metadata={"help": "Skip undecodable images (truncated, empty, not images), logging a count and the first "
                  "paths; false stops at the first one, naming it."},
    )
    # Unlabelled images: the teacher labels them during training
    unlabeled_dataset_name: Optional[str] = field(
        default=None, metadata={"help": "A pool of unlabelled training images: dataset name (its train split)."}
    )
    unlabeled_train_dir: Optional[str] = field(
        default=None, metadata={"help": "A pool of unlabelled training images: an image folder."}
    )
    max_unlabeled_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the unlabelled pool."})
    labeled_fraction: Optional[float] = field(
        default=None,
        metadata={"help": "Keep the labels of this stratified, seeded fraction of train; the rest becomes unlabelled "
                  "(train_teacher.py trains on that fraction only, the same images with the same --seed)."},
    )

    def __post_init__(self):
        choices.check(self)


@dataclass
class DeiTTrainingFlags:
    """DeiT's recipe as `TrainingArguments` defaults, and its repeated augmentation. The fields whose default depends on
    the model and the data (learning rate, epochs, evaluation and checkpoint cadence, precision) are None until
    `hf_deit.run.size_run`."""

    output_dir: Optional[str] = field(default="outputs/deit", metadata={"help": "Where checkpoints and the model go."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start fresh in an --output_dir that holds a run with other settings, deleting its "
                  "checkpoints (by default such a run is refused; one with the same settings resumes)."},
    )
    learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "Peak learning rate; default 5e-4 x global batch size / 512 (the paper), and at least "
                  "5e-4 x sqrt(global batch / 64) for a new model on fewer than 100,000 images."},
    )
    label_smoothing_factor: float = field(
        default=0.1, metadata={"help": "Label smoothing of the class targets (paper 0.1)."}
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (none on norms/biases/tokens)."})
    lr_scheduler_type: str = field(default="cosine_with_min_lr", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(
        default=5 / 300, metadata={"help": "Warm-up steps, or a fraction of training (paper: 5 of 300 epochs)."}
    )
    num_train_epochs: Optional[float] = field(
        default=None,
        metadata={"help": "Epochs (paper: 300 on ImageNet). Default 30, more for a new model on a dataset so small "
                  f"that 30 epochs are fewer than {MIN_FROM_SCRATCH_STEPS} steps (on its labelled images alone, "
                  "when the teacher labels others)."},
    )
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per device."})
    eval_strategy: Optional[str] = field(
        default=None,
        metadata={"help": "When to evaluate: no, steps or epoch. Default: with an evaluation set, every epoch, or "
                  "about 20 times a run of more than 30 epochs (hf_deit.run.size_cadence); else never."},
    )
    save_strategy: Optional[str] = field(
        default=None,
        metadata={"help": "When to save a checkpoint: no, steps or epoch. Default: every epoch, or about 20 times a run "
                  "of more than 30 epochs (hf_deit.run.size_cadence)."},
    )
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps."})
    repeated_augmentation: int = field(
        default=3,
        metadata={"help": "Repeated augmentation (DeiT's RASampler): copies of each image per epoch, spread over the "
                  "processes (multi-process runs only, as the paper's 3; 1 turns it off)."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: the transforms need the image column."}
    )
    bf16: Optional[bool] = field(
        default=None,
        metadata={"help": "bf16 autocast. Default: on where it is faster than float32 (CUDA with bf16; CPUs with "
                  "AMX/AVX512-BF16 for models at least 192 wide; see hf_deit.precision), else off."},
    )  # fmt: skip

    # The epochs when none are given, and the fewest optimizer steps a new model gets (the CNN teacher has its own):
    # hf_deit.run.size_run reads them.
    default_epochs = DEFAULT_EPOCHS
    min_from_scratch_steps = MIN_FROM_SCRATCH_STEPS


@dataclass
class AugmentationArguments:
    """DeiT's augmentation recipe, each piece tunable or off. Unset (None) fields take the `preset`'s value.

    Field names do not clash with `TrainingArguments`, so both can go into one `HfArgumentParser`.
    """

    _argument_group_name = "Augmentation"  # its heading in --help

    preset: str = field(
        default="auto",
        metadata={
            "help": "Recipe defaults: 'imagenet' (the paper's values), 'small_images' (28-32 px digits), "
            "'cnn_from_scratch' (crops and flips only: a new CNN teacher on a small folder), or 'auto' "
            f"(small_images when --image_size <= {SMALL_IMAGE_MAX_SIZE}, else imagenet; train_teacher.py: "
            "cnn_from_scratch for a new CNN above that size)."
        },
    )
    image_size: Optional[int] = field(
        default=None,
        metadata={"help": "Side of the square model input (px). Default: a saved model's own; a new model on a folder "
                  "(--train_dir) sized to its images (hf_deit.data.sizing: 28 px and the small-image model for tiny "
                  "ones, else 64-224 px), else 224 (28 on the embedded digits). A size far from the images' is "
                  "warned of."},
    )
    crop_pct: Optional[float] = field(
        default=None, metadata={"help": "Eval: resize the shorter side to image_size/crop_pct, center-crop image_size."}
    )
    scale_min: Optional[float] = field(
        default=None, metadata={"help": "Smallest RandomResizedCrop area fraction (paper 0.08); 1 keeps whole images."}
    )
    hflip: Optional[float] = field(default=None, metadata={"help": "Horizontal flip probability; 0 turns it off."})
    rand_augment: Optional[str] = field(
        default=None,
        metadata={"help": "RandAugment magnitude on timm's 0-10 scale (paper 9), or 'none' to turn it off."},
    )
    rand_augment_num_ops: Optional[int] = field(default=None, metadata={"help": "RandAugment ops per image (2)."})
    rand_augment_mstd: Optional[float] = field(
        default=None, metadata={"help": "Std of the per-op magnitude noise (paper 0.5; 0 = fixed magnitude)."}
    )
    color_jitter: Optional[float] = field(
        default=None, metadata={"help": "ColorJitter strength for brightness/contrast/saturation; 0 turns it off."}
    )
    reprob: Optional[float] = field(
        default=None, metadata={"help": "Random erasing probability (per-pixel noise, paper 0.25); 0 turns it off."}
    )
    mean: Optional[list[float]] = field(default=None, metadata={"help": "Normalisation mean (default ImageNet)."})
    std: Optional[list[float]] = field(default=None, metadata={"help": "Normalisation std (default ImageNet)."})
    mixup: Optional[float] = field(default=None, metadata={"help": "Mixup Beta alpha (paper 0.8); 0 turns it off."})
    cutmix: Optional[float] = field(default=None, metadata={"help": "CutMix Beta alpha (paper 1.0); 0 turns it off."})
    mixup_prob: Optional[float] = field(
        default=None, metadata={"help": "Probability that a batch is mixed at all (paper 1.0)."}
    )
    mixup_switch_prob: Optional[float] = field(
        default=None, metadata={"help": "Probability of CutMix instead of mixup when both are on (paper 0.5)."}
    )

    def __post_init__(self):
        choices.check(self)

    def resolved(self, large_images_preset: str = "imagenet") -> "AugmentationArguments":
        """A copy with the preset's values filled in and every value checked. `--preset auto` is `small_images` up to
        64 px, else `large_images_preset` (train_teacher.py: `cnn_from_scratch` for a new CNN)."""
        preset = self.preset
        if preset == AUTO_PRESET:
            small = self.image_size is not None and self.image_size <= SMALL_IMAGE_MAX_SIZE
            preset = "small_images" if small else large_images_preset
        values = {key: value for key, value in asdict(self).items() if value is not None}
        values = {**AUGMENTATION_PRESETS[preset], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), **values}
        values["preset"] = preset
        resolved = AugmentationArguments(**values)
        if len(resolved.mean) != 3 or len(resolved.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {resolved.mean} and {resolved.std}.")
        return resolved

    @property
    def rand_augment_magnitude(self) -> Optional[float]:
        """The RandAugment magnitude as a number, or None when it is off."""
        text = str(self.rand_augment).strip().lower()
        return None if text in choices.NONE_WORDS else float(text)


def with_term_settings(cls):
    """Adds a field for every setting the distillation terms declare (`hf_deit_inputs.terms`), before `@dataclass`
    reads the class: the declaration is the one place a term's setting is written."""
    for setting in terms.settings_made_fields():
        cls.__annotations__[setting.name] = setting.annotation
        value = setting.default
        default = dict(default_factory=lambda value=value: list(value)) if isinstance(value, list) else dict(default=value)
        setattr(cls, setting.name, field(**default, metadata={"help": setting.help}))
    return cls


@dataclass
@with_term_settings
class DistillationFlags:
    """The teacher and every distillation setting: `hf_deit.arguments.DistillationConfig`'s fields beyond DeiT's
    training flags. The terms' settings (`distillation_type`, `attention_distillation_weight`, ...) are the fields
    their declarations make (`hf_deit_inputs.terms`)."""

    teacher_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "The teacher: a folder or Hub id of any image classifier."}
    )
    teacher_trust_remote_code: bool = field(default=False, metadata={"help": "Allow the teacher's remote code."})
    teacher_outputs: Optional[str] = field(
        default=None,
        metadata={"help": "Train from the teacher's outputs recorded by scripts/record_teacher.py (this folder) instead "
                  "of running the teacher: a record of other data, augmentation, seed, size or epochs is refused. "
                  "With --teacher_name_or_path too, the first batches are checked against the teacher."},
    )
    teacher_image_size: Optional[str] = field(
        default=None,
        metadata={"help": "What the teacher sees: its own preprocessing size (default; the batch is resized to it), "
                  "'student' (the student's batch as is: the paper's fine-tuning at a new resolution), or N px."},
    )


# ---- train_teacher.py: the teacher's own flags (data and augmentation flags are train.py's) ----


@dataclass
class TeacherArguments:
    _argument_group_name = "Model (the teacher)"  # its heading in --help

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Fine-tune this checkpoint (folder or Hub id) instead of a new CNN."}
    )
    architecture: str = field(
        default="resnet", metadata={"help": "New CNN: " + ", ".join(TEACHER_ARCHITECTURES) + " (transformers configs)."}
    )
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated config fields as for train.py, values in JSON where they are lists, e.g. "
                  "'depths=[2,2,2,2],hidden_sizes=[32,64,128,256]'."},
    )
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "New head for another class count."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow remote code for models loaded by name."})

    def __post_init__(self):
        choices.check(self)


# A CNN teacher learning from scratch: at least this many optimizer steps (the epochs grow on a small folder, as the
# student's do; a fixed 10 epochs is a few dozen steps on a folder of a hundred images).
# scripts/experiment_own_folder.py measures what the default gives (README).
MIN_TEACHER_STEPS = 300


@dataclass
class TeacherTrainingFlags(DeiTTrainingFlags):
    """A CNN's defaults: a higher learning rate, a short warm-up, 10 epochs or at least 300 optimizer steps for a new
    model, and, when a validation set is evaluated and saved at the same cadence, the best checkpoint by validation
    accuracy kept at the end (`load_best_model_at_end`)."""

    output_dir: Optional[str] = field(default="outputs/teacher", metadata={"help": "Where the teacher goes."})
    learning_rate: Optional[float] = field(default=2e-3, metadata={"help": "Peak learning rate (AdamW)."})
    num_train_epochs: Optional[float] = field(
        default=None,
        metadata={"help": f"Epochs. Default 10, more for a new model on a dataset so small that 10 epochs are fewer "
                  f"than {MIN_TEACHER_STEPS} steps."},
    )
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps or fraction of training."})
    load_best_model_at_end: Optional[bool] = field(
        default=None,
        metadata={"help": "Keep the checkpoint with the best validation accuracy. Default: on when evaluation and "
                  "saving happen at the same cadence (eval_strategy = save_strategy, not 'no')."},
    )

    default_epochs = 10
    min_from_scratch_steps = MIN_TEACHER_STEPS
