"""`--report_to tensorboard` and `--report_to trackio`: what a distillation run logs, read back with each tracker's own
reader (TensorBoard's EventAccumulator, trackio's command line), on a few steps of the embedded digits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_deit_inputs import InputError, check_train_command_line

REPO = Path(__file__).resolve().parents[1]

TINY_STUDENT = "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2"
TINY_TEACHER = "hidden_sizes=[16,32],depths=[1,1],embedding_size=16"
DATA = ["--dataset_name", "digits", "--image_size", "16", "--max_train_samples", "128", "--max_eval_samples", "64",
        "--per_device_train_batch_size", "32", "--save_strategy", "no", "--disable_tqdm", "true"]  # fmt: skip
# 4 steps, logged every 2 and evaluated every 2, then the evaluation after training.
TINY_RUN = [*DATA, "--max_steps", "4", "--logging_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2"]
# Every loss term by name, the learning rate, each head's accuracy and the teacher's agreement with the student.
LOGGED = {"train/loss", "train/loss_cls", "train/loss_distillation", "train/learning_rate", "eval/accuracy",
          "eval/cls_accuracy", "eval/distillation_accuracy", "eval/teacher_accuracy",
          "eval/teacher_agreement"}  # fmt: skip
EVALUATIONS = 3  # at steps 2 and 4, and the one after training


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    import train_teacher

    out = tmp_path_factory.mktemp("teacher")
    train_teacher.main(["--output_dir", str(out), "--config_overrides", TINY_TEACHER, *DATA, "--max_steps", "2",
                        "--eval_strategy", "no"])  # fmt: skip
    return out


def student_flags(output_dir: Path, teacher_dir: Path) -> list[str]:
    return ["--output_dir", str(output_dir), "--config_overrides", TINY_STUDENT, "--teacher_name_or_path",
            str(teacher_dir), "--distillation_type", "hard", *TINY_RUN]  # fmt: skip


def logged_values(output_dir: Path, key: str) -> list[float]:
    """What the Trainer itself logged under `key` (its trainer_state.json), in order."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry[key] for entry in history if key in entry]


@pytest.mark.slow
def test_tensorboard_receives_the_loss_terms_head_accuracies_agreement_and_learning_rate(teacher_dir, tmp_path):
    import train
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "student"
    train.main([*student_flags(out, teacher_dir), "--report_to", "tensorboard"])

    (logdir,) = (out / "runs").iterdir()  # the one run, as `tensorboard --logdir <output_dir>/runs` shows it
    events = EventAccumulator(str(logdir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert LOGGED <= scalars, LOGGED - scalars
    read = [event.value for event in events.Scalars("train/loss_distillation")]
    assert read == pytest.approx(logged_values(out, "loss_distillation"), abs=1e-6)
    assert len(events.Scalars("eval/teacher_agreement")) == EVALUATIONS


def trackio(*args: str, env: dict) -> dict:
    """trackio's own command line, as a user reads a local project (`trackio list ...`, `trackio get ...`)."""
    result = subprocess.run([sys.executable, "-m", "trackio.cli", *args, "--json"], env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_trackio_keeps_a_local_run_with_the_loss_terms_head_accuracies_agreement_and_learning_rate(
    teacher_dir, tmp_path
):
    out, store = tmp_path / "student", tmp_path / "trackio"
    # Local and offline: trackio writes to TRACKIO_DIR; no Space, bucket, dataset or webhook is named.
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("TRACKIO_", "SPACE_", "ACCELERATE_")) and key not in ("SYSTEM", "HF_TOKEN")}
    env.update(TRACKIO_DIR=str(store), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *student_flags(out, teacher_dir), "--report_to",
               "trackio", "--project", "hf-deit-test"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(path.suffix == ".db" for path in store.iterdir())

    # One run, named after the output folder, holding the evaluation after training too.
    (run,) = trackio("list", "runs", "--project", "hf-deit-test", env=env)["runs"]
    assert run.startswith("student-")
    metrics = set(trackio("list", "metrics", "--project", "hf-deit-test", "--run", run, env=env)["metrics"])
    assert LOGGED <= metrics, LOGGED - metrics
    loss_terms = trackio("get", "metric", "--project", "hf-deit-test", "--run", run, "--metric", "train/loss_cls",
                         env=env)["values"]  # fmt: skip
    assert [value["value"] for value in loss_terms] == pytest.approx(logged_values(out, "loss_cls"), abs=1e-6)
    agreement = trackio("get", "metric", "--project", "hf-deit-test", "--run", run, "--metric",
                        "eval/teacher_agreement", env=env)["values"]  # fmt: skip
    assert len(agreement) == EVALUATIONS


def test_a_tracker_that_is_not_installed_is_named_with_the_extra_before_anything_loads(monkeypatch, tmp_path):
    check_train_command_line(["--output_dir", str(tmp_path), "--report_to", "tensorboard"])  # installed: accepted
    monkeypatch.setitem(sys.modules, "trackio", None)  # as if it were not installed
    with pytest.raises(InputError, match=r"--report_to trackio: trackio is not installed.*hf-deit\[tracking\]"):
        check_train_command_line(["--output_dir", str(tmp_path), "--report_to", "trackio"])
