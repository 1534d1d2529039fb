"""Command-line arguments of `scripts/train.py` and `scripts/train_teacher.py`, as `HfArgumentParser` dataclasses.

Flag names follow transformers' image-classification example (`--dataset_name`, `--train_dir`, ...); the DeiT
recipe's defaults live here, in one place, and `DeiTTrainingArguments` only changes `TrainingArguments`' defaults.
"""

from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from .configuration_distilled_deit import PRESET_ALIASES, PRESETS, DistilledDeiTConfig
from .precision import bf16_is_faster

# The model trained on the embedded 28 px digits (padded to 32): patch 4 gives an 8x8 grid, as in the anchor runs.
EMBEDDED_STUDENT = dict(image_size=32, patch_size=4, hidden_size=128, num_hidden_layers=6, num_attention_heads=4)
EMBEDDED_DATASETS = ("mnist", "digits")
# The paper's learning rate is 5e-4 for a global batch of 512, scaled linearly with the batch.
BASE_LEARNING_RATE = 5e-4
BASE_BATCH_SIZE = 512
MIN_LEARNING_RATE = 1e-5
SMALL_DATA_LEARNING_RATE = 1e-3


@dataclass
class ModelArguments:
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
        default=False, metadata={"help": "Fine-tune a checkpoint with another number of classes (new heads)."}
    )


@dataclass
class DataArguments:
    dataset_name: Optional[str] = field(
        default="mnist",
        metadata={
            "help": "'mnist' (5,000 embedded MNIST digits), 'digits' (scikit-learn 8x8), a Hub id, or a folder "
            "written by save_to_disk. Ignored when --train_dir is given."
        },
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "The dataset's configuration."})
    train_dir: Optional[str] = field(default=None, metadata={"help": "An imagefolder of training images."})
    validation_dir: Optional[str] = field(default=None, metadata={"help": "An imagefolder of validation images."})
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
    repeated_augmentation: int = field(
        default=3,
        metadata={"help": "Repeated augmentation: copies of each image per epoch across processes (multi-process "
                  "runs only, as the paper; 1 turns it off)."},
    )


@dataclass
class DistillationArguments:
    teacher_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "The teacher: a folder or Hub id of any image classifier."}
    )
    distillation_type: str = field(
        default="hard", metadata={"help": "none, soft or hard (paper: hard). 'none' needs no teacher."}
    )
    distillation_alpha: float = field(default=0.5, metadata={"help": "Weight of the distillation term (paper 0.5)."})
    distillation_tau: float = field(default=1.0, metadata={"help": "Temperature of soft distillation (paper 1.0)."})
    teacher_trust_remote_code: bool = field(default=False, metadata={"help": "Allow the teacher's remote code."})
    teacher_image_size: Optional[str] = field(
        default=None,
        metadata={"help": "What the teacher sees: its own preprocessing size (default; the batch is resized to it), "
                  "'student' (the student's batch as is: the paper's fine-tuning at a new resolution), or N px."},
    )
    # Beyond the paper (hf_deit.losses.attention_map_loss, hf_deit.feature_distillation)
    attention_distillation_weight: float = field(
        default=0.0, metadata={"help": "Weight of the attention-map term: student attention vs teacher map (0 = off)."}
    )
    attention_distillation_layers: list[int] = field(
        default_factory=lambda: [-1], metadata={"help": "Student blocks whose attention is distilled (-1 = last)."}
    )
    attention_distillation_token: str = field(
        default="dist", metadata={"help": "Student token whose attention is distilled: cls, dist or both."}
    )
    attention_distillation_loss: str = field(default="kl", metadata={"help": "Attention-map distance: kl or mse."})
    feature_distillation_weight: float = field(
        default=0.0, metadata={"help": "Weight of the feature term: projected student vs teacher features (0 = off)."}
    )
    feature_distillation_loss: str = field(default="cosine", metadata={"help": "Feature distance: cosine or mse."})
    feature_distillation_token: str = field(
        default="dist", metadata={"help": "Student features: dist or cls token, or patches (mean of patch tokens)."}
    )
    # Learning from unlabelled images: the teacher labels them
    unlabeled_dataset_name: Optional[str] = field(
        default=None, metadata={"help": "A pool of unlabelled training images: dataset name (its train split)."}
    )
    unlabeled_train_dir: Optional[str] = field(
        default=None, metadata={"help": "A pool of unlabelled training images: an image folder."}
    )
    max_unlabeled_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the unlabelled pool."})
    labeled_fraction: Optional[float] = field(
        default=None,
        metadata={"help": "Keep the labels of this stratified, seeded fraction of train; the rest becomes unlabelled."},
    )
    pseudo_label_threshold: float = field(
        default=0.0,
        metadata={"help": "Unlabelled images train the class head on the teacher's label when its probability "
                  "reaches this (0 = always)."},
    )


