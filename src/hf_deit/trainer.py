"""`DistillationTrainer`: transformers' `Trainer` with DeiT's teacher and loss, and per-head evaluation metrics."""

import contextlib
import logging
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import EvalPrediction, Trainer, TrainerCallback, default_data_collator

from .callbacks import LogAtLeastEvery, NonFiniteLossError, NonFiniteLossGuard, head_warnings
from .checkpointing import (
    PositionSeededCollator,
    PositionSeededDataset,
    PositionSeededSampler,
    save_checkpoint_atomically,
)
from .attention_maps import (
    CLS_TOKEN,
    DISTILLATION_TOKEN,
    TeacherForwardOutput,
    capture_input,
    capture_outputs,
    classifier_layer,
    grid_for,
    prepare_teacher_for_maps,
    teacher_forward,
    token_attention_map,
)
from .feature_distillation import (
    FEATURE_LOSSES,
    FEATURE_TOKENS,
    FeatureProjection,
    feature_distillation_loss,
    feature_map_distillation_loss,
    nearest_stage,
    patch_mean_features,
    student_head,
)
from .losses import ATTENTION_MAP_LOSSES, DistillationLoss, DistillationType, attention_map_loss, classification_loss
from .teacher import TeacherInputAdapter, TeacherLogits, check_label_space, load_teacher, teacher_preprocessing

logger = logging.getLogger(__name__)

# The paper's recipe: no weight decay on the class/distillation tokens and position embeddings (Trainer's default
# already spares biases and norm weights).
_NO_DECAY_PARAMETER = re.compile(r"(?:^|\.)(cls_token|distillation_token|dist_token|position_embeddings|pos_embed)$")
# Saved in each checkpoint next to the optimizer state, never in the model folder.
FEATURE_PROJECTION_NAME = "feature_projection.safetensors"
FEATURE_MAP_PROJECTION_NAME = "feature_map_projection.safetensors"
_NOT_EVAL_RESULTS = re.compile(r"(runtime|per_second|epoch|step)$")
logger = logging.getLogger(__name__)


