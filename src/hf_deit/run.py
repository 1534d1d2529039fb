"""The run sequence both training scripts share (`scripts/train.py`, `scripts/train_teacher.py`). Each script supplies
its own model, data and trainer between the three steps, and writes its own card:

    groups = parse_command_line(parser, argv, check)     every input checked before anything heavy, then parsed
    settings = start_run(training_args, groups, logger)  logging, seed; --output_dir checked against the settings
    ...                                                  the script's data, model and trainer
    metrics = train_and_evaluate(trainer, settings)      resume resolved and checked, settings recorded, train,
                                                         save, evaluate

so that the resume rule and the same-settings checks of `hf_deit.checkpointing` apply to every run.
"""

import logging
import os
import sys
from typing import Callable, Optional, Sequence

import transformers
from transformers import HfArgumentParser, Trainer, TrainerState, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME

from .checkpointing import (
    check_checkpoint_settings,
    prepare_output_dir,
    record_run_settings,
    resolve_resume_checkpoint,
    run_settings,
)


def parse_command_line(parser: HfArgumentParser, argv: Optional[Sequence[str]], check: Callable) -> tuple:
    """`check(command_line)` (an `hf_deit_inputs` check: raises `InputError` naming each fix), then the parser's
    dataclasses. `argv` None reads `sys.argv`; a single `.json` argument is a settings file."""
    command_line = sys.argv[1:] if argv is None else list(argv)
    check(command_line)
    if len(command_line) == 1 and command_line[0].endswith(".json"):
        return parser.parse_json_file(command_line[0])
    return parser.parse_args_into_dataclasses(args=command_line)


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
    logging.getLogger(__name__).warning(
        "%s is this run's last step: nothing is left to train. The run's model is saved again from it and evaluated.",
        checkpoint,
    )
    trainer.state = state
    best = trainer.state.best_model_checkpoint
    keep_best = trainer.args.load_best_model_at_end and best is not None and os.path.isdir(best)
    trainer._load_from_checkpoint(best if keep_best else checkpoint)  # the Trainer's own loader: every layout
