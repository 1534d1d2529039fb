"""Teacher outputs recorded once (scripts/record_teacher.py, hf_deit.teacher_record) and replayed in the teacher's
place (scripts/train.py --teacher_outputs): the same run, step by step, without the teacher; a record of another run
refused before any step, each difference named."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification

import record_teacher
import train
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


@pytest.mark.slow
def test_hard_distillation_from_the_record_is_the_live_run_step_by_step(tmp_path, teacher):
    folder = record(tmp_path, teacher, "--distillation_type", "hard")
    assert TeacherRecord.open(folder).kinds == ["argmax"]
    train.main(run_flags(tmp_path / "live", "--distillation_type", "hard", "--teacher_name_or_path", teacher))
    train.main(run_flags(tmp_path / "replay", "--distillation_type", "hard", "--teacher_outputs", str(folder)))

    live_logs, live_weights = trained(tmp_path / "live")
    replay_logs, replay_weights = trained(tmp_path / "replay")
    assert len([entry for entry in live_logs if "loss_distillation" in entry]) == STEPS
    assert replay_logs == live_logs  # every step's loss and terms, the evaluation (teacher agreement included)
    assert "eval_teacher_accuracy" in str(live_logs) or any("teacher" in key for key in live_logs[-2])
    for name, tensor in live_weights.items():
        assert torch.equal(replay_weights[name], tensor), name