@dataclass
class DeiTTrainingArguments(TrainingArguments):
    """`TrainingArguments` with DeiT's recipe as defaults. `learning_rate` left unset is 5e-4 x global batch / 512."""

    output_dir: Optional[str] = field(default="outputs/deit", metadata={"help": "Where checkpoints and the model go."})
    learning_rate: Optional[float] = field(
        default=None, metadata={"help": "Peak learning rate; default 5e-4 x global batch size / 512 (the paper)."}
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (none on norms/biases/tokens)."})
    lr_scheduler_type: str = field(default="cosine_with_min_lr", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(
        default=5 / 300, metadata={"help": "Warm-up steps, or a fraction of training (paper: 5 of 300 epochs)."}
    )
    num_train_epochs: float = field(default=30.0, metadata={"help": "Epochs (paper: 300 on ImageNet)."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per device."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Evaluation batch size per device."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint."})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Checkpoints kept."})
    logging_steps: float = field(default=20, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: the transforms need the image column."}
    )
    bf16: Optional[bool] = field(
        default=None,
        metadata={"help": "bf16 autocast. Default: on where it is faster than float32 (CUDA with bf16; CPUs with "
                  "AMX/AVX512-BF16 for models at least 192 wide; see hf_deit.precision), else off."},
    )  # fmt: skip

    def __post_init__(self):
        if self.learning_rate is None:
            self.learning_rate = -1.0  # resolved by resolve_learning_rate once the world size is known
        if self.lr_scheduler_type == "cosine_with_min_lr" and not self.lr_scheduler_kwargs:
            self.lr_scheduler_kwargs = {"min_lr": MIN_LEARNING_RATE}  # the paper's floor
        super().__post_init__()

    def resolve_precision(self, hidden_size: Optional[int] = None) -> bool:
        """Settles `bf16` when it was left unset: off when a precision was chosen otherwise (`--fp16`, or
        `accelerate launch --mixed_precision`), else on where it is faster for this model (`hf_deit.precision`;
        `hidden_size` of a transformer, None for a CNN). Called by the trainers before their accelerator exists."""
        if self.bf16 is None:
            if self.fp16 or self.mixed_precision != "no":
                self.bf16 = self.mixed_precision == "bf16"
            else:
                self.bf16 = bf16_is_faster(self.device, hidden_size)
                if self.bf16:
                    self.mixed_precision = "bf16"
        return self.bf16

    def resolve_learning_rate(self, small_data: bool = False) -> float:
        """The learning rate when none was given: the paper's linear scaling rule, 5e-4 x global batch / 512.

        With `small_data` (the embedded digits: a few thousand images, a few hundred steps) the rule's tiny steps
        (6e-5 at batch 64) barely move a from-scratch ViT in the budget; 1e-3, the rate reference-style code
        uses there (shared/reference/small-scale-anchor.md), is the default instead.
        """
        if self.learning_rate < 0:
            global_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size
            scaled = BASE_LEARNING_RATE * global_batch / BASE_BATCH_SIZE
            self.learning_rate = SMALL_DATA_LEARNING_RATE if small_data else scaled
        return self.learning_rate


def parse_config_overrides(text: Optional[str]) -> dict:
    """'hidden_size=128,qkv_bias=false,image_size=32' -> typed values."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides: expected key=value, got {item!r}.")
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            overrides[key.strip()] = lowered == "true"
            continue
        for cast in (int, float):
            try:
                overrides[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            overrides[key.strip()] = value.strip()
    return overrides


def uses_embedded_data(data_args: DataArguments) -> bool:
    return data_args.train_dir is None and data_args.dataset_name in EMBEDDED_DATASETS


def student_config(model_args: ModelArguments, data_args: DataArguments, **label_fields) -> Optional[DistilledDeiTConfig]:
    """A new student's config (from a preset or the embedded default), or None when a saved model is to be loaded."""
    name = model_args.model_name_or_path
    overrides = {"drop_path_rate": model_args.drop_path_rate, **parse_config_overrides(model_args.config_overrides)}
    if name is None:
        base = dict(EMBEDDED_STUDENT) if uses_embedded_data(data_args) else dict(PRESETS["deit_tiny_distilled_patch16_224"])
        return DistilledDeiTConfig(**{**base, **overrides, **label_fields})
    if name in PRESETS or name in PRESET_ALIASES:
        return DistilledDeiTConfig.from_preset(name, **overrides, **label_fields)
    return None


def load_dataset_from_args(data_args: DataArguments, seed: int, token: Optional[str] = None):
    """The `DatasetDict` (train + validation) the data flags describe; see `hf_deit.data`."""
    from .data import load_image_classification_dataset

    return load_image_classification_dataset(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_dir=data_args.train_dir,
        validation_dir=data_args.validation_dir,
        image_column_name=data_args.image_column_name,
        label_column_name=data_args.label_column_name,
        eval_split=data_args.eval_split,
        train_val_split=data_args.train_val_split,
        seed=seed,
        streaming=data_args.streaming,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
        token=token,
    )


def label_fields(label_names: list[str]) -> dict:
    """The config fields that name a classifier's classes."""
    return dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )
