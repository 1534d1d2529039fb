"""The run sequence both training scripts share (`scripts/train.py`, `scripts/train_teacher.py`). Each script supplies
its own model, data and trainer between the three steps, and writes its own card:

    groups = parse_command_line(parser, argv, check)     every input checked before anything heavy, then parsed
    settings = start_run(training_args, groups, logger)  logging, seed; --output_dir checked against the settings
    ...                                                  the script's data and model
    training_args = size_run(training_args, model, ...)  what the settings left unset, sized to the model and data
    ...                                                  the script's trainer (which sizes a Python caller's too)
    metrics = train_and_evaluate(trainer, settings)      resume resolved and checked, settings recorded, train,
                                                         save, evaluate

so that the resume rule and the same-settings checks of `hf_deit.checkpointing` apply to every run.
"""

import copy
import dataclasses
import difflib
import json
import logging
import math
import os
import sys
from typing import Callable, Optional, Sequence

import pyarrow.compute
import torch
import transformers
from transformers import HfArgumentParser, Trainer, TrainerState, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from hf_deit_inputs import InputError
from hf_deit_inputs.checks import parse_config_overrides
from hf_deit_inputs.choices import EMBEDDED_DATASETS

from .arguments import DataArguments, DeiTTrainingArguments, ModelArguments
from .checkpointing import (
    check_checkpoint_settings,
    prepare_output_dir,
    record_run_settings,
    resolve_resume_checkpoint,
    run_settings,
)
from .configuration_distilled_deit import PRESET_ALIASES, PRESETS, DistilledDeiTConfig
from .precision import bf16_is_faster

logger = logging.getLogger(__name__)


# The official DeiT code's (main.py) names of flags spelled otherwise here, for the message that names ours.
DEIT_FLAG_NAMES = {"lr": "learning_rate", "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size",
                   "data_path": "train_dir", "model": "model_name_or_path", "teacher_model": "teacher_name_or_path",
                   "resume": "resume_from_checkpoint", "input_size": "image_size",
                   "smoothing": "label_smoothing_factor"}


def parse_command_line(parser: HfArgumentParser, argv: Optional[Sequence[str]], check: Optional[Callable] = None
                       ) -> tuple:
    """`check(command_line)` (an `hf_deit_inputs` check: raises `InputError` naming each fix), then the parser's
    dataclasses. `argv` None reads `sys.argv`; a single `.json` argument is a settings file. A flag (or settings key)
    that no dataclass has is an `InputError` naming the closest ones, where `HfArgumentParser` raises a bare
    ValueError."""
    command_line = sys.argv[1:] if argv is None else list(argv)
    if check is not None:
        check(command_line)
    names = [item.name for dataclass in parser.dataclass_types for item in dataclasses.fields(dataclass)]
    if len(command_line) == 1 and command_line[0].endswith(".json"):
        with open(command_line[0]) as file:
            values = json.load(file)
        unknown = [key for key in values if key not in names]
        groups = parser.parse_dict(values, allow_extra_keys=True)
    else:
        *groups, remaining = parser.parse_args_into_dataclasses(args=command_line, return_remaining_strings=True)
        unknown = [token.lstrip("-").partition("=")[0].replace("-", "_") for token in remaining if token[:1] == "-"]
        if remaining and not unknown:
            raise InputError(f"{' '.join(remaining)}: a value without its flag (--name value).")
    if unknown:
        raise InputError([f"--{name}: no such flag{_closest_flags(name, names)}." for name in unknown])
    return tuple(groups)


def _closest_flags(name: str, names: Sequence[str]) -> str:
    close = [DEIT_FLAG_NAMES[name]] if DEIT_FLAG_NAMES.get(name) in names else (
        difflib.get_close_matches(name, names, n=3, cutoff=0.6) or [known for known in names if name in known][:3])
    return f" (did you mean {' or '.join('--' + known for known in close)}?)" if close else ""


def start_run(training_args: TrainingArguments, argument_groups: Sequence, logger: logging.Logger) -> dict:
    """Logging, the seed, and the run's settings (`run_settings` of every argument group, the training arguments
    last) checked against those recorded in `--output_dir` (`prepare_output_dir`). Returns the settings."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.disable_progress_bar()  # else each checkpoint draws a "Writing model shards" bar
    set_seed(training_args.seed)
    # A run into a folder that holds one of other settings is refused (or, asked, replaced): hf_deit.checkpointing
    settings = run_settings(*argument_groups, training_args)
    prepare_output_dir(training_args.output_dir, settings, training_args.overwrite_output_dir,
                       write=training_args.should_save)  # fmt: skip
    return settings


def size_run(args: TrainingArguments, model=None, train_dataset=None, eval_dataset=None, *,
             learning_rate_at_batch_64: Optional[float] = None) -> TrainingArguments:
    """What `args` left unset (None), sized to this run's model and data, in one place, and logged: the precision
    (bf16 where it is faster, `hf_deit.precision`), then for DeiT's arguments the learning rate (the model's own
    `learning_rate_at_batch_64`, or `learning_rate_for` the batch and the data), the epochs (`epochs_for`: at least
    `min_from_scratch_steps` for a new model) and the evaluation and checkpoint cadence (`size_cadence`); no pinned
    memory without CUDA.

    Returns a sized copy; `args` itself is left as given. The trainers call it on their `args`, so a Python caller
    need not; a copy it returned is not sized again."""
    if args is None or getattr(args, "_sized", False):  # None: Trainer's own defaults
        return args
    args = copy.copy(args)
    args._sized = True
    chosen_here = getattr(args, "bf16", False) is None
    if chosen_here:  # before the accelerator, which reads it
        size_precision(args, getattr(getattr(model, "config", None), "hidden_size", None))
    logger.info("Precision: %s.", _precision_in_words(args.mixed_precision, chosen_here))
    if getattr(args, "dataloader_pin_memory", False) and not torch.cuda.is_available():
        args.dataloader_pin_memory = False  # nothing to pin for; torch would warn at every epoch
    if not isinstance(args, DeiTTrainingArguments):
        return args
    try:
        num_examples = len(train_dataset) if train_dataset is not None else None
    except TypeError:  # a stream: size unknown
        num_examples = None
    from_scratch = not getattr(model, "name_or_path", "")
    num_labelled = labelled_count(train_dataset, num_examples)
    args.learning_rate = learning_rate_for(args, num_examples, from_scratch, learning_rate_at_batch_64)
    args.num_train_epochs = epochs_for(args, num_examples, from_scratch, num_labelled)
    interval = size_cadence(args, num_examples, has_eval_dataset=eval_dataset is not None)
    labelled = f", {num_labelled} labelled" if num_labelled != num_examples else ""
    logger.info("Sized to this run (%s training images%s): learning rate %.3g, %s, evaluation %s, checkpoints %s.",
                num_examples or "?", labelled, args.learning_rate,
                f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs",
                _cadence_in_words(args.eval_strategy, interval),
                _cadence_in_words(args.save_strategy, interval))  # fmt: skip
    return args


def size_precision(args: TrainingArguments, hidden_size: Optional[int] = None) -> bool:
    """Settles `bf16` when it was left unset: off when a precision was chosen otherwise (`--fp16`, or
    `accelerate launch --mixed_precision`), else on where it is faster for this model (`hf_deit.precision`;
    `hidden_size` of a transformer, None for a CNN). Returns `bf16`."""
    if args.bf16 is None:
        if args.fp16 or args.mixed_precision != "no":
            args.bf16 = args.mixed_precision == "bf16"
        else:
            args.bf16 = bf16_is_faster(args.device, hidden_size)
            if args.bf16:
                args.mixed_precision = "bf16"
    return args.bf16


# The paper's learning rate is 5e-4 for a global batch of 512, scaled linearly with the batch.
BASE_LEARNING_RATE = 5e-4
BASE_BATCH_SIZE = 512
# A new model on a small dataset (fewer than SMALL_DATASET_SIZE images) gets at least 5e-4 at batch 64, scaled with
# the square root of the batch (AdamW's rule of thumb): the linear rule's 6e-5 at batch 64 (1.6e-5 at 16) barely moves
# a from-scratch ViT in the few hundred steps such a dataset gives (the recipe study: scripts/experiment_recipe.py,
# README).
SMALL_DATASET_SIZE = 100_000
SMALL_DATA_LEARNING_RATE = 5e-4
SMALL_DATA_BATCH_SIZE = 64


def learning_rate_for(args: DeiTTrainingArguments, num_train_examples: Optional[int] = None, from_scratch: bool = True,
                      rate_at_batch_64: Optional[float] = None) -> float:
    """The learning rate: the one given, else a model's own `rate_at_batch_64` x sqrt(global batch / 64), else sized
    to the batch and the dataset.

    The paper's linear rule, 5e-4 x global batch / 512, is for ImageNet (2,500 steps an epoch, 300 epochs) and for
    fine-tuning a trained model. A new model on fewer than 100,000 images gets at least
    5e-4 x sqrt(global batch / 64): 5e-4 at batch 64, 2.5e-4 at 16, where the linear rule gives 6e-5 and 1.6e-5.
    """
    if args.learning_rate is not None:
        return args.learning_rate
    global_batch = _global_batch_size(args)
    if rate_at_batch_64 is not None:
        return rate_at_batch_64 * math.sqrt(global_batch / SMALL_DATA_BATCH_SIZE)
    rate = BASE_LEARNING_RATE * global_batch / BASE_BATCH_SIZE
    small = num_train_examples is not None and num_train_examples < SMALL_DATASET_SIZE
    if from_scratch and small:
        rate = max(rate, SMALL_DATA_LEARNING_RATE * math.sqrt(global_batch / SMALL_DATA_BATCH_SIZE))
    return rate


def epochs_for(args: DeiTTrainingArguments, num_train_examples: Optional[int] = None, from_scratch: bool = True,
               num_labelled: Optional[int] = None) -> float:
    """The epochs: those given, else `default_epochs` (30), or as many as give a new model at least
    `min_from_scratch_steps` (300) optimizer steps on a small dataset when `max_steps` is not given either. Given
    epochs or steps that leave a new model below that minimum are kept, with a warning naming the count and the
    setting that reaches it (`short_run_warning`).

    With unlabelled images among the training images (`num_labelled` of them labelled), that minimum is counted on
    the labelled ones: the run gives each of them as many passes as the run without the unlabelled images would (a
    quarter labelled: four times the steps). Given the steps sized without them, a student with an unlabelled pool fell
    under the student alone on a folder of textures, and passed it given these (docs/results.md)."""
    epochs = float(args.default_epochs) if args.num_train_epochs is None else args.num_train_epochs
    if not from_scratch or not num_train_examples:
        return epochs
    if args.num_train_epochs is not None or args.max_steps > 0:
        warning = short_run_warning(args, num_train_examples, epochs)
        if warning:
            logger.warning(warning)
        return epochs
    needed = math.ceil(args.min_from_scratch_steps / steps_per_epoch(args, num_labelled or num_train_examples))
    return float(max(args.default_epochs, needed))


def labelled_count(dataset, num_examples: Optional[int]) -> Optional[int]:
    """The images of `dataset` that have a label (an unlabelled one, label -1, is labelled by the teacher), read from
    the label column alone; `num_examples` where there is no such column to read (not a `datasets.Dataset`)."""
    if num_examples is None:  # a stream: nothing is sized to its length
        return None
    try:
        labels = dataset.with_format("arrow")["label"]
    except (AttributeError, KeyError, ValueError):
        return num_examples
    return pyarrow.compute.sum(pyarrow.compute.greater_equal(labels, 0)).as_py() or 0


def short_run_warning(args: DeiTTrainingArguments, num_train_examples: int,
                      epochs: Optional[float] = None) -> Optional[str]:
    """A warning when the epochs (`epochs`, default the given ones) or steps asked for give a new model fewer
    optimizer steps than `min_from_scratch_steps`, or None. Says the count and the setting that reaches the minimum."""
    per_epoch = steps_per_epoch(args, num_train_examples)
    epochs = args.num_train_epochs if epochs is None else epochs
    if args.max_steps > 0:
        steps, asked = args.max_steps, f"--max_steps {args.max_steps}"
    else:
        steps = math.ceil(epochs * per_epoch)
        asked = f"--num_train_epochs {epochs:g} ({per_epoch} step(s) an epoch)"
    if steps >= args.min_from_scratch_steps:
        return None
    needed = math.ceil(args.min_from_scratch_steps / per_epoch)
    return (f"{asked} gives a new model {steps} optimizer steps on {num_train_examples} images (global batch "
            f"{_global_batch_size(args)}): far too few to learn; a model trained from scratch needs at least "
            f"{args.min_from_scratch_steps}. Pass --num_train_epochs {needed} (or --max_steps "
            f"{args.min_from_scratch_steps}), or leave both out: the default sizes the schedule to the data.")


def steps_per_epoch(args: TrainingArguments, num_train_examples: int) -> int:
    batches = math.ceil(num_train_examples / (args.per_device_train_batch_size * args.world_size))
    return max(1, math.ceil(batches / args.gradient_accumulation_steps))


def _global_batch_size(args: TrainingArguments) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


# A run that would evaluate and save at more epochs than this, with the cadence left unset, does so every N steps
# instead, about CADENCE_TARGET times: a folder of 90 images is 2 steps an epoch, so its 300 steps were 150
# evaluations and 150 checkpoints (64 MB each for a DeiT-Tiny), more time than the training on 2 CPU cores.
MAX_EPOCH_CADENCE = 30
CADENCE_TARGET = 20


def size_cadence(args: DeiTTrainingArguments, num_train_examples: Optional[int],
                 has_eval_dataset: bool = True) -> Optional[int]:
    """Evaluation and checkpoints left unset (None), sized to the run. Evaluation is every epoch with an evaluation
    set, else none (as `TrainingArguments`' own default), so that a trainer given only a training set trains;
    checkpoints are every epoch. `load_best_model_at_end` left unset (the teacher's) is on when evaluation and saving
    happen at the same cadence, keeping the best checkpoint by accuracy.

    Then the cadence follows the run's length, not the epoch: in a run of more than MAX_EPOCH_CADENCE epochs, the
    unset ones become every ceil(steps / CADENCE_TARGET) steps (the last step is evaluated and saved too: the
    Trainer's end-of-run rule). With `load_best_model_at_end` both must be unset, and move together, so that each
    evaluation has its checkpoint and the best one is still kept; else nothing changes. Returns the interval in steps,
    or None when the cadence stays."""
    evaluate, save = args.eval_strategy is None and has_eval_dataset, args.save_strategy is None
    if args.eval_strategy is None:
        args.eval_strategy, args.do_eval = IntervalStrategy.EPOCH if evaluate else IntervalStrategy.NO, evaluate
    if save:
        args.save_strategy = SaveStrategy.EPOCH
    if args.load_best_model_at_end is None:
        evaluating, saving = (getattr(value, "value", value) for value in (args.eval_strategy, args.save_strategy))
        args.load_best_model_at_end = evaluating == saving != "no" and (
            evaluating != "steps" or args.eval_steps == args.save_steps)
        if args.load_best_model_at_end and args.metric_for_best_model is None:
            args.metric_for_best_model, args.greater_is_better = "accuracy", True
    if not num_train_examples or not (evaluate or save) or (args.load_best_model_at_end and not (evaluate and save)):
        return None
    per_epoch = steps_per_epoch(args, num_train_examples)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    if math.ceil(steps / per_epoch) <= MAX_EPOCH_CADENCE:
        return None
    interval = math.ceil(steps / CADENCE_TARGET)
    if evaluate:
        args.eval_strategy, args.eval_steps = IntervalStrategy.STEPS, interval
    if save:
        args.save_strategy, args.save_steps = SaveStrategy.STEPS, interval
    return interval


def _cadence_in_words(strategy, interval: Optional[int]) -> str:
    value = getattr(strategy, "value", strategy)
    if value == "steps" and interval is not None:
        return f"every {interval} steps (sized: the run is over {MAX_EPOCH_CADENCE} epochs)"
    return {"epoch": "every epoch", "no": "none"}.get(value, value)


def _precision_in_words(mixed_precision: str, chosen_here: bool) -> str:
    """The precision training uses, for the log. `accelerate launch` without `--mixed_precision` warns that it set
    'no' (and exports it); that default leaves the choice to `hf_deit.precision`, so the log says which way it went."""
    words = {"bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(str(mixed_precision), "float32 (no mixed precision)")
    if chosen_here and str(mixed_precision) == "bf16":
        words += " (chosen as faster on this hardware; accelerate launch's default mixed_precision 'no' is not a "
        words += "choice: pass --bf16 false for float32)"
    return words


def train_and_evaluate(trainer: Trainer, settings: dict) -> dict:
    """Resume from the checkpoint `--resume_from_checkpoint` and `--output_dir` name (`resolve_resume_checkpoint`;
    one of other settings is refused), record the settings, train, save the model, its metrics and state, and
    evaluate when there is an evaluation set. Returns the evaluation metrics ({} without an evaluation set)."""
    args = trainer.args
    checkpoint = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        check_checkpoint_settings(checkpoint, settings)
    if trainer.is_world_process_zero():
        record_run_settings(args.output_dir, settings)
    state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME)) if checkpoint else None
    if state is not None and state.max_steps > 0 and state.global_step >= state.max_steps:
        _take_finished_run(trainer, checkpoint, state)
    else:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
    trainer.save_model()
    trainer.save_state()
    if trainer.eval_dataset is None:
        return {}
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def _take_finished_run(trainer: Trainer, checkpoint: str, state: TrainerState) -> None:
    """A rerun of a finished run trains nothing: its last checkpoint's weights (the best one's where the run keeps the
    best) become the model again. `Trainer.train` resumed at the last step would train one step past the schedule:
    its epoch loop looks for the end only after a step."""
    logger.warning(
        "%s is this run's last step: nothing is left to train. The run's model is saved again from it and evaluated.",
        checkpoint,
    )
    trainer.state = state
    best = trainer.state.best_model_checkpoint
    keep_best = trainer.args.load_best_model_at_end and best is not None and os.path.isdir(best)
    trainer._load_from_checkpoint(best if keep_best else checkpoint)  # the Trainer's own loader: every layout


# ---- a new student ----

# The model trained on the embedded digits: their native 28 px in a 4x4 grid of 7 px patches, DeiT-Tiny's width and
# half its depth. Few tokens make its steps cheap, and it learns more per CPU-minute than a narrower model on more
# tokens (the recipe study: README, "Where the defaults come from").
EMBEDDED_STUDENT = dict(image_size=28, patch_size=7, hidden_size=192, num_hidden_layers=6, num_attention_heads=3)
# Its learning rate at batch 64 (scaled with the square root of the batch, as hf_deit.run.SMALL_DATA_LEARNING_RATE):
# the best of 5e-4/1e-3/2e-3 at the main job's length, with and without a teacher (README).
EMBEDDED_STUDENT_LEARNING_RATE = 1e-3


def uses_embedded_data(data_args: DataArguments) -> bool:
    return data_args.train_dir is None and data_args.dataset_name in EMBEDDED_DATASETS


def student_config(
    model_args: ModelArguments, data_args: DataArguments, image_size: Optional[int] = None, small_images: bool = False,
    **label_fields,
) -> Optional[DistilledDeiTConfig]:
    """A new student's config (from a preset or the embedded default), or None when a saved model is to be loaded.
    `image_size` (`--image_size`), when given, is the new model's input size; `small_images` (a folder of tiny images,
    `hf_deit.data.size_input`) makes the default the embedded data's small-image student."""
    name = model_args.model_name_or_path
    overrides = {"drop_path_rate": model_args.drop_path_rate, **parse_config_overrides(model_args.config_overrides)}
    if image_size is not None:  # (one in --config_overrides too is refused by the early checks: check_inputs)
        overrides["image_size"] = image_size
    try:  # the config refuses a shape the flags asked for that no model has (an image size in part patches, ...)
        if name is None:
            small = small_images or uses_embedded_data(data_args)
            base = dict(EMBEDDED_STUDENT) if small else dict(PRESETS["deit_tiny_distilled_patch16_224"])
            return DistilledDeiTConfig(**{**base, **overrides, **label_fields})
        if name in PRESETS or name in PRESET_ALIASES:
            return DistilledDeiTConfig.from_preset(name, **overrides, **label_fields)
    except ValueError as error:
        raise InputError(f"{error} (--image_size, --config_overrides)") from None
    return None


def label_fields(label_names: list[str]) -> dict:
    """The config fields that name a classifier's classes."""
    return dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
    )