def _precision_in_words(mixed_precision: str, chosen_here: bool) -> str:
    """The precision training uses, for the log. `accelerate launch` without `--mixed_precision` warns that it set
    'no' (and exports it); that default leaves the choice to `hf_deit.precision`, so the log says which way it went."""
    words = {"bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(str(mixed_precision), "float32 (no mixed precision)")
    if chosen_here and str(mixed_precision) == "bf16":
        words += " (chosen as faster on this hardware; accelerate launch's default mixed_precision 'no' is not a "
        words += "choice: pass --bf16 false for float32)"
    return words


def _teacher_input_size(value) -> tuple[int, int] | None:
    """`teacher_image_size` as the adapter's size: "student" (None: no resizing), N or "N" px, or (height, width)."""
    if value == "student":
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    size = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise ValueError(f"teacher_image_size must be 'student', a size in pixels or (height, width); got {value!r}.")
    return size


class DeiTTrainerBase(Trainer):
    """What DeiT training adds to `Trainer` whatever the loss: evaluation batches collated without mixup, repeated
    augmentation across processes, and no weight decay on the tokens and position embeddings.

    Args (beyond `Trainer`'s):
        eval_data_collator: collates evaluation batches; by default the training collator without mixing (its
            `for_evaluation()`), so that metrics see real images and class ids.
        repeated_augmentation: copies of each image per epoch spread over the processes (DeiT's RASampler; the paper
            uses 3). Applies to multi-process runs only, as in the official code; 1 turns it off.
    """

    # `compute_loss` returns a per-batch mean; Trainer divides it by the accumulation steps itself.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, eval_data_collator=None, repeated_augmentation: int = 1, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        chosen_here = getattr(training_args, "bf16", False) is None
        if chosen_here:  # DeiTTrainingArguments left to choose: before the accelerator
            model = kwargs.get("model", args[0] if args else None)
            training_args.resolve_precision(getattr(getattr(model, "config", None), "hidden_size", None))
        if getattr(training_args, "dataloader_pin_memory", False) and not torch.cuda.is_available():
            training_args.dataloader_pin_memory = False  # nothing to pin for; torch would warn at every epoch
        super().__init__(*args, **kwargs)
        logger.info("Precision: %s.", _precision_in_words(self.accelerator.mixed_precision, chosen_here))
        if eval_data_collator is None and hasattr(self.data_collator, "for_evaluation"):
            eval_data_collator = self.data_collator.for_evaluation()
        self.eval_data_collator = eval_data_collator
        if repeated_augmentation < 1:
            raise ValueError(f"repeated_augmentation must be >= 1, got {repeated_augmentation}.")
        self.repeated_augmentation = repeated_augmentation
        self.loss_guard = NonFiniteLossGuard()  # compute_loss feeds it; training_step checks it (hf_deit.callbacks)
        self.add_callback(LogAtLeastEvery())

    def _uses_repeated_augmentation(self) -> bool:
        return self.repeated_augmentation > 1 and self.args.world_size > 1

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, PositionSeededDataset):  # augmentation seeded by position: resumes exactly
            return PositionSeededSampler(self._get_train_sampler(dataset.dataset), seed=self.args.seed)
        if not self._uses_repeated_augmentation():
            return super()._get_train_sampler(dataset)
        from .data import RepeatedAugmentationSampler

        return RepeatedAugmentationSampler(
            dataset,
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
            seed=self.args.seed,
            num_repeats=self.repeated_augmentation,
        )

    def get_train_dataloader(self):
        dataloader = self._seeded_train_dataloader()
        if self._uses_repeated_augmentation():
            # The sampler already gives each process its own share; the shard wrapper that `accelerator.prepare`
            # adds would split that share again and drop samples. Make it a pass-through, as Trainer does for its
            # own rank-aware samplers.
            batch_sampler = getattr(dataloader, "batch_sampler", None)
            if batch_sampler is not None and hasattr(batch_sampler, "num_processes"):
                batch_sampler.num_processes = 1
                batch_sampler.process_index = 0
        return dataloader

    def _seeded_train_dataloader(self):
        # Map-style data: every augmentation draw seeded by its place in the epoch (hf_deit.checkpointing), so that
        # a resumed run sees the batches an uninterrupted one would. Streams keep Trainer's own loader.
        train_dataset = self.train_dataset
        streamed = isinstance(train_dataset, torch.utils.data.IterableDataset) or not hasattr(train_dataset, "__len__")
        if train_dataset is None or streamed:
            return super().get_train_dataloader()
        self.train_dataset = PositionSeededDataset(train_dataset)
        try:
            with self._collating_with(PositionSeededCollator(self.data_collator or default_data_collator)):
                return super().get_train_dataloader()
        finally:
            self.train_dataset = train_dataset

    def get_eval_dataloader(self, eval_dataset=None):
        with self._collating_with(self.eval_data_collator):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._collating_with(self.eval_data_collator):
            return super().get_test_dataloader(test_dataset)

    @contextlib.contextmanager
    def _collating_with(self, collator):
        # Trainer builds every DataLoader from `self.data_collator`; swap it only while one is built.
        training_collator = self.data_collator
        self.data_collator = collator if collator is not None else training_collator
        try:
            yield
        finally:
            self.data_collator = training_collator

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return [name for name in super().get_decay_parameter_names(model) if not _NO_DECAY_PARAMETER.search(name)]

    # ---- reliability: non-finite losses, atomic checkpoints (hf_deit.callbacks, hf_deit.checkpointing) ----

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # the step's last micro-batch: checked before optimizer.step()
            self.loss_guard.check(self.state.global_step + 1, self.accelerator)
        return loss

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        except NonFiniteLossError as error:
            # The bad step never reached the optimizer: save the last good state, then stop loudly.
            raise error.with_checkpoint(self._save_checkpoint(self.model, trial=None)) from None

    def _save_checkpoint(self, model, trial):
        return save_checkpoint_atomically(self, super()._save_checkpoint, model, trial)


