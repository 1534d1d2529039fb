#!/usr/bin/env python
r"""Train a distilled DeiT with a teacher, the Hugging Face way.

    python scripts/train.py                                  # embedded MNIST digits, a small DeiT, no teacher
    python scripts/train.py --train_dir data/train --validation_dir data/val --model_name_or_path tiny \
        --image_size 224 --output_dir outputs/mine           # your images: one sub-folder per class in each
    accelerate launch scripts/train.py --teacher_name_or_path outputs/teacher --distillation_type hard
    python scripts/record_teacher.py --record_dir outputs/record <the same flags>   # the teacher once, then
    python scripts/train.py --teacher_outputs outputs/record <the same flags, no teacher>   # runs without it
    accelerate launch scripts/train.py --model_name_or_path small --train_dir ... --validation_dir ... \
        --teacher_name_or_path facebook/regnet-y-160 --push_to_hub --hub_model_id me/deit-small-distilled

Reads top to bottom like the recipe: data, transforms, student, teacher, train, evaluate, save, card, push.
"""

import logging
import sys

from hf_deit_inputs import InputError, check_train_command_line, exit_on_input_error
from hf_deit_inputs.help import answer_help

if __name__ == "__main__":  # --help and every input on the command line answered first, before torch loads (below)
    sys.argv[1:] = answer_help(sys.argv[1:], "train.py", __doc__)
    exit_on_input_error(check_train_command_line, sys.argv[1:], "train.py")

from datasets import concatenate_datasets  # noqa: E402

from hf_deit import DistilledDeiTForImageClassification  # noqa: E402
from hf_deit.arguments import (  # noqa: E402
    DataArguments,
    DistillationConfig,
    ModelArguments,
    parse_config_overrides,
    train_argument_parser,
)
from hf_deit.data import (  # noqa: E402
    AugmentationArguments,
    apply_transforms,
    build_collator,
    build_eval_transform,
    build_train_transform,
    load_dataset_from_args,
    load_unlabeled_images,
    size_input,
    split_labeled,
)
from hf_deit.card import augmentation_recipe, data_card_fields  # noqa: E402
from hf_deit.convert import CheckpointConversionError, checkpoint_class_count  # noqa: E402
from hf_deit.distributed import leave_process_group  # noqa: E402
from hf_deit.hub import push_output_to_hub, take_hub_settings  # noqa: E402
from hf_deit.image_processing import deit_image_processor  # noqa: E402
from hf_deit.metrics import make_compute_metrics  # noqa: E402
from hf_deit.preemption import exit_status_of  # noqa: E402
from hf_deit.run import (  # noqa: E402
    EMBEDDED_STUDENT_LEARNING_RATE,
    label_fields,
    parse_command_line,
    size_run,
    start_run,
    student_config,
    train_and_evaluate,
    uses_embedded_data,
)
from hf_deit.trainer import DistillationTrainer  # noqa: E402

logger = logging.getLogger("hf_deit.train")


def build_student(model_args: ModelArguments, data_args: DataArguments, label_names: list[str], image_size=None,
                  token=None, small_images: bool = False):
    """A new model (preset or default) at `image_size` when given, or a saved one: our own model, or a transformers
    DeiT/ViT (folder or Hub id), a timm/facebook checkpoint file or a timm Hub-layout folder, converted on load
    (`hf_deit.convert`). A saved model with other classes than the data's gets new heads (`from_pretrained` with
    `ignore_mismatched_sizes=True`, logged); `image_size` (--image_size) other than its own resamples its position
    embeddings once, at load (the paper fine-tunes 224 -> 384)."""
    fields = label_fields(label_names)
    config = student_config(model_args, data_args, image_size, small_images, **fields)
    if config is not None:
        config._attn_implementation = model_args.attn_implementation
        return DistilledDeiTForImageClassification(config)
    if image_size is not None:
        fields["image_size"] = image_size
    fields.update(parse_config_overrides(model_args.config_overrides))  # e.g. num_attention_heads for a bare file
    name = model_args.model_name_or_path
    # None: a bare weights file, whose heads only conversion reads (it logs new ones and can replace nothing else)
    saved_classes = checkpoint_class_count(name, token=token)
    new_heads = saved_classes is None or saved_classes != len(label_names)
    if saved_classes is not None and new_heads:
        logger.warning("%s has %d classes, the data %d: both heads start untrained (ignore_mismatched_sizes).", name,
                       saved_classes, len(label_names))  # fmt: skip
    try:
        return DistilledDeiTForImageClassification.from_pretrained(
            name,
            token=token,
            trust_remote_code=model_args.trust_remote_code,
            attn_implementation=model_args.attn_implementation,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes or new_heads,
            drop_path_rate=model_args.drop_path_rate,
            **fields,
        )
    except CheckpointConversionError as error:  # each says what to change on the command line
        raise InputError(f"--model_name_or_path {name}: {error}") from None


