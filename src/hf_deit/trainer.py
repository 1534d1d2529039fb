"""`DistillationTrainer`: transformers' `Trainer` with DeiT's teacher and loss, and per-head evaluation metrics.

The trainers extend `Trainer` through its public hooks: `compute_loss` (the objective; its outputs, a dict, are what
Trainer's own `prediction_step` gathers), `train` (the objective's projections join the student for the run),
`get_train_dataloader` (the samplers), `get_eval_dataloader` (views, signals), `get_decay_parameter_names`,
`create_model_card`, and callbacks (`hf_deit.callbacks`: run safety, the loss terms' means in the logs). One private
method is overridden, `_save_checkpoint`, for want of a public hook (its docstring says why; tests/test_trainer.py
pins its signature and counts the overrides).
"""

import dataclasses
import json
import logging
import math
import os
import re
from functools import partial

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint, seed_worker

from .arguments import DistillationConfig
from .callbacks import HeadCheck, LogAtLeastEvery, LossTermMeans, add_run_safety
from .checkpointing import save_checkpoint_atomically
from .data.mixup import LABELED_KEY
from .data.samplers import (
    PositionSeededCollator,
    PositionSeededDataset,
    PositionSeededSampler,
    RepeatedAugmentationSampler,
)
from .distributed import shard_on_cpu_when_asked
from .losses import LabelFallback, classification_loss
from .metrics import HEAD_FIELDS, make_compute_metrics  # noqa: F401  (also importable from here, where it used to live)
from .objective import DistillationObjective
from .preemption import shield_workers
from .run import size_run, steps_per_epoch
from .teacher import EVALUATION_EPOCH, Teacher, TeacherForwardOutput
from .teacher_check import check_teacher, eval_transform_of
from .teacher_record import RecordedTeacher

logger = logging.getLogger(__name__)

# The paper's recipe: no weight decay on the class/distillation tokens and position embeddings (Trainer's default
# already spares biases and norm weights).
_NO_DECAY_PARAMETER = re.compile(r"(?:^|\.)(cls_token|distillation_token|dist_token|position_embeddings|pos_embed)$")
# The objective's name as a submodule of the student while it trains: its projections' weights in checkpoints.
OBJECTIVE_NAME = "distillation_objective"
_NOT_EVAL_RESULTS = re.compile(r"(runtime|per_second|epoch|step)$")


def _check_objective_in_checkpoint(checkpoint: str, expected: set[str]) -> None:
    """A run whose objective has learnable parts resumes only from a checkpoint that saved those same parts."""
    for name in ("model.safetensors", "model.safetensors.index.json"):
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".json"):
            with open(path) as file:
                keys = json.load(file)["weight_map"]
        else:
            with safe_open(path, framework="pt") as file:
                keys = file.keys()
        saved = {key for key in keys if key.startswith(OBJECTIVE_NAME + ".")}
        if saved == expected:
            return
        raise ValueError(f"{checkpoint} holds other distillation projections than this run has (saved: "
                         f"{_describe_keys(saved)}; this run: {_describe_keys(expected)}): it was saved by a run with "
                         "other terms. Resume with the same --feature_distillation_weight and "
                         "--feature_map_distillation_weight and layers, or start a new run.")


def _describe_keys(keys: set[str]) -> str:
    return ", ".join(sorted(key.removeprefix(OBJECTIVE_NAME + ".") for key in keys)) or "none"


class _EvaluationViews(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], PositionSeededDataset.VIEW_KEY: (EVALUATION_EPOCH, index, index)}


