"""Checkpoints that survive a crash: atomic writes, and which checkpoint a restarted run resumes from.

Atomic writes. transformers' `Trainer._save_checkpoint` writes straight into `output_dir/checkpoint-N`, file by file;
a kill in the middle leaves a folder that looks like the newest checkpoint but cannot be loaded, and
`get_last_checkpoint` would pick it. `save_checkpoint_atomically` lets Trainer write the checkpoint into a hidden
staging folder (`output_dir/.partial-checkpoint-N/checkpoint-N`) and renames it into place only once every file is
written: `checkpoint-N` then either does not exist or is complete (a rename within one file system is atomic), and a
kill at any moment leaves the previous checkpoint untouched. Older checkpoints are rotated only after the rename.
(Durability across a power cut would need fsyncs as well; a killed process's writes are already in the page cache.)

Same settings only. `prepare_output_dir(output_dir, settings, overwrite)` runs before any model or dataset work: the
first run into a folder records its settings there (`run_settings.json`: every setting that shapes the weights,
`run_settings(...)`); a later run into the same folder with other settings is refused, naming each difference and
the two ways out (another `--output_dir`, or `--overwrite_output_dir true`, which deletes the old checkpoints and
starts fresh). So a resumed run always continues a checkpoint of its own configuration, and the model card, written
from the run's settings, is true to the weights beside it.

Resuming. `resolve_resume_checkpoint(output_dir, requested)` is the rule `scripts/train.py` applies:
    unset             resume from the newest checkpoint in output_dir if there is one (logged), else start fresh;
    "auto"/"true"/"latest"  resume from the newest checkpoint; an error if there is none;
    "false"/"no"/"none"     start fresh; an error if output_dir already holds checkpoints (they would mix with the
                      new run's and be rotated away): choose another --output_dir or delete them;
    a path            resume from that checkpoint folder (an error if it is not one).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

from hf_deit_inputs import InputError
from hf_deit_inputs.choices import RESUME_LATEST, RESUME_NEVER, RUN_SETTINGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".partial-"  # hidden, and not matched by transformers' `checkpoint-<step>` patterns
TRAINER_STATE_NAME = "trainer_state.json"


def save_checkpoint_atomically(trainer, save_checkpoint, model, trial) -> str:
    """Run Trainer's `save_checkpoint(model, trial)` into a staging folder, then rename it to `checkpoint-<step>`.

    `trainer` is the Trainer (its `_get_output_dir` is redirected to the staging folder for the duration of the
    call); returns the final checkpoint folder. In a multi-process run every process writes its RNG state into the
    staging folder, so the main process renames only once all have finished.
    """
    run_dir = trainer._get_output_dir(trial=trial)
    name = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
    final = os.path.join(run_dir, name)
    staging_root = os.path.join(run_dir, STAGING_PREFIX + name)
    staged = os.path.join(staging_root, name)
    if trainer.args.should_save:
        remove_partial_checkpoints(run_dir)  # left by a run killed while saving
    trainer.accelerator.wait_for_everyone()
    # Trainer derives the checkpoint's folder from `_get_output_dir`: point it at the staging root for this call only.
    trainer._get_output_dir = lambda trial=None: staging_root
    try:
        save_checkpoint(model, trial)
    finally:
        del trainer._get_output_dir  # back to the class's method
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        if trainer.state.best_model_checkpoint == staged:
            trainer.state.best_model_checkpoint = final
            trainer.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
        if os.path.exists(final):  # the same step saved again (e.g. a resumed run re-saving where it was killed)
            shutil.rmtree(final)
        os.replace(staged, final)
        os.rmdir(staging_root)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=trainer.args.save_total_limit,
            best_model_checkpoint=trainer.state.best_model_checkpoint,
            use_mtime=True,
        )
    trainer.accelerator.wait_for_everyone()
    return final


def remove_partial_checkpoints(run_dir: str) -> None:
    """Delete staging folders that a killed run left behind."""
    removed = []
    if os.path.isdir(run_dir):
        for entry in os.listdir(run_dir):
            if entry.startswith(STAGING_PREFIX + PREFIX_CHECKPOINT_DIR):
                path = os.path.join(run_dir, entry)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    if removed:
        logger.info("Removed %d incomplete checkpoint(s) left by an interrupted save: %s", len(removed), removed)


def resolve_resume_checkpoint(output_dir: str, requested: str | bool | None) -> str | None:
    """The checkpoint folder a run in `output_dir` resumes from, or None to start fresh (rule in the module doc)."""
    latest = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    text = str(requested).strip().lower() if requested is not None else None
    if text is None:
        if latest is not None:
            logger.warning(
                "Resuming from %s, the newest checkpoint in --output_dir %s. To start over instead, pass another "
                "--output_dir (or --resume_from_checkpoint false after deleting the checkpoints).", latest, output_dir
            )
        return latest
    if text in RESUME_LATEST:
        if latest is None:
            raise InputError(f"--resume_from_checkpoint {requested}: no checkpoint-<step> folder in {output_dir}.")
        logger.info("Resuming from %s.", latest)
        return latest
    if text in RESUME_NEVER:
        if latest is not None:
            raise InputError(
                f"--output_dir {output_dir} already holds checkpoints (newest: {os.path.basename(latest)}) and "
                f"--resume_from_checkpoint is {requested}: a new run there would mix with them. Pass another "
                "--output_dir, delete the checkpoints, or drop the flag to resume."
            )
        return None
    path = Path(requested)
    if not (path / TRAINER_STATE_NAME).is_file():
        raise InputError(
            f"--resume_from_checkpoint {requested}: not a checkpoint folder (no {TRAINER_STATE_NAME}). Pass a "
            f"{PREFIX_CHECKPOINT_DIR}-<step> folder, 'auto' for the newest in --output_dir, or 'false'."
        )
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# Same settings only
# ---------------------------------------------------------------------------------------------------------------------

# TrainingArguments fields that shape the weights (the rest: logging, saving, evaluation, the Hub, devices).
TRAINING_SETTINGS = (
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim",
    "optim_args", "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "data_seed", "bf16", "fp16",
    "label_smoothing_factor", "full_determinism", "repeated_augmentation",
)  # fmt: skip
# Fields of the script's own argument groups that do not change the weights.
NOT_SETTINGS = ("max_eval_samples", "eval_split", "attn_implementation", "trust_remote_code",
                "teacher_trust_remote_code", "overwrite_output_dir")  # fmt: skip


def run_settings(*argument_groups) -> dict:
    """The settings of a run that shape its weights, as JSON values: every field of the script's argument
    dataclasses except `NOT_SETTINGS`, and of a `TrainingArguments` only `TRAINING_SETTINGS` (and the distillation
    fields of a `DistillationConfig`). Paths that exist are
    made absolute, so that `data/train` and `./data/train` are the same setting."""
    from transformers import TrainingArguments

    from .arguments import DISTILLATION_FIELDS, DistillationConfig

    settings = {}
    for group in argument_groups:
        names = TRAINING_SETTINGS if isinstance(group, TrainingArguments) else [f.name for f in dataclasses.fields(group)]
        names = (*names, *DISTILLATION_FIELDS) if isinstance(group, DistillationConfig) else names
        for name in names:
            if name in NOT_SETTINGS or not hasattr(group, name):
                continue
            value = getattr(group, name)
            value = getattr(value, "value", value)  # enums
            if isinstance(value, str) and (name.endswith("_dir") or name.endswith("name_or_path")) and os.path.exists(value):
                value = os.path.abspath(value)
            settings[name] = value if isinstance(value, (bool, int, float, str, type(None))) else json.loads(
                json.dumps(value, default=str)
            )
    return settings


def prepare_output_dir(output_dir: str, settings: dict, overwrite: bool = False, write: bool = True) -> None:
    """Refuse a run into `output_dir` whose recorded settings differ from `settings` (see the module docstring);
    with `overwrite`, delete the old run's checkpoints instead (when `write`: the main process). Nothing is written
    here: `record_run_settings` does it once training starts, so a run that fails earlier leaves no trace."""
    saved, differences = _recorded_differences(output_dir, settings)
    if differences and not overwrite:
        listed = "\n".join(f"  --{name}: {_shown(old)} there, {_shown(new)} now"
                           for name, (old, new) in differences.items())  # fmt: skip
        raise InputError(
            f"--output_dir {output_dir} holds a run made with other settings:\n{listed}\nIts checkpoints and model "
            "belong to those settings, so this run neither resumes nor writes there. Pass another --output_dir, or "
            "--overwrite_output_dir true to delete that run's checkpoints and start fresh there."
        )
    latest = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if overwrite and latest is not None:  # asked: start fresh
        if write:
            for entry in os.listdir(output_dir):
                if entry.startswith((PREFIX_CHECKPOINT_DIR, STAGING_PREFIX)):
                    shutil.rmtree(os.path.join(output_dir, entry), ignore_errors=True)
        logger.warning("--overwrite_output_dir: deleted the checkpoints of the earlier run in %s%s.", output_dir,
                       f" (settings that differed: {', '.join(differences)})" if differences else "")  # fmt: skip
    elif saved is None and latest is not None:
        logger.warning(
            "%s holds checkpoints but no %s (written by older versions): their settings cannot be compared with this "
            "run's. Resuming assumes they are the same.", output_dir, RUN_SETTINGS_NAME,
        )  # fmt: skip


def _recorded_differences(output_dir: str, settings: dict) -> tuple[dict | None, dict[str, tuple]]:
    """The settings recorded in `output_dir` (None when there are none), and {name: (recorded value, current value)}
    for every setting both record that differs (a setting that one version of hf-deit has and another lacks is not
    compared)."""
    path = os.path.join(output_dir, RUN_SETTINGS_NAME)
    if not os.path.isfile(path):
        return None, {}
    with open(path) as file:
        saved = json.load(file)
    return saved, {name: (saved[name], settings[name]) for name in sorted(set(saved) & set(settings)) if saved[name] != settings[name]}


def _shown(value) -> str:
    """A recorded setting as the user spells it: an unset one (None: the default, or sized to the data) as "unset"."""
    return "unset" if value is None else repr(value)


def record_run_settings(output_dir: str, settings: dict) -> None:
    """Write `settings` to `output_dir/run_settings.json` (atomically); call it from the main process."""
    path = os.path.join(output_dir, RUN_SETTINGS_NAME)
    os.makedirs(output_dir, exist_ok=True)
    staging = path + ".tmp"
    with open(staging, "w") as file:
        json.dump(settings, file, indent=2, sort_keys=True)
    os.replace(staging, path)


def check_checkpoint_settings(checkpoint: str, settings: dict) -> None:
    """A checkpoint given by path (`--resume_from_checkpoint PATH`) resumes only a run of the same settings."""
    differences = _recorded_differences(os.path.dirname(os.path.abspath(checkpoint)), settings)[1]
    if differences:
        listed = ", ".join(f"--{name} ({_shown(old)} there, {_shown(new)} now)"
                           for name, (old, new) in differences.items())  # fmt: skip
        raise InputError(f"--resume_from_checkpoint {checkpoint} was saved by a run with other settings: {listed}. "
                         "Resume it with the same flags, or leave --resume_from_checkpoint out to start fresh.")  # fmt: skip