def main(argv=None) -> dict:
    model_args, data_args, aug_args, training_args = parse_command_line(train_argument_parser(), argv,
                                                                        check_train_command_line)  # fmt: skip
    settings = start_run(training_args, (model_args, data_args, aug_args), logger)
    hub_token, push_to_hub = take_hub_settings(training_args)
    trainer, dataset, aug_args = build_run(model_args, data_args, aug_args, training_args, hub_token)
    metrics = train_and_evaluate(trainer, settings)  # resumes as hf_deit.checkpointing says

    # Card, push
    if trainer.is_world_process_zero():
        data_fields = data_card_fields(data_args, training_args.seed)
        trainer.create_model_card(
            model_name=training_args.hub_model_id or None,
            dataset=data_fields.pop("dataset_name"),
            num_train_images=len(dataset["train"]) if hasattr(dataset["train"], "__len__") else None,
            num_eval_images=len(dataset["validation"]) if hasattr(dataset.get("validation"), "__len__") else None,
            augmentation=augmentation_recipe(aug_args),
            **data_fields,
        )
        if push_to_hub:
            push_output_to_hub(training_args, hub_token)
    leave_process_group(trainer)  # every rank, once all is saved: a finished run exits 0 (hf_deit.distributed)
    return metrics


def build_run(model_args: ModelArguments, data_args: DataArguments, aug_args: AugmentationArguments,
              training_args: DistillationConfig, hub_token=None) -> tuple:
    """What the run trains with, from its settings: (the trainer, holding the student, the teacher and the objective;
    the transformed data; the augmentation settings resolved)."""
    # Data
    dataset = load_dataset_from_args(data_args, training_args.seed, hub_token)
    label_names = dataset["train"].features["label"].names
    dataset["train"] = add_unlabeled_examples(dataset["train"], data_args, training_args, hub_token)

    # Student: its input size decides the transforms' unless given; a new one on a folder is sized to its images
    small_images = False
    if data_args.train_dir is not None:
        given = aug_args.image_size or parse_config_overrides(model_args.config_overrides).get("image_size")
        if given is not None or model_args.model_name_or_path is None:
            sized = size_input(dataset["train"], given, seed=training_args.seed)  # None when given: warned if far
            if sized is not None:
                aug_args.image_size, small_images = sized.image_size, sized.small_model
    model = build_student(model_args, data_args, label_names, aug_args.image_size, hub_token, small_images)
    if aug_args.image_size is None:
        image_size = model.config.image_size
        aug_args.image_size = image_size if isinstance(image_size, int) else image_size[0]
    aug_args = aug_args.resolved()
    dataset = apply_transforms(
        dataset, build_train_transform(aug_args), build_eval_transform(aug_args), skip_bad_images=data_args.skip_bad_images
    )
    image_processor = deit_image_processor(aug_args.image_size, aug_args.crop_pct, aug_args.mean, aug_args.std)

    # Train: what the settings left unset (learning rate, epochs, evaluation, precision) sized to the model and data;
    # the distillation type left unset is hard with a teacher, none without (the objective's logits term)
    embedded_student = model_args.model_name_or_path is None and uses_embedded_data(data_args)
    training_args = size_run(training_args, model, dataset["train"], dataset.get("validation"),
                             learning_rate_at_batch_64=EMBEDDED_STUDENT_LEARNING_RATE
                             if embedded_student or small_images else None)  # the small-image student's own rate
    trainer = DistillationTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("validation"),
        data_collator=build_collator(aug_args, len(label_names)),
        compute_metrics=make_compute_metrics(),
        processing_class=image_processor,
    )
    return trainer, dataset, aug_args


def add_unlabeled_examples(train, data_args: DataArguments, training_args: DistillationConfig, hub_token=None):
    """The training split with unlabelled examples (label -1): the part `--labeled_fraction` leaves unlabelled,
    and/or the pool `--unlabeled_dataset_name`/`--unlabeled_train_dir`. The teacher labels them during training (the
    early checks refuse them without one: `hf_deit_inputs.terms.teacher_needed_by`)."""
    parts = [train]
    if data_args.labeled_fraction is not None and data_args.labeled_fraction < 1.0:
        parts = list(split_labeled(train, data_args.labeled_fraction, seed=training_args.seed))
        logger.info("Labels kept for %d of %d training images.", len(parts[0]), len(train))
    if data_args.unlabeled_dataset_name or data_args.unlabeled_train_dir:
        parts.append(
            load_unlabeled_images(
                train.features["label"],
                dataset_name=data_args.unlabeled_dataset_name,
                train_dir=data_args.unlabeled_train_dir,
                image_column_name=data_args.image_column_name,
                max_samples=data_args.max_unlabeled_samples,
                seed=training_args.seed,
                token=hub_token,
            )
        )
    return concatenate_datasets(parts) if len(parts) > 1 else train


if __name__ == "__main__":  # 0, or 128 + the signal that stopped training (hf_deit.preemption); 2: an input refused
    sys.exit(exit_on_input_error(lambda argv: exit_status_of(main), sys.argv[1:], "train.py"))