class DeiTTrainerBase(Trainer):
    """What DeiT training adds to `Trainer` whatever the loss: what `args` left unset sized to the model and data
    (`hf_deit.run.size_run`, on a copy), the run-safety callbacks (`hf_deit.callbacks.add_run_safety`), evaluation
    batches collated without mixup, augmentation seeded by position and repeated augmentation across processes, and
    no weight decay on the tokens and position embeddings.

    Args (beyond `Trainer`'s; every one after `model` and `args` by keyword):
        data_collator: collates the training batches (`train_data_collator`).
        eval_data_collator: collates evaluation and prediction batches; by default the training collator without
            mixing (its `for_evaluation()`), so that metrics see real images and class ids. It becomes Trainer's
            `data_collator`, which its own evaluation and test loaders use; the training loader is built here.

    Repeated augmentation (DeiT's RASampler) follows `args.repeated_augmentation` (`DeiTTrainingArguments`; other
    `TrainingArguments` train without it): multi-process runs only, as in the official code.
    """

    # `compute_loss` returns a per-batch mean; Trainer divides it by the accumulation steps itself.
    loss_is_scaled_for_ga = False
    # Training batches carry their rows' places in the epoch ("views"), where a trainer finds recorded outputs by them.
    keeps_views = False

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None, *,
                 train_dataset=None, eval_dataset=None, eval_data_collator=None, **kwargs):  # fmt: skip
        args = size_run(args, model, train_dataset, eval_dataset)  # a sized copy: what was left unset, for this run
        super().__init__(model, args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        shard_on_cpu_when_asked(self)  # before anything is prepared (hf_deit.distributed)
        self.train_data_collator = self.data_collator
        if eval_data_collator is None and hasattr(self.data_collator, "for_evaluation"):
            eval_data_collator = self.data_collator.for_evaluation()
        self.data_collator = eval_data_collator or self.data_collator
        self.add_callback(LogAtLeastEvery())
        self.loss_guard = add_run_safety(self)  # compute_loss reports the loss terms to it (hf_deit.callbacks)

    @property
    def repeated_augmentation(self) -> int:
        return getattr(self.args, "repeated_augmentation", 1)

    def get_train_dataloader(self) -> DataLoader:
        """Trainer's training loader, built here for the order it has no setting for: a map-style training set is
        read through `PositionSeededSampler` (every augmentation draw seeded by its place in the epoch, so that a
        resumed run sees the batches an uninterrupted one would: hf_deit.data.samplers), in DeiT's repeated
        augmentation order in multi-process runs, else in a random one. Streams are read in their own order."""
        args, dataset = self.args, self.train_dataset
        if dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        loading = dict(batch_size=self._train_batch_size, num_workers=args.dataloader_num_workers,
                       pin_memory=args.dataloader_pin_memory, persistent_workers=args.dataloader_persistent_workers,
                       prefetch_factor=args.dataloader_prefetch_factor, in_order=args.dataloader_in_order,
                       multiprocessing_context=args.dataloader_multiprocessing_context)  # fmt: skip
        if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
            return self.accelerator.prepare(DataLoader(dataset, collate_fn=self.train_data_collator, **loading))
        if self.repeated_augmentation > 1 and args.world_size > 1:
            order = RepeatedAugmentationSampler.for_run(dataset, args.world_size, args.process_index, args.seed,
                                                        self.repeated_augmentation)  # fmt: skip
        else:
            order = (SequentialSampler if args.train_sampling_strategy == "sequential" else RandomSampler)(dataset)
        loader = self.accelerator.prepare(DataLoader(
            PositionSeededDataset(dataset), sampler=PositionSeededSampler(order, seed=args.seed),
            collate_fn=PositionSeededCollator(self.train_data_collator, keep_views=self.keeps_views),
            drop_last=args.dataloader_drop_last,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
            **loading,
        ))  # fmt: skip
        batches = getattr(loader, "batch_sampler", None)
        if isinstance(order, RepeatedAugmentationSampler) and hasattr(batches, "num_processes"):
            # The sampler already gives each process its own share; the shard wrapper that `accelerator.prepare`
            # adds would split that share again and drop samples. A pass-through, as Trainer makes it for its own
            # rank-aware samplers.
            batches.num_processes, batches.process_index = 1, 0
        return loader

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        """Trainer's, its workers leaving the stop signals to the training process (hf_deit.preemption); for a
        teacher that reads views (a recorded one), each image with its view, (EVALUATION_EPOCH, i, i)."""
        if self.keeps_views and not isinstance(eval_dataset, str):
            eval_dataset = _EvaluationViews(eval_dataset if eval_dataset is not None else self.eval_dataset)
        return shield_workers(super().get_eval_dataloader(eval_dataset))

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return [name for name in super().get_decay_parameter_names(model) if not _NO_DECAY_PARAMETER.search(name)]

    def _save_checkpoint(self, model, trial):
        """Writes the checkpoint atomically (hf_deit.checkpointing). Private, for want of a public hook: callbacks
        hear of a checkpoint only once it is written (`on_save`), too late to stage it, and `save_model` writes the
        weights only. Signature pinned by tests/test_trainer.py."""
        return save_checkpoint_atomically(self, super()._save_checkpoint, model, trial)


class ClassifierTrainer(DeiTTrainerBase):
    """Trains a single-head image classifier (a CNN teacher, for instance) with the DeiT data recipe: cross-entropy
    on mixup/cutmix soft targets, or on class ids with label smoothing.

    transformers' own classification loss would read float targets as multi-label and use a sigmoid loss.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(pixel_values=inputs["pixel_values"])
        with torch.autocast(device_type=outputs.logits.device.type, enabled=False):
            loss = classification_loss(outputs.logits.float(), inputs["labels"], self.args.label_smoothing_factor)
        if model.training:
            self.loss_guard.observe(loss.detach()[None], ("loss",))
        return (loss, outputs) if return_outputs else loss


class DistillationTrainer(DeiTTrainerBase):
    """Trains a distilled DeiT (any model whose output has `cls_logits` and `distillation_logits`) from labels and a
    teacher, as DeiT's `DistillationLoss` does, with the optional attention, feature and feature-map terms.

    Every setting lives in `args`, a `hf_deit.arguments.DistillationConfig`; the trainer wires three parts together:
    the student (`model`), the teacher (`hf_deit.teacher.Teacher`: loaded, checked against the student's classes and
    fed the student's batch) and the objective (`hf_deit.objective.DistillationObjective`: the loss and its terms).
    The objective's projections are attached to the student while it trains, so the Trainer's optimizer, clipping,
    DDP and checkpoints cover them; `compute_loss` is where the parts meet.

    Args (beyond `Trainer`'s):
        teacher: a `Teacher`, an image classifier as a module, a local folder or a Hub id (`Teacher.load`); default
            `args.teacher_name_or_path`. Optional for `distillation_type="none"`; given there, it is used for
            evaluation metrics (teacher accuracy and agreement) only.

    The student's normalisation (for re-normalising its batch for the teacher) is read from `processing_class`. With
    `--torch_compile` the teacher's forward pass is compiled too, with the student's backend and mode. The teacher
    stays frozen on the accelerator's device, runs under the accelerator's autocast, and is never handed to
    `accelerator.prepare` (DDP would reject a module without trainable parameters).
    """

    def __init__(self, model: nn.Module | None = None, args: DistillationConfig | None = None, *, teacher=None,
                 **trainer_kwargs):  # fmt: skip
        if args is None or not isinstance(args, DistillationConfig):
            raise TypeError("DistillationTrainer takes its settings as args=DistillationConfig(...) "
                            "(hf_deit.arguments), a TrainingArguments with the teacher and distillation fields.")
        super().__init__(model, args, **trainer_kwargs)
        args = self.args  # sized for this run (hf_deit.run.size_run)
        self.add_callback(HeadCheck())  # collapsed heads, and which head to use (hf_deit.callbacks)
        teacher = teacher if teacher is not None else args.teacher_name_or_path
        self.teacher = None
        if teacher is not None:
            processor = getattr(self, "processing_class", None)
            self.teacher = teacher if isinstance(teacher, Teacher) else Teacher.load(
                teacher, self.model.config,
                student_mean=getattr(processor, "image_mean", None), student_std=getattr(processor, "image_std", None),
                image_size=args.teacher_image_size, trust_remote_code=args.teacher_trust_remote_code,
                attention_maps=args.attention_distillation_weight > 0,
            )  # fmt: skip
            self.teacher.to(self.accelerator.device)
            if args.torch_compile:
                self.teacher.compile(backend=args.torch_compile_backend or "inductor", mode=args.torch_compile_mode)
        if args.teacher_outputs:  # its recorded outputs answer in its place; the teacher, given too, checks them
            self.teacher = RecordedTeacher(args.teacher_outputs, self.teacher)
        self.keeps_views = self.teacher is not None and self.teacher.reads_views
        if self.keeps_views:  # evaluation batches with their images' views (get_eval_dataloader)
            self.data_collator = PositionSeededCollator(self.data_collator, keep_views=True)
        self.teacher_name = self.teacher.name if self.teacher is not None else None
        self.objective = DistillationObjective.build(args, self.model, self.teacher)
        self.loss_terms = LossTermMeans()  # compute_loss reports the terms; each training log gets their means
        # First: the trackers and the progress bar, which transformers registers before any callback of ours, send
        # and print the logs that it completes.
        self.callback_handler.callbacks.insert(0, self.loss_terms)

    @property
    def distillation_loss(self):
        return self.objective.loss

    # ---- the objective's projections train as part of the student ----

    @property
    def has_teacher(self) -> bool:
        return self.teacher is not None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if self.teacher is not None:
            self.teacher.check_run(self)  # before any step: a record of another run is refused
        report = self.teacher_report = self.check_teacher()
        if report and report.weak and report.num_unlabeled_images and self.args.protect_from_weak_teacher:
            self.leave_out_unlabeled_images()
        attach = any(True for _ in self.objective.parameters())
        if attach:
            checkpoint = resume_from_checkpoint
            checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint is True else checkpoint
            if checkpoint:  # its projections must be this run's
                expected = {f"{OBJECTIVE_NAME}.{key}" for key in self.objective.state_dict()}
                _check_objective_in_checkpoint(checkpoint, expected)
            self.model.add_module(OBJECTIVE_NAME, self.objective)
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if attach:
                delattr(self.model, OBJECTIVE_NAME)  # the saved model holds none of it
            self._log_label_fallback()

    # ---- is the teacher worth learning from? (hf_deit.teacher_check) ----

    def check_teacher(self):
        """Before the first step: the teacher's accuracy on the labelled training images and the evaluation images
        (evaluation transform), logged and judged (`TeacherReport`): a teacher below `args.min_teacher_accuracy` on
        either is named with its numbers and the fix, and with `args.protect_from_weak_teacher` the labels replace its
        distillation targets (and `train` leaves out the unlabelled training images it would label). Returns the
        `TeacherReport`, or None (no teacher in the loss, or no readable training set)."""
        if not self.has_teacher or not self.objective.loss.needs_teacher:
            return None
        transform = eval_transform_of(getattr(self, "processing_class", None))
        if self.teacher.report is not None:  # a teacher that cannot run on images now: the check made earlier
            report = dataclasses.replace(self.teacher.report, min_accuracy=self.args.min_teacher_accuracy)
        elif transform is None:
            logger.info("Teacher not checked before training: no image processor (processing_class) to read the "
                        "training images with.")
            return None
        else:
            names = [self.model.config.id2label[index] for index in range(self.model.config.num_labels)]
            report = check_teacher(self.teacher_logits, self.train_dataset, self.eval_dataset, transform, names,
                                   self.args.min_teacher_accuracy, device=self.accelerator.device,
                                   seed=self.args.seed)  # fmt: skip
        if report is None:
            logger.info("Teacher not checked before training: the training set is streamed or has no image and label "
                        "columns to read without augmentation.")
            return None
        protect = self.args.protect_from_weak_teacher
        if protect and report.weak:
            self.objective.loss.fallback = LabelFallback(self.args.weak_teacher_fallback)
        if self.is_world_process_zero():
            for level, text in report.findings(protect, self.args.weak_teacher_fallback):
                logger.log(level, text)
        return report

    def leave_out_unlabeled_images(self) -> None:
        """Trains on the labelled images only, for as many steps as the run was sized to with the unlabelled ones (its
        schedule, evaluations and checkpoints stay as logged): a weak teacher's labels for them are not to be trusted
        (`TeacherReport.weak`)."""
        if self.keeps_views:  # its views were recorded for every image, in the order they made
            raise ValueError("The teacher is too weak to label the unlabelled training images (see the warning "
                             "above), and its record holds their views: training on the labelled images alone needs "
                             "other views than the record's. Record it again without the unlabelled images, or keep "
                             "them with --protect_from_weak_teacher false.")
        args, dataset = self.args, self.train_dataset
        if args.max_steps <= 0:
            args.max_steps = math.ceil(args.num_train_epochs * steps_per_epoch(args, len(dataset)))
        self.train_dataset = dataset.select(np.flatnonzero(np.asarray(dataset.with_format(None)["label"]) >= 0))
        logger.info("Training on the %d labelled images only, for the %d steps sized with the unlabelled ones.",
                    len(self.train_dataset), args.max_steps)

    def _log_label_fallback(self) -> None:
        fallback = self.objective.loss.fallback
        seen, fallen_back = fallback.counts() if fallback is not None else (0, 0)
        if seen and self.is_world_process_zero():
            logger.info("The label replaced the teacher's target on %d of %d labelled training views (%.1f%%).",
                        fallen_back, seen, 100 * fallen_back / seen)

    # ---- forward passes and loss ----

    def teacher_outputs(self, pixel_values: torch.Tensor, views=None, **request) -> TeacherForwardOutput:
        """The teacher's outputs for the student's batch (`Teacher.forward`), under the accelerator's autocast."""
        with self.accelerator.autocast():
            return self.teacher(pixel_values, views=views, **request)

    def teacher_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's batch, in the student's class order."""
        return self.teacher_outputs(pixel_values).logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The teacher runs only when the loss uses it, or in evaluation (for agreement metrics) when there is one.
        # Unlabelled examples (a `labeled` mask from the collator) take their class targets from the teacher.
        views = inputs.pop("views", None)  # the rows' places, for a teacher that reads them (a recorded one)
        outputs, signals = self.objective.student_forward(model, self.accelerator.unwrap_model(model), inputs,
                                                          model.training)  # fmt: skip
        teacher = None
        if self.has_teacher and (self.objective.loss.needs_teacher or not model.training or LABELED_KEY in inputs):
            request = self.objective.teacher_request(model.training)
            teacher = self.teacher_outputs(inputs["pixel_values"], views, **request)
        result = self.objective(outputs, signals if model.training else None, inputs["labels"], teacher,
                                inputs.get(LABELED_KEY))  # fmt: skip
        if model.training:  # summed on the device, read once per log: no host sync per step
            step_terms = torch.stack([term.detach() for term in result.terms.values()])
            self.loss_terms.observe(step_terms, tuple(result.terms))
            self.loss_guard.observe(step_terms, tuple(result.terms))
        if not return_outputs:
            return result.loss
        # What evaluation gathers, in the order `make_compute_metrics` reads: Trainer's `prediction_step` keeps a
        # dict's values.
        predictions = {field: getattr(outputs, field) for field in HEAD_FIELDS}
        if teacher is not None:
            predictions["teacher_logits"] = teacher.logits
        return result.loss, predictions

    # ---- model card ----

    def create_model_card(self, model_name: str | None = None, dataset: "str | list[str] | None" = None, **kwargs):
        """Writes README.md in `output_dir` from hf_deit's card template (`hf_deit.card.write_model_card`)."""
        if not self.is_world_process_zero():
            return
        from .card import final_train_loss, training_hyperparameters, write_learning_curves, write_model_card

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
        kwargs.setdefault("final_train_loss", final_train_loss(self.state.log_history))
        model_name = model_name or os.path.basename(os.path.normpath(args.output_dir))
        kwargs.setdefault("learning_curves", write_learning_curves(args.output_dir, self.state.log_history, model_name))
        loss = self.distillation_loss
        report = getattr(self, "teacher_report", None)
        if report is not None and report.weak:  # what the distillation head learned instead of the teacher
            verdict = report.verdict(args.protect_from_weak_teacher, args.weak_teacher_fallback)
            kwargs.setdefault("teacher_check", verdict)
        write_model_card(
            output_dir=args.output_dir,
            model_name=model_name,
            eval_results=eval_results,
            dataset_name=dataset,
            teacher_name=self.teacher_name if loss.needs_teacher else None,
            distillation_type=loss.distillation_type,
            distillation_alpha=loss.alpha,
            distillation_tau=loss.tau,
            hyperparameters=training_hyperparameters(args, self.accelerator.num_processes),
            repo_id=args.hub_model_id,
            config=self.model.config,
            **{key: value for key, value in kwargs.items() if value is not None},
        )


