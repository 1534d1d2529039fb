"""Teacher outputs recorded once (scripts/record_teacher.py, hf_deit.teacher_record) and replayed in the teacher's
place (scripts/train.py --teacher_outputs): the same run, step by step, without the teacher; a record of another run
refused before any step, each difference named."""

import json

import pytest
import record_teacher
import torch
import train
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification

from hf_deit.teacher_record import RecordMismatchError, TeacherRecord

pytestmark = pytest.mark.filterwarnings("ignore")

STUDENT = "image_size=32,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,patch_size=8"
STEPS = 6


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A small CNN of the digits' classes (random weights: what it says is arbitrary, but the same every time)."""
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10,
                          id2label={i: str(i) for i in range(10)})  # fmt: skip
    ResNetForImageClassification(config).save_pretrained(folder)
    return str(folder)


def run_flags(output_dir, *extra) -> list[str]:
    """A short run on the digits with mixup/cutmix (views bound to their batch) and half the images unlabelled."""
    return ["--dataset_name", "digits", "--max_eval_samples", "48", "--config_overrides", STUDENT,
            "--max_steps", str(STEPS), "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16",
            "--logging_steps", "1", "--save_strategy", "no", "--eval_strategy", "steps", "--eval_steps", str(STEPS),
            "--report_to", "none", "--seed", "3", "--bf16", "false", "--output_dir", str(output_dir),
            "--mixup", "0.8", "--cutmix", "1.0", "--labeled_fraction", "0.5",
            "--protect_from_weak_teacher", "false", "--feature_map_distillation_weight", "0", *extra]  # fmt: skip


def trained(output_dir) -> tuple[list[dict], dict]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    logs = [{key: value for key, value in entry.items() if "runtime" not in key and "per_second" not in key}
            for entry in state["log_history"]]  # fmt: skip
    return logs, load_file(output_dir / "model.safetensors")


def record(tmp_path, teacher, *extra, record_flags=()):
    folder = tmp_path / "record"
    record_teacher.main(["--record_dir", str(folder), "--teacher_name_or_path", teacher, *record_flags,
                         *run_flags(tmp_path / "unused", *extra)])  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def hard_record(tmp_path_factory, teacher):
    return record(tmp_path_factory.mktemp("hard"), teacher, "--distillation_type", "hard")


def replay_trainer(*flags):
    groups = train.train_argument_parser().parse_args_into_dataclasses(args=list(flags))
    return train.build_run(*groups)[0]


@pytest.mark.slow
def test_hard_distillation_from_the_record_is_the_live_run_step_by_step(tmp_path, teacher, hard_record):
    folder = hard_record
    assert TeacherRecord.open(folder).kinds == ["argmax"]
    train.main(run_flags(tmp_path / "live", "--distillation_type", "hard", "--teacher_name_or_path", teacher))
    train.main(run_flags(tmp_path / "replay", "--distillation_type", "hard", "--teacher_outputs", str(folder)))

    live_logs, live_weights = trained(tmp_path / "live")
    replay_logs, replay_weights = trained(tmp_path / "replay")
    assert len([entry for entry in live_logs if "loss_distillation" in entry]) == STEPS
    assert replay_logs == live_logs  # every step's loss and terms, the evaluation (teacher agreement included)
    evaluation = next(entry for entry in live_logs if "eval_teacher_agreement" in entry)  # from recorded logits too
    assert evaluation in replay_logs
    for name, tensor in live_weights.items():
        assert torch.equal(replay_weights[name], tensor), name


def test_a_record_of_another_run_is_refused_before_any_step_naming_each_difference(tmp_path, hard_record):
    flags = run_flags(tmp_path / "other", "--distillation_type", "hard", "--teacher_outputs", str(hard_record))
    trainer = replay_trainer(*flags, "--seed", "4", "--rand_augment", "5", "--max_train_samples", "1000",
                             "--per_device_train_batch_size", "8", "--max_steps", "400",
                             "--feature_distillation_weight", "0.5")  # fmt: skip
    with pytest.raises(RecordMismatchError) as refusal:
        trainer.train()
    message = str(refusal.value)
    for difference in ("data: recorded", "augmentation: recorded", "NoisyRandAugment", "seed: recorded 3, this run 4",
                       "batch layout", "epochs: this run reads", "the record holds 1",
                       "missing term: the feature term needs the teacher's pooled features"):
        assert difference in message, (difference, message)
    assert trainer.state.global_step == 0 and not list((tmp_path / "other").iterdir())  # nothing trained or written

    # The record's own run is accepted.
    same = replay_trainer(*run_flags(tmp_path / "same", "--distillation_type", "hard", "--teacher_outputs",
                                     str(hard_record)))  # fmt: skip
    assert same.teacher_record.differences(same) == []


def test_soft_targets_need_probabilities_and_a_missing_or_interrupted_record_says_what_to_do(tmp_path, hard_record):
    trainer = replay_trainer(*run_flags(tmp_path / "soft", "--distillation_type", "soft", "--teacher_outputs",
                                        str(hard_record)))  # fmt: skip
    with pytest.raises(RecordMismatchError, match="soft distillation needs the teacher's probabilities: record with "
                                                  "--top_k"):  # fmt: skip
        trainer.teacher_record.check_run(trainer)
    (tmp_path / "interrupted").mkdir()
    (tmp_path / "interrupted" / "train-epoch0000-00000.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="its recording was interrupted; run scripts/record_teacher.py again"):
        TeacherRecord.open(tmp_path / "interrupted")


@pytest.mark.slow
def test_soft_distillation_and_every_term_from_all_probabilities_match_within_half_precision(tmp_path, teacher):
    terms = ["--distillation_type", "soft", "--distillation_tau", "2.0", "--attention_distillation_weight", "0.5",
             "--feature_distillation_weight", "0.5", "--feature_map_distillation_weight", "1"]  # fmt: skip
    folder = record(tmp_path, teacher, *terms, record_flags=["--top_k", "all"])
    assert TeacherRecord.open(folder).kinds == ["argmax", "top_k", "features", "attention_map", "stage_map"]
    train.main(run_flags(tmp_path / "live", *terms, "--teacher_name_or_path", teacher))
    # The teacher given beside the record: the first batches are checked against it.
    train.main(run_flags(tmp_path / "replay", *terms, "--teacher_outputs", str(folder), "--teacher_name_or_path",
                         teacher))  # fmt: skip
    live_logs, live_weights = trained(tmp_path / "live")
    replay_logs, replay_weights = trained(tmp_path / "replay")
    names = ("loss", "loss_cls", "loss_distillation", "loss_attention", "loss_feature", "loss_feature_map")
    for live, replayed in zip(live_logs, replay_logs):
        for name in (name for name in names if name in live):
            assert replayed[name] == pytest.approx(live[name], rel=2e-3, abs=2e-4), (name, live, replayed)
    for name, tensor in live_weights.items():
        assert torch.allclose(replay_weights[name], tensor, rtol=1e-2, atol=1e-4), name
