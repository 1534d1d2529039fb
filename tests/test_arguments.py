"""The defaults sized from the run itself (`hf_deit.run.size_run` and its helpers): the learning rate sized to the
batch and the dataset, the epochs; and the embedded student (`hf_deit.run`)."""

import pytest
from transformers import HfArgumentParser

from hf_deit.arguments import DataArguments, DeiTTrainingArguments, ModelArguments
from hf_deit.run import EMBEDDED_STUDENT, epochs_for, learning_rate_for, short_run_warning, size_run, student_config


def parse(tmp_path, *flags) -> DeiTTrainingArguments:
    (args,) = HfArgumentParser(DeiTTrainingArguments).parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none", *flags]
    )
    return args


def test_a_new_model_on_a_small_dataset_gets_a_rate_that_moves_it(tmp_path):
    # The user's case: 90 photos, batch 16. The paper's linear rule gives 1.6e-5; the small-data floor, 5e-4 at
    # batch 64 scaled with the square root of the batch, gives 2.5e-4.
    args = parse(tmp_path, "--per_device_train_batch_size", "16")
    assert learning_rate_for(args, num_train_examples=90, from_scratch=True) == pytest.approx(2.5e-4)
    assert learning_rate_for(parse(tmp_path), num_train_examples=4000) == pytest.approx(5e-4)  # batch 64


def test_large_datasets_and_fine_tuning_keep_the_papers_linear_rule(tmp_path):
    imagenet = parse(tmp_path, "--per_device_train_batch_size", "1024")
    assert learning_rate_for(imagenet, num_train_examples=1_281_167) == pytest.approx(1e-3)
    fine_tuning = parse(tmp_path, "--per_device_train_batch_size", "16")
    assert learning_rate_for(fine_tuning, num_train_examples=90, from_scratch=False) == pytest.approx(1.5625e-5)
    unknown_size = parse(tmp_path, "--per_device_train_batch_size", "512")  # a stream
    assert learning_rate_for(unknown_size, num_train_examples=None) == pytest.approx(5e-4)


def test_an_explicit_rate_and_accumulated_batches(tmp_path):
    assert learning_rate_for(parse(tmp_path, "--learning_rate", "3e-3"), num_train_examples=90) == 3e-3
    accumulated = parse(tmp_path, "--per_device_train_batch_size", "64", "--gradient_accumulation_steps", "4")
    assert learning_rate_for(accumulated, num_train_examples=4000) == pytest.approx(1e-3)  # 5e-4 * sqrt(256 / 64)


def test_a_models_own_rate_is_used_only_when_none_was_given(tmp_path):
    assert learning_rate_for(parse(tmp_path), 4000, rate_at_batch_64=1e-3) == pytest.approx(1e-3)  # batch 64
    small_batch = parse(tmp_path, "--per_device_train_batch_size", "16")
    assert learning_rate_for(small_batch, 4000, rate_at_batch_64=1e-3) == pytest.approx(5e-4)
    assert learning_rate_for(parse(tmp_path, "--learning_rate", "3e-4"), 4000, rate_at_batch_64=1e-3) == 3e-4


def test_the_embedded_student_is_the_recipes():
    config = student_config(ModelArguments(), DataArguments(dataset_name="mnist"))
    assert {key: getattr(config, key) for key in EMBEDDED_STUDENT} == EMBEDDED_STUDENT
    assert (config.image_size, config.patch_size, config.hidden_size) == (28, 7, 192)


def test_a_new_model_on_a_tiny_dataset_gets_enough_steps(tmp_path):
    # 90 photos at batch 64: 2 steps an epoch, so 30 epochs would be 60 steps; it gets 150 epochs (300 steps).
    assert epochs_for(parse(tmp_path), num_train_examples=90) == 150
    assert epochs_for(parse(tmp_path), num_train_examples=4000) == 30  # 63 steps an epoch: 30 epochs suffice
    assert epochs_for(parse(tmp_path), num_train_examples=90, from_scratch=False) == 30  # fine-tuning
    assert epochs_for(parse(tmp_path, "--num_train_epochs", "5"), num_train_examples=90) == 5  # asked for
    assert epochs_for(parse(tmp_path, "--max_steps", "40"), num_train_examples=90) == 30  # steps rule