class ClassifierTrainer(DeiTTrainerBase):
    """Trains a single-head image classifier (a CNN teacher, for instance) with the DeiT data recipe: cross-entropy
    on mixup/cutmix soft targets, or on class ids with label smoothing.

    transformers' own classification loss would read float targets as multi-label and use a sigmoid loss.
    """

    def __init__(self, *args, label_smoothing: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_smoothing = label_smoothing

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(pixel_values=inputs["pixel_values"])
        with torch.autocast(device_type=outputs.logits.device.type, enabled=False):
            loss = classification_loss(outputs.logits.float(), inputs["labels"], self.label_smoothing)
        if model.training:
            self.loss_guard.observe(loss.detach()[None], ("loss",))
        return (loss, outputs) if return_outputs else loss


class DistillationTrainer(DeiTTrainerBase):
    """Trains a distilled DeiT (any model whose output has `cls_logits` and `distillation_logits`) from labels and a
    teacher, as DeiT's `DistillationLoss` does.

    Args (beyond `Trainer`'s):
        teacher: an image classifier as a module, a local folder or a Hub id (see `hf_deit.teacher.load_teacher`).
            Optional for `distillation_type="none"`; when given there it is used for evaluation metrics only.
        distillation_type: `"none"`, `"soft"` or `"hard"` (see `hf_deit.losses`).
        distillation_alpha, distillation_tau, label_smoothing: the loss's weights (paper: 0.5, 1.0, 0.1).
        student_mean, student_std: the normalisation of the student's batches; read from `processing_class` when
            not given. Needed to re-normalise the batch for a teacher trained with another normalisation.
        teacher_processor: the teacher's image processor, when not saved beside the teacher.
        trust_remote_code: passed on when the teacher is loaded by name.
        attention_distillation_weight: weight of the attention-map term (0 = off; `hf_deit.losses.attention_map_loss`)
            added to the loss: the student's `attention_distillation_token` ("cls", "dist" or "both": the mean of the
            two terms) attention over patches in `attention_distillation_layers` (mean over heads and layers) against
            the teacher's map (`hf_deit.attention_maps.teacher_forward`), compared with `attention_distillation_loss`
            ("kl" or "mse"). Only those student blocks compute attention weights; the others keep their backend.
        feature_distillation_weight: weight of the feature term (0 = off; `hf_deit.feature_distillation`): the
            student's `feature_distillation_token` features ("dist", "cls" or "patches") through a learnable
            projection against the teacher's pooled pre-logits features, with `feature_distillation_loss`
            ("cosine" or "mse"). The projection (`self.feature_projection`) is trained with the student by the same
            optimizer, clipped with it and not part of the model: `save_pretrained` never holds it; each checkpoint
            saves it beside the optimizer state (`feature_projection.safetensors`), so a resumed run continues it.
        feature_map_distillation_weight: weight of the feature-map term (0 = off; None: 1 for images of at most 64
            px distilled from a CNN teacher, else 0; locality guidance,
            `hf_deit.feature_distillation.feature_map_distillation_loss`): the patch tokens after each block in
            `feature_map_distillation_layers`, through a learnable per-token projection, imitate the CNN teacher's
            stage output whose grid is nearest the student's patch grid, position by position. Its projections
            (`self.feature_map_projection`) are handled like the feature projection (optimizer, clipping, checkpoints).
        teacher_image_size: the resolution the teacher sees. None (default): its own preprocessing's size, the batch
            resized to it when the student's differs; "student": the student's batch as it is, as the paper fine-tunes
            at 384 with the teacher at the new resolution (a CNN takes any size); or an int or (height, width).
        pseudo_label_threshold: unlabelled examples (label -1, `labeled` mask from the collator) learn on the class
            head from the teacher's prediction when its probability reaches this (0 = always); see `hf_deit.losses`.

    The extra terms are training terms: evaluation losses stay the `none`/`soft`/`hard` loss, comparable across runs.
    Teacher logits, map and features come from one teacher forward pass.

    The teacher stays in eval mode without gradients on the accelerator's device, runs under the accelerator's
    autocast, and is never handed to `accelerator.prepare` (DDP would reject a module without trainable parameters,
    and it needs no gradient synchronisation).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args=None,
        *trainer_args,
        teacher: "str | nn.Module | None" = None,
        distillation_type: DistillationType = "hard",
        distillation_alpha: float = 0.5,
        distillation_tau: float = 1.0,
        label_smoothing: float = 0.1,
        student_mean=None,
        student_std=None,
        teacher_processor=None,
        trust_remote_code: bool = False,
        attention_distillation_weight: float = 0.0,
        attention_distillation_layers: Sequence[int] = (-1,),
        attention_distillation_token: str = "dist",
        attention_distillation_loss: str = "kl",
        feature_distillation_weight: float = 0.0,
        feature_distillation_loss: str = "cosine",
        feature_distillation_token: str = "dist",
        feature_map_distillation_weight: float | None = None,
        feature_map_distillation_layers: Sequence[int] = (0,),
        pseudo_label_threshold: float = 0.0,
        teacher_image_size: "int | Sequence[int] | str | None" = None,
        **trainer_kwargs,
    ):
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.distillation_loss = DistillationLoss(
            distillation_type, distillation_alpha, distillation_tau, label_smoothing, pseudo_label_threshold
        )
        self._check_extra_terms(
            teacher, attention_distillation_weight, attention_distillation_token, attention_distillation_loss,
            feature_distillation_weight, feature_distillation_loss, feature_distillation_token,
        )  # fmt: skip
        self.attention_distillation_weight = attention_distillation_weight
        self.attention_distillation_layers = list(attention_distillation_layers)
        self.attention_distillation_token = attention_distillation_token
        self.attention_distillation_loss = attention_distillation_loss
        self.feature_distillation_weight = feature_distillation_weight
        self.feature_distillation_loss = feature_distillation_loss
        self.feature_distillation_token = feature_distillation_token
        if feature_map_distillation_weight is not None and feature_map_distillation_weight < 0:
            raise ValueError("feature_map_distillation_weight must be >= 0.")
        if (feature_map_distillation_weight or 0) > 0 and teacher is None:
            raise ValueError("Feature-map distillation learns from a teacher: pass `teacher=`.")
        self.feature_map_distillation_weight = feature_map_distillation_weight if teacher is not None else 0.0
        depth = self.model.config.num_hidden_layers
        for index in feature_map_distillation_layers:
            if not -depth <= index < depth:
                raise ValueError(f"feature_map_distillation_layers has {index}, but the student has {depth} blocks.")
        self.feature_map_distillation_layers = sorted({index % depth for index in feature_map_distillation_layers})
        self.feature_projection = None
        self.feature_map_projection = None
        self._feature_map_stage = None  # the teacher stage each distilled block imitates
        if teacher is None and self.distillation_loss.needs_teacher:
            raise ValueError(f"distillation_type={distillation_type!r} needs a teacher: pass `teacher=` (a model, "
                             "a folder or a Hub id), or use distillation_type='none'.")
        self.teacher = None
        self.teacher_name = None
        self.teacher_label_order = None
        self._loss_terms_sum = None  # running sums of (loss_cls, loss_distillation) since the last log
        self._loss_terms_count = 0
        if teacher is not None:
            self._set_teacher(
                teacher, student_mean, student_std, teacher_processor, trust_remote_code, teacher_image_size
            )
            self._set_extra_terms()
        self._loss_term_names = ("loss_cls", "loss_distillation")
        self._loss_term_names += ("loss_attention",) if attention_distillation_weight > 0 else ()
        self._loss_term_names += ("loss_feature",) if feature_distillation_weight > 0 else ()
        self._loss_term_names += ("loss_feature_map",) if self.feature_map_distillation_weight > 0 else ()

    @staticmethod
    def _check_extra_terms(teacher, attention_weight, attention_token, attention_loss, feature_weight, feature_loss,
                           feature_token) -> None:  # fmt: skip
        if attention_weight < 0 or feature_weight < 0:
            raise ValueError("attention_distillation_weight and feature_distillation_weight must be >= 0.")
        if (attention_weight > 0 or feature_weight > 0) and teacher is None:
            raise ValueError("Attention and feature distillation learn from a teacher: pass `teacher=`.")
        if attention_token not in ("cls", "dist", "both"):
            raise ValueError(f"attention_distillation_token must be 'cls', 'dist' or 'both', got {attention_token!r}.")
        if attention_loss not in ATTENTION_MAP_LOSSES:
            raise ValueError(f"attention_distillation_loss must be one of {ATTENTION_MAP_LOSSES}, got {attention_loss!r}.")
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_distillation_loss must be one of {FEATURE_LOSSES}, got {feature_loss!r}.")
        if feature_token not in FEATURE_TOKENS:
            raise ValueError(f"feature_distillation_token must be one of {FEATURE_TOKENS}, got {feature_token!r}.")

    def _set_extra_terms(self) -> None:
        module = self.teacher.teacher
        if self.attention_distillation_weight > 0:
            prepare_teacher_for_maps(module)
        if self.feature_distillation_weight > 0:
            teacher_size = classifier_layer(module, getattr(getattr(module, "config", None), "num_labels", None))
            projection = FeatureProjection(self.model.config.hidden_size, teacher_size.in_features)
            self.feature_projection = projection.to(self.accelerator.device)
        if self.feature_map_distillation_weight is None:
            self.feature_map_distillation_weight = self._default_feature_map_weight()
        if self.feature_map_distillation_weight > 0:
            self._set_feature_map_projection()
        if self._projections():
            self.add_callback(_ZeroProjectionGradients(self))

    def _default_feature_map_weight(self) -> float:
        """On (weight 1) for small images (at most 64 px) distilled from a CNN, the recipe that made distillation pay
        off on the embedded digits (README, scripts/experiment_recipe.py); off otherwise."""
        from .data import SMALL_IMAGE_MAX_SIZE

        size = max(self._probe_input().shape[-2:])
        if not self.distillation_loss.needs_teacher or size > SMALL_IMAGE_MAX_SIZE:
            return 0.0
        if getattr(self.teacher.teacher, "config", None) is None:  # a plain module: no hidden states to ask for
            return 0.0
        try:
            self.teacher_outputs(self._probe_input(), attention_map=False, features=False, stage_maps=True)
        except ValueError:  # not a CNN: no spatial stage outputs to imitate
            return 0.0
        logger.info("Feature-map distillation on (weight 1): a CNN teacher and %d px images. "
                    "--feature_map_distillation_weight 0 turns it off.", size)
        return 1.0

    def _set_feature_map_projection(self) -> None:
        # One teacher pass at the student's input size tells which stage matches the patch grid, and its width.
        probe = self._probe_input()
        stage_maps = self.teacher_outputs(probe, attention_map=False, features=False, stage_maps=True).stage_maps
        self._feature_map_stage = nearest_stage(stage_maps, self._student_grid(probe))
        channels = stage_maps[self._feature_map_stage].shape[1]
        hidden_size = self.model.config.hidden_size
        projections = nn.ModuleList(FeatureProjection(hidden_size, channels) for _ in self.feature_map_distillation_layers)
        self.feature_map_projection = projections.to(self.accelerator.device)

    def _probe_input(self) -> torch.Tensor:
        """One blank image at the student's input size."""
        config = self.model.config
        size = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
        return torch.zeros(1, config.num_channels, *size, device=self.accelerator.device)

    def _student_grid(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        patch_size = self.accelerator.unwrap_model(self.model).config.patch_size
        patch_size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        return pixel_values.shape[-2] // patch_size[0], pixel_values.shape[-1] // patch_size[1]

    def _projections(self) -> list[nn.Module]:
        """The trainable modules outside the model: trained, clipped and checkpointed with it."""
        return [module for module in (self.feature_projection, self.feature_map_projection) if module is not None]

    def create_optimizer(self, model=None):
        """Trainer's optimizer, plus a parameter group for the feature projection (which is not in the model)."""
        optimizer = super().create_optimizer(model)
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for projection in self._projections():
            if id(next(projection.parameters())) in known:
                continue
            decay = [p for name, p in projection.named_parameters() if not name.endswith("bias")]
            no_decay = [p for name, p in projection.named_parameters() if name.endswith("bias")]
            optimizer.add_param_group({"params": decay, "weight_decay": self.args.weight_decay})
            optimizer.add_param_group({"params": no_decay, "weight_decay": 0.0})
        return optimizer

    # ---- the feature projection lives outside the model: its gradients, clipping and checkpoints ----

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._projections() and self.accelerator.sync_gradients and self.accelerator.num_processes > 1:
            # Outside the DDP-wrapped model, so averaged over processes here, as DDP does for the model, and before
            # Trainer clips the step's gradients.
            for parameter in (p for projection in self._projections() for p in projection.parameters()):
                if parameter.grad is not None:
                    parameter.grad = self.accelerator.reduce(parameter.grad, reduction="mean")
        return loss

    def _clip_grad_norm(self, model):
        if not self._projections():
            return super()._clip_grad_norm(model)
        # One norm over everything the optimizer updates, as if the projections were part of the model.
        parameters = [*model.parameters(), *(p for projection in self._projections() for p in projection.parameters())]
        return self.accelerator.clip_grad_norm_(parameters, self.args.max_grad_norm)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            for name, projection in self._named_projections():
                save_file(projection.state_dict(), os.path.join(output_dir, name))

    def _named_projections(self) -> list[tuple[str, nn.Module]]:
        named = ((FEATURE_PROJECTION_NAME, self.feature_projection), (FEATURE_MAP_PROJECTION_NAME, self.feature_map_projection))
        return [(name, module) for name, module in named if module is not None]

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        flags = {FEATURE_PROJECTION_NAME: "--feature_distillation_weight",
                 FEATURE_MAP_PROJECTION_NAME: "--feature_map_distillation_weight and layers"}
        for name, projection in self._named_projections():
            path = os.path.join(checkpoint, name)
            if not os.path.isfile(path):
                raise ValueError(f"{checkpoint} has no {name}: it was saved by a run without that distillation term. "
                                 f"Resume with the same {flags[name]}, or start a new run.")
            projection.load_state_dict(load_file(path, device=str(self.accelerator.device)))

    def _set_teacher(self, teacher, student_mean, student_std, teacher_processor, trust_remote_code,
                     teacher_image_size=None) -> None:  # fmt: skip
        module = load_teacher(teacher, trust_remote_code=trust_remote_code)
        teacher_config = getattr(module, "config", None)
        self.teacher_name = teacher if isinstance(teacher, str) else getattr(teacher_config, "_name_or_path", None)
        self.teacher_name = self.teacher_name or type(module).__name__
        student_config = self.model.config
        if teacher_config is not None and hasattr(teacher_config, "id2label"):
            self.teacher_label_order = check_label_space(student_config, teacher_config)
        if student_mean is None or student_std is None:
            processor = getattr(self, "processing_class", None)
            student_mean = getattr(processor, "image_mean", None) if student_mean is None else student_mean
            student_std = getattr(processor, "image_std", None) if student_std is None else student_std
        expected = teacher_preprocessing(teacher if isinstance(teacher, str) else module, teacher_processor, module)
        if teacher_image_size is not None:
            expected.image_size = _teacher_input_size(teacher_image_size)
        if expected.num_channels is None and teacher_config is not None:
            expected.num_channels = getattr(teacher_config, "num_channels", None)
        student_channels = getattr(student_config, "num_channels", None)
        if expected.num_channels is not None and student_channels is not None and expected.num_channels != student_channels:
            raise ValueError(
                f"The teacher expects {expected.num_channels}-channel images, the student {student_channels}. "
                "Use a teacher trained on the same kind of images."
            )
        device = self.accelerator.device
        self.teacher_input = TeacherInputAdapter.from_preprocessing(expected, student_mean, student_std).to(device)
        self.teacher = TeacherLogits(module).to(device).eval().requires_grad_(False)
        # With --torch_compile the teacher's logits pass is compiled too, with the same backend and mode as the student
        # (the map/feature pass, which reads forward hooks, stays eager).
        self._teacher_logits_call = self.teacher
        if self.args.torch_compile:
            self._teacher_logits_call = torch.compile(
                self.teacher, backend=self.args.torch_compile_backend or "inductor", mode=self.args.torch_compile_mode
            )
        if self.teacher_label_order is not None:
            self.teacher_label_order = self.teacher_label_order.to(device)

    # ---- forward passes and loss ----

    @torch.no_grad()
    def teacher_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's batch, in the student's class order."""
        if self.teacher.training:  # nothing should switch it, but a stray `.train()` must not change its outputs
            self.teacher.eval()
        with self.accelerator.autocast():
            logits = self._teacher_logits_call(self.teacher_input(pixel_values))
        if self.teacher_label_order is not None:
            logits = logits.index_select(1, self.teacher_label_order)
        return logits

    @torch.no_grad()
    def teacher_outputs(
        self, pixel_values: torch.Tensor, attention_map: bool, features: bool, stage_maps: bool = False
    ) -> TeacherForwardOutput:
        """`teacher_logits`, plus the teacher's spatial map, pooled features and/or stage outputs, from the same
        forward pass."""
        if self.teacher.training:
            self.teacher.eval()
        with self.accelerator.autocast():
            output = teacher_forward(
                self.teacher.teacher, self.teacher_input(pixel_values), attention_map, features, stage_maps=stage_maps
            )
        if self.teacher_label_order is not None:
            output.logits = output.logits.index_select(1, self.teacher_label_order)
        return output

    def _forward(self, model, inputs, with_teacher: bool):
        outputs, teacher, _, _, _ = self._distillation_forward(model, inputs, with_teacher, with_extra_terms=False)
        return outputs, (teacher.logits if teacher is not None else None)

    def _distillation_forward(self, model, inputs, with_teacher: bool, with_extra_terms: bool):
        """Student and teacher forward passes: (student outputs, TeacherForwardOutput or None, student maps by token,
        student features, student patch tokens by distilled block). Maps, features and patch tokens are computed only
        `with_extra_terms` and when their weight is set."""
        student_inputs = {name: value for name, value in inputs.items() if name not in ("labels", "labeled")}
        want_maps = with_extra_terms and self.attention_distillation_weight > 0
        want_features = with_extra_terms and self.feature_distillation_weight > 0
        want_stage_maps = with_extra_terms and self.feature_map_distillation_weight > 0
        unwrapped = self.accelerator.unwrap_model(model)
        if want_maps:
            student_inputs["attention_layers"] = self.attention_distillation_layers
        head = student_head(unwrapped, self.feature_distillation_token) if want_features else None
        if want_features and head is None:  # patch-mean features need the last block's full output
            student_inputs["output_hidden_states"] = True
        depth = unwrapped.config.num_hidden_layers
        if want_stage_maps and depth - 1 in self.feature_map_distillation_layers:
            student_inputs["output_hidden_states"] = True  # the last block then computes every token's row
        blocks = [unwrapped.deit.layers[index] for index in self.feature_map_distillation_layers] if want_stage_maps else []
        with capture_input(head) if head is not None else contextlib.nullcontext({}) as captured, \
                capture_outputs(blocks) as block_outputs:  # fmt: skip
            outputs = model(**student_inputs)
        if getattr(outputs, "distillation_logits", None) is None:
            raise ValueError(
                f"{type(model).__name__} returned no `distillation_logits`: DistillationTrainer trains models with a "
                "class head and a distillation head, such as DistilledDeiTForImageClassification."
            )
        teacher = (
            self.teacher_outputs(inputs["pixel_values"], want_maps, want_features, want_stage_maps)
            if with_teacher else None
        )  # fmt: skip
        if teacher is not None and teacher.logits.shape[-1] != outputs.logits.shape[-1]:
            raise ValueError(
                f"The teacher returned {teacher.logits.shape[-1]} logits per image, the student "
                f"{outputs.logits.shape[-1]}: they must predict the same classes."
            )
        student_maps, features = None, None
        if want_maps:
            pixel_values = inputs["pixel_values"]
            patch_size = unwrapped.config.patch_size
            patch_size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
            num_patches = outputs.attentions[0].shape[-1] - 2
            grid = grid_for(num_patches, pixel_values.shape[-2:], patch_size)
            tokens = {"cls": (CLS_TOKEN,), "dist": (DISTILLATION_TOKEN,), "both": (CLS_TOKEN, DISTILLATION_TOKEN)}
            student_maps = [
                token_attention_map(outputs.attentions, grid, token, num_prefix_tokens=2)
                for token in tokens[self.attention_distillation_token]
            ]
        if want_features:
            if head is not None:
                features = captured["input"]
            else:
                features = patch_mean_features(outputs.hidden_states[-1], unwrapped.deit.layernorm)
        patch_tokens = [states[0][:, 2:] for states in block_outputs] if want_stage_maps else None
        return outputs, teacher, student_maps, features, patch_tokens

    def _extra_terms(self, teacher: TeacherForwardOutput, student_maps, student_features, patch_tokens, grid):
        """The attention-map, feature and feature-map terms that are switched on, unweighted, in that order."""
        terms = []
        if student_maps is not None:
            losses = [attention_map_loss(m, teacher.attention_map, self.attention_distillation_loss) for m in student_maps]
            terms.append(torch.stack(losses).mean())
        if student_features is not None:
            projected = self.feature_projection(student_features)
            terms.append(feature_distillation_loss(projected, teacher.features, self.feature_distillation_loss))
        if patch_tokens is not None:
            teacher_map = teacher.stage_maps[self._feature_map_stage]
            losses = [
                feature_map_distillation_loss(projection(tokens), teacher_map, grid)
                for projection, tokens in zip(self.feature_map_projection, patch_tokens)
            ]
            terms.append(torch.stack(losses).mean())
        return terms

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The teacher runs only when the loss uses it, or in evaluation (for agreement metrics) when there is one.
        # Unlabelled examples (a `labeled` mask from the collator) take their class targets from the teacher.
        with_teacher = self.teacher is not None and (
            self.distillation_loss.needs_teacher or not model.training or "labeled" in inputs
        )
        outputs, teacher, student_maps, student_features, patch_tokens = self._distillation_forward(
            model, inputs, with_teacher, with_extra_terms=model.training
        )
        teacher_logits = teacher.logits if teacher is not None else None
        terms = self.distillation_loss(
            outputs.cls_logits, outputs.distillation_logits, inputs["labels"], teacher_logits, inputs.get("labeled")
        )
        loss = terms.loss
        extra_terms = []
        if model.training:
            grid = self._student_grid(inputs["pixel_values"])
            extra_terms = self._extra_terms(teacher, student_maps, student_features, patch_tokens, grid)
        weights = (self.attention_distillation_weight, self.feature_distillation_weight, self.feature_map_distillation_weight)
        weights = [weight for weight in weights if weight > 0]
        for weight, term in zip(weights, extra_terms):
            loss = loss + weight * term
        if model.training:
            # Summed on the device and read once per logging window: no host sync per step.
            step_terms = torch.stack([term.detach() for term in (terms.cls, terms.distillation, *extra_terms)])
            self._loss_terms_sum = step_terms if self._loss_terms_sum is None else self._loss_terms_sum + step_terms
            self._loss_terms_count += 1
            self.loss_guard.observe(step_terms, self._loss_term_names)
        if return_outputs:
            return loss, self._prediction_outputs(outputs, teacher_logits)
        return loss

    @staticmethod
    def _prediction_outputs(outputs, teacher_logits) -> tuple[torch.Tensor, ...]:
        predictions = (outputs.logits, outputs.cls_logits, outputs.distillation_logits)
        return predictions if teacher_logits is None else (*predictions, teacher_logits)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Returns `(loss, (logits, cls_logits, distillation_logits[, teacher_logits]), labels)`: the tuple that
        `make_compute_metrics` reads."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            if labels is not None:
                loss, predictions = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.detach()
            else:
                loss = None
                predictions = self._prediction_outputs(*self._forward(model, inputs, self.teacher is not None))
        if prediction_loss_only:
            return loss, None, None
        return loss, tuple(p.detach() for p in predictions), labels

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        metrics = super().evaluate(*args, **kwargs)
        # Early in training heads often give every image the same class; judge them once a quarter of it is done.
        settled = not self.state.max_steps or self.state.global_step >= self.state.max_steps / 4
        if self.is_world_process_zero() and settled:
            prefix = kwargs.get("metric_key_prefix", "eval") + "_"
            dataset = args[0] if args else kwargs.get("eval_dataset")
            dataset = self.eval_dataset if dataset is None else dataset
            num_examples = len(dataset) if hasattr(dataset, "__len__") else None
            for warning in head_warnings(metrics, self.model.config.num_labels, prefix, num_examples):
                logger.warning(warning)
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs (those with "loss") get the mean loss terms over the same window, averaged over processes.
        if "loss" in logs and self._loss_terms_count:
            mean_terms = self._loss_terms_sum / self._loss_terms_count
            if self.accelerator.num_processes > 1:
                mean_terms = self.accelerator.reduce(mean_terms, reduction="mean")
            logs.update({name: round(value, 4) for name, value in zip(self._loss_term_names, mean_terms.tolist())})
            self._loss_terms_sum, self._loss_terms_count = None, 0
        super().log(logs, start_time)

    # ---- model card ----

    def create_model_card(self, model_name: str | None = None, dataset: "str | list[str] | None" = None, **kwargs):
        """Writes README.md in `output_dir` from hf_deit's card template (`hf_deit.card.write_model_card`)."""
        if not self.is_world_process_zero():
            return
        from .card import final_train_loss, write_model_card

        eval_results = {}
        for entry in self.state.log_history:  # the latest evaluation wins
            if any(key.startswith("eval_") for key in entry):
                eval_results = {
                    key.removeprefix("eval_"): float(value)
                    for key, value in entry.items()
                    if key.startswith("eval_") and isinstance(value, (int, float)) and not _NOT_EVAL_RESULTS.search(key)
                }
        if isinstance(dataset, list):
            dataset = dataset[0] if dataset else None
        args = self.args
        hyperparameters = {
            "learning_rate": args.learning_rate,
            "train_batch_size": args.per_device_train_batch_size,
            "eval_batch_size": args.per_device_eval_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "total_train_batch_size": args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * max(self.accelerator.num_processes, 1),
            "num_processes": self.accelerator.num_processes,
            "optimizer": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
            "weight_decay": args.weight_decay,
            "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "warmup_steps": args.warmup_steps,
            "num_epochs": args.num_train_epochs if args.max_steps <= 0 else None,
            "max_steps": args.max_steps if args.max_steps > 0 else None,
            "label_smoothing": self.distillation_loss.label_smoothing,
            "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
            "seed": args.seed,
        }
        kwargs.setdefault("final_train_loss", final_train_loss(self.state.log_history))
        loss = self.distillation_loss
        write_model_card(
            output_dir=args.output_dir,
            model_name=model_name or os.path.basename(os.path.normpath(args.output_dir)),
            eval_results=eval_results,
            dataset_name=dataset,
            teacher_name=self.teacher_name if loss.needs_teacher else None,
            distillation_type=loss.distillation_type,
            distillation_alpha=loss.alpha,
            distillation_tau=loss.tau,
            hyperparameters={key: value for key, value in hyperparameters.items() if value is not None},
            repo_id=args.hub_model_id,
            config=self.model.config,
            **{key: value for key, value in kwargs.items() if value is not None},
        )


class _ZeroProjectionGradients(TrainerCallback):
    """Trainer zeroes the model's gradients after each optimizer step; the feature projection is outside the model, so
    its gradients are zeroed here (else they would add up over the whole run)."""

    def __init__(self, trainer: "DistillationTrainer"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        for projection in self.trainer._projections():
            projection.zero_grad(set_to_none=True)


# ---- evaluation metrics ----

_HEADS = (("", 0), ("cls_", 1), ("distillation_", 2))


def _ranked(logits: np.ndarray, k: int) -> np.ndarray:
    """The k best class indices per row, best first."""
    if k == 1:
        return logits.argmax(axis=-1)[:, None]
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    order = np.take_along_axis(-logits, top, axis=-1).argsort(axis=-1, kind="stable")
    return np.take_along_axis(top, order, axis=-1)


def make_compute_metrics(top_k: int = 5) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for `DistillationTrainer`: top-1 (and top-`top_k` when there are more than `top_k` classes)
    of the averaged output (`accuracy`, `top5_accuracy`), the class head (`cls_accuracy`, `cls_top5_accuracy`) and the
    distillation head (`distillation_accuracy`, ...); with teacher logits, `teacher_accuracy` and
    `teacher_agreement` (how often the averaged output's top-1 is the teacher's); for each head, the share of the
    images its most frequent class takes (`cls_majority_share`, `distillation_majority_share`: near 1 for a head
    that collapsed onto one class). Accuracies are computed with the `evaluate` metric module shipped in
    `hf_deit.metrics`."""
    import evaluate

    from .metrics import TOP_K_ACCURACY_PATH

    metric = evaluate.load(TOP_K_ACCURACY_PATH)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        outputs = prediction.predictions
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        labels = np.asarray(prediction.label_ids)
        if labels.ndim == 2:  # soft targets: the most probable class is the reference
            labels = labels.argmax(axis=-1)
        num_classes = outputs[0].shape[-1]
        k = top_k if num_classes > top_k else 1
        results = {}
        for prefix, index in _HEADS:
            if index < len(outputs):
                head = metric.compute(predictions=_ranked(outputs[index], k), references=labels)
                results.update({prefix + name: value for name, value in head.items()})
                if prefix:  # how much of the data the head's most frequent class takes: 1.0 is a collapsed head
                    counts = np.bincount(outputs[index].argmax(axis=-1), minlength=num_classes)
                    results[prefix + "majority_share"] = float(counts.max() / max(counts.sum(), 1))
        if len(outputs) > 3:
            teacher_logits = outputs[3]
            results["teacher_accuracy"] = metric.compute(predictions=_ranked(teacher_logits, 1), references=labels)[
                "accuracy"
            ]
            results["teacher_agreement"] = metric.compute(
                predictions=_ranked(outputs[0], 1), references=teacher_logits.argmax(axis=-1)
            )["accuracy"]
        return results

    return compute_metrics
