#!/usr/bin/env python
r"""Train or fine-tune a CNN teacher on the same data, with the same data flags as `scripts/train.py`.

    python scripts/train_teacher.py --output_dir outputs/teacher                      # embedded MNIST, small ResNet
    python scripts/train_teacher.py --train_dir data/train --validation_dir data/val --image_size 64 \
        --output_dir outputs/teacher                 # your images: one sub-folder per class in each
    python scripts/train_teacher.py --architecture regnet --config_overrides 'depths=[1,2,2,1]' ...
    python scripts/train_teacher.py --model_name_or_path microsoft/resnet-50 --ignore_mismatched_sizes ...

The teacher is saved with its preprocessing config, so `DistillationTrainer` adapts the student's batch to it.
"""

import logging
import os
import sys

from hf_deit_inputs import check_teacher_command_line, exit_on_input_error
from hf_deit_inputs.help import answer_help

if __name__ == "__main__":  # --help and every input on the command line answered first, before torch loads (below)
    sys.argv[1:] = answer_help(sys.argv[1:], "train_teacher.py", __doc__, teacher=True)
    exit_on_input_error(check_teacher_command_line, sys.argv[1:], "train_teacher.py")

from transformers import AutoConfig, AutoModelForImageClassification  # noqa: E402

from hf_deit.arguments import (  # noqa: E402
    TEACHER_ARCHITECTURES,
    DataArguments,
    TeacherArguments,
    TeacherTrainingArguments,
    parse_config_overrides,
    teacher_argument_parser,
)
from hf_deit.data import (  # noqa: E402
    AugmentationArguments,
    apply_transforms,
    build_collator,
    build_eval_transform,
    build_train_transform,
    load_dataset_from_args,
    size_input,
    split_labeled,
)
from hf_deit.card import (  # noqa: E402
    augmentation_recipe,
    data_card_fields,
    final_train_loss,
    kept_checkpoint,
    training_hyperparameters,
    write_teacher_card,
)
from hf_deit.distributed import leave_process_group  # noqa: E402
from hf_deit.hub import push_output_to_hub, take_hub_settings  # noqa: E402
from hf_deit.image_processing import deit_image_processor  # noqa: E402
from hf_deit.metrics import make_compute_metrics  # noqa: E402
from hf_deit.preemption import exit_status_of  # noqa: E402
from hf_deit.run import (  # noqa: E402
    EMBEDDED_STUDENT,
    label_fields,
    parse_command_line,
    size_run,
    start_run,
    train_and_evaluate,
    uses_embedded_data,
)
from hf_deit.trainer import ClassifierTrainer  # noqa: E402

logger = logging.getLogger("hf_deit.train_teacher")


def build_teacher(args: TeacherArguments, label_names: list[str]):
    fields = label_fields(label_names)
    overrides = parse_config_overrides(args.config_overrides)
    if args.model_name_or_path:
        return AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path,
            ignore_mismatched_sizes=args.ignore_mismatched_sizes,
            trust_remote_code=args.trust_remote_code,
            **fields,
            **overrides,
        )
    config_fields = {**TEACHER_ARCHITECTURES[args.architecture], **overrides, **fields}
    config = AutoConfig.for_model(config_fields.pop("model_type"), **config_fields)
    return AutoModelForImageClassification.from_config(config)


def main(argv=None) -> dict:
    teacher_args, data_args, aug_args, training_args = parse_command_line(teacher_argument_parser(), argv,
                                                                          check_teacher_command_line)  # fmt: skip
    settings = start_run(training_args, (teacher_args, data_args, aug_args), logger)

    hub_token, push_to_hub = take_hub_settings(training_args)
    trainer, dataset, aug_args = build_run(teacher_args, data_args, aug_args, training_args, hub_token)
    metrics = train_and_evaluate(trainer, settings)  # resumes as hf_deit.checkpointing says
    if trainer.is_world_process_zero():
        write_teacher_card(
            training_args.output_dir,
            model_name=training_args.hub_model_id or os.path.basename(os.path.normpath(training_args.output_dir)),
            config=trainer.model.config,
            eval_results=metrics,
            num_train_images=len(dataset["train"]) if hasattr(dataset["train"], "__len__") else None,
            num_eval_images=len(dataset["validation"]) if hasattr(dataset.get("validation"), "__len__") else None,
            augmentation=augmentation_recipe(aug_args),
            final_train_loss=final_train_loss(trainer.state.log_history),
            checkpoint_kept=kept_checkpoint(trainer.state),
            hyperparameters=training_hyperparameters(trainer.args, trainer.accelerator.num_processes),  # as sized
            **data_card_fields(data_args, training_args.seed),
        )
        if push_to_hub:
            push_output_to_hub(training_args, hub_token)
    leave_process_group(trainer)  # every rank, once all is saved: a finished run exits 0 (hf_deit.distributed)
    return metrics


def build_run(teacher_args: TeacherArguments, data_args: DataArguments, aug_args: AugmentationArguments,
              training_args: TeacherTrainingArguments, hub_token=None) -> tuple:
    """What the run trains with, from its settings: (the trainer, holding the teacher; the transformed data; the
    augmentation settings resolved)."""
    dataset = load_dataset_from_args(data_args, training_args.seed, hub_token)
    dataset["train"] = labeled_training_images(dataset["train"], data_args, training_args.seed)
    label_names = dataset["train"].features["label"].names
    model = build_teacher(teacher_args, label_names)
    # A new teacher on a folder: its input sized to the images (a given size far from them is warned of)
    if data_args.train_dir is not None and (aug_args.image_size is not None or not teacher_args.model_name_or_path):
        sized = size_input(dataset["train"], aug_args.image_size, seed=training_args.seed)
        if sized is not None:
            aug_args.image_size = sized.image_size
    if aug_args.image_size is None:
        aug_args.image_size = EMBEDDED_STUDENT["image_size"] if uses_embedded_data(data_args) else 224
    # --preset auto above 64 px: the paper's recipe to fine-tune a trained model; crops and flips for a new CNN
    aug_args = aug_args.resolved("imagenet" if teacher_args.model_name_or_path else "cnn_from_scratch")
    dataset = apply_transforms(
        dataset, build_train_transform(aug_args), build_eval_transform(aug_args), skip_bad_images=data_args.skip_bad_images
    )
    training_args = size_run(training_args, model, dataset["train"], dataset.get("validation"))  # what was left unset
    trainer = ClassifierTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("validation"),
        data_collator=build_collator(aug_args, len(label_names)),
        compute_metrics=make_compute_metrics(),
        processing_class=deit_image_processor(aug_args.image_size, aug_args.crop_pct, aug_args.mean, aug_args.std),
    )
    return trainer, dataset, aug_args


def labeled_training_images(train, data_args: DataArguments, seed: int):
    """The images the teacher may learn from: with `--labeled_fraction`, the labelled part only, the same images as
    train.py keeps labelled with the same seed (the teacher then labels the rest for the student). An unlabelled pool
    is refused by the early checks (`hf_deit_inputs.checks.check_teacher_command_line`)."""
    if data_args.labeled_fraction is None or data_args.labeled_fraction >= 1.0:
        return train
    labeled, _ = split_labeled(train, data_args.labeled_fraction, seed=seed)
    logger.info("Training on the %d labelled of %d images (--labeled_fraction).", len(labeled), len(train))
    return labeled


if __name__ == "__main__":  # 0, or 128 + the signal that stopped training (hf_deit.preemption); 2: an input refused
    sys.exit(exit_on_input_error(lambda argv: exit_status_of(main), sys.argv[1:], "train_teacher.py"))