def test_with_unlabelled_images_the_labelled_ones_get_the_passes_of_a_run_without_them(tmp_path, caplog):
    """50 labelled textures and a pool of 150: the student alone gets 300 epochs (300 steps); with the pool, as many
    epochs over four times the images (1,200 steps), not the 75 epochs that 300 steps would give its labelled images."""
    import datasets

    assert epochs_for(parse(tmp_path), num_train_examples=50) == 300
    assert epochs_for(parse(tmp_path), num_train_examples=200, num_labelled=50) == 300
    assert epochs_for(parse(tmp_path), num_train_examples=200) == 75
    assert epochs_for(parse(tmp_path), num_train_examples=40_000, num_labelled=4_000) == 30  # large: the default epochs
    labels = datasets.Dataset.from_dict({"label": [0, 1] * 25 + [-1] * 150})
    never_decoded = labels.with_transform(lambda batch: pytest.fail("the labels are read without the transform"))
    with caplog.at_level("INFO", logger="hf_deit.run"):
        sized = size_run(parse(tmp_path), train_dataset=never_decoded)
    assert sized.num_train_epochs == 300 and "200 training images, 50 labelled" in caplog.text
    assert size_run(parse(tmp_path), train_dataset=labels.to_iterable_dataset()).num_train_epochs == 30  # a stream


def parse_teacher(tmp_path, *flags):
    from hf_deit.arguments import TeacherTrainingArguments

    (args,) = HfArgumentParser(TeacherTrainingArguments).parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none", *flags]
    )
    return args


def test_a_new_teacher_gets_enough_steps_and_keeps_its_best_checkpoint(tmp_path):
    # 90 photos at batch 64: the old default, 10 epochs, was 20 steps (56.7% in issue 20); now 150 epochs, 300 steps.
    assert epochs_for(parse_teacher(tmp_path), num_train_examples=90) == 150
    assert epochs_for(parse_teacher(tmp_path), num_train_examples=4000) == 10  # 63 steps an epoch: 630 steps
    assert epochs_for(parse_teacher(tmp_path), num_train_examples=90, from_scratch=False) == 10  # fine-tuning
    assert parse_teacher(tmp_path).learning_rate == 2e-3  # the CNN's rate, whatever the data (the main job's too)
    # Evaluated and saved every epoch (the defaults, with an evaluation set): the best checkpoint by validation
    # accuracy is kept.
    args = sized_teacher(tmp_path)
    assert args.load_best_model_at_end and args.metric_for_best_model == "accuracy" and args.greater_is_better
    # Not saved, or at another cadence, or nothing to evaluate: nothing to reload, and no error from Trainer's check.
    assert not sized_teacher(tmp_path, "--save_strategy", "no").load_best_model_at_end
    assert not sized_teacher(tmp_path, "--eval_strategy", "no", "--save_strategy", "no").load_best_model_at_end
    assert not sized_teacher(tmp_path, "--eval_strategy", "steps", "--eval_steps", "5").load_best_model_at_end
    assert not sized_teacher(tmp_path, has_eval_dataset=False).load_best_model_at_end
    assert sized_teacher(tmp_path, "--load_best_model_at_end", "false").load_best_model_at_end is False


def sized_teacher(tmp_path, *flags, has_eval_dataset=True):
    return size_run(parse_teacher(tmp_path, *flags), None, range(4000), range(30) if has_eval_dataset else None)


def test_a_run_too_short_to_learn_is_warned_with_its_steps_and_the_fix(tmp_path, caplog):
    from hf_deit.arguments import TeacherTrainingArguments

    with caplog.at_level("WARNING", logger="hf_deit.run"):
        assert epochs_for(parse(tmp_path, "--num_train_epochs", "10"), num_train_examples=90) == 10  # kept
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith("--num_train_epochs 10 (2 step(s) an epoch) gives a new model 20 optimizer steps on "
                              "90 images (global batch 64)")
    assert "at least 300" in message and "Pass --num_train_epochs 150 (or --max_steps 300)" in message
    # The teacher's own: the filer's 20 steps on 90 images; --max_steps too.
    assert "--num_train_epochs 150" in short_run_warning(parse_teacher(tmp_path, "--num_train_epochs", "10"), 90)
    assert "--max_steps 40 gives a new model 40" in short_run_warning(parse(tmp_path, "--max_steps", "40"), 90)
    # Enough steps, or fine-tuning a trained model: no warning.
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_deit.run"):
        epochs_for(parse(tmp_path, "--num_train_epochs", "10"), num_train_examples=4000)  # 630 steps
        epochs_for(parse(tmp_path, "--num_train_epochs", "1"), num_train_examples=90, from_scratch=False)
        epochs_for(parse(tmp_path), num_train_examples=90)  # the default sizes itself
    assert caplog.records == [] and TeacherTrainingArguments.min_from_scratch_steps == 300
