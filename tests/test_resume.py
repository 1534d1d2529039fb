"""Kill-and-resume: scripts/train.py killed with SIGKILL after a checkpoint (or in the middle of writing one) and
started again ends with the same weights and metrics as a run that was never interrupted."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).with_name("train_launcher.py")
SAVE_STEPS, MAX_STEPS = 4, 12


def train_command(output_dir, *launcher_options, extra=()):
    return [
        sys.executable, str(LAUNCHER), *launcher_options, "--",
        "--dataset_name", "digits", "--max_eval_samples", "64", "--output_dir", str(output_dir),
        "--config_overrides", "image_size=32,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,patch_size=8",
        "--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
        "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS), "--save_total_limit", "2",
        "--eval_strategy", "no", "--logging_steps", "2", "--report_to", "none", "--seed", "7",
        "--dataloader_num_workers", "2", "--dataloader_persistent_workers", "false",
        *extra,
    ]  # fmt: skip


def start(command, log_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")
    # A session of its own: the kill reaches the DataLoader workers too, as a crash or an OOM killer would.
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, process, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before the awaited moment")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the run")


def kill_group(process):
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def finish(process, log_path, timeout=150):
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, Path(log_path).read_text()[-3000:]


def final_state(output_dir):
    weights = load_file(output_dir / "model.safetensors")
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    losses = [entry["loss"] for entry in json.loads((output_dir / "trainer_state.json").read_text())["log_history"] if "loss" in entry]
    return weights, {key: value for key, value in metrics.items() if "runtime" not in key and "per_second" not in key}, losses


def assert_same_run(resumed_dir, reference_dir):
    resumed_weights, resumed_metrics, resumed_losses = final_state(resumed_dir)
    reference_weights, reference_metrics, reference_losses = final_state(reference_dir)
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(resumed_weights[name], tensor), f"{name} differs after resuming"  # bit-identical on CPU
    assert resumed_metrics == reference_metrics
    # The resumed run logs the steps after the checkpoint; they must be the reference's.
    assert resumed_losses == reference_losses[-len(resumed_losses) :]


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_or_sigterm_then_the_same_command_resumes_to_the_uninterrupted_result(tmp_path):
    """Two ways a one-process run is stopped, each checked against one uninterrupted run of the same command: SIGKILL
    after a checkpoint, then auto-resume; and SIGTERM, which finishes the step and saves (stop_and_resume)."""
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    # Both runs at once: the CPU has two cores and each run is mostly single-threaded start-up.
    reference = start(train_command(reference_dir), tmp_path / "reference.log")
    victim = start(train_command(run_dir, "--slow_steps_after", str(SAVE_STEPS)), tmp_path / "victim.log")
    try:
        checkpoint = run_dir / f"checkpoint-{SAVE_STEPS}"
        wait_for(lambda: (checkpoint / "trainer_state.json").exists(), victim)
        kill_group(victim)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    assert not (run_dir / "model.safetensors").exists(), "the kill came after the run had finished"

    # No flag: the newest checkpoint in --output_dir is picked up (and said so in the log).
    resumed = start(train_command(run_dir), tmp_path / "resumed.log")
    finish(resumed, tmp_path / "resumed.log")
    finish(reference, tmp_path / "reference.log")
    assert f"Resuming from {checkpoint}" in (tmp_path / "resumed.log").read_text()
    assert_same_run(run_dir, reference_dir)

    # SIGTERM to the whole process group, as SLURM and a terminal send it, against the same reference.
    sigterm = tmp_path / "sigterm"
    sigterm.mkdir()
    status = stop_and_resume(sigterm, train_command, lambda run: os.killpg(run.pid, signal.SIGTERM), reference_dir)
    assert status == 128 + signal.SIGTERM  # a scheduler reads "ended by SIGTERM" and may requeue


@pytest.mark.slow
def test_sigkill_while_saving_leaves_the_previous_checkpoint_loadable_and_resume_works(tmp_path):
    run_dir = tmp_path / "run"
    victim = start(train_command(run_dir, "--slow_save_at_step", str(2 * SAVE_STEPS)), tmp_path / "victim.log")
    try:
        staging = run_dir / f".partial-checkpoint-{2 * SAVE_STEPS}" / f"checkpoint-{2 * SAVE_STEPS}"
        wait_for(lambda: (staging / "SAVING").exists(), victim)
        kill_group(victim)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    # The interrupted save left no checkpoint-8 at all, only its hidden staging folder; checkpoint-4 is whole.
    assert sorted(path.name for path in run_dir.glob("checkpoint-*")) == [f"checkpoint-{SAVE_STEPS}"]
    assert (staging / "model.safetensors").exists() and not (staging / "optimizer.pt").exists()
    from transformers.trainer_utils import get_last_checkpoint

    previous = run_dir / f"checkpoint-{SAVE_STEPS}"
    assert get_last_checkpoint(str(run_dir)) == str(previous)
    assert json.loads((previous / "trainer_state.json").read_text())["global_step"] == SAVE_STEPS
    from hf_deit import DistilledDeiTForImageClassification

    DistilledDeiTForImageClassification.from_pretrained(previous)

    # Resuming explicitly from it completes the run and clears the staging folder.
    command = train_command(run_dir, extra=("--resume_from_checkpoint", str(previous)))
    resumed = start(command, tmp_path / "resumed.log")
    finish(resumed, tmp_path / "resumed.log")
    assert not list(run_dir.glob(".partial-*"))
    assert (run_dir / "model.safetensors").exists()
    assert {path.name for path in run_dir.glob("checkpoint-*")} == {f"checkpoint-{2 * SAVE_STEPS}", f"checkpoint-{MAX_STEPS}"}


# ---------------------------------------------------------------------------------------------- same settings only


def run_in_process(output_dir, *extra):
    import train

    return train.main([
        "--dataset_name", "digits", "--max_eval_samples", "32", "--output_dir", str(output_dir), "--image_size", "16",
        "--config_overrides", "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,patch_size=8",
        "--max_steps", "2", "--per_device_train_batch_size", "16", "--save_strategy", "steps", "--save_steps", "2",
        "--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--distillation_type", "none", *extra,
    ])  # fmt: skip


def test_a_rerun_with_other_settings_is_refused_and_the_card_stays_true(tmp_path):
    out = tmp_path / "run"
    run_in_process(out, "--distillation_alpha", "0.5")
    card, weights = (out / "README.md").read_text(), (out / "model.safetensors").read_bytes()
    assert "Distillation weight alpha: 0.5" in card
    # Other settings: refused before any work, naming each difference and both ways out; nothing is rewritten.
    with pytest.raises(ValueError) as refused:
        run_in_process(out, "--distillation_alpha", "0.3", "--seed", "3", "--learning_rate", "1e-3")
    message = str(refused.value)
    assert "--distillation_alpha: 0.5 there, 0.3 now" in message and "--seed: 42 there, 3 now" in message
    assert "--learning_rate: unset there, 0.001 now" in message  # sized to the run there, not "None"
    assert "another --output_dir" in message and "--overwrite_output_dir true" in message
    assert (out / "README.md").read_text() == card and (out / "model.safetensors").read_bytes() == weights
    # The same settings (and flags that do not shape the weights) resume the finished run: nothing is trained, not
    # even the one step past the schedule that Trainer.train resumed at the last step would take.
    run_in_process(out, "--distillation_alpha", "0.5", "--logging_steps", "1", "--max_eval_samples", "16")
    assert not (out / "checkpoint-3").exists()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert (out / "model.safetensors").read_bytes() == weights
    # A checkpoint of another run, given by path, is refused too.
    with pytest.raises(ValueError, match="saved by a run with other settings"):
        run_in_process(tmp_path / "other", "--distillation_alpha", "0.3", "--resume_from_checkpoint",
                       str(out / "checkpoint-2"))  # fmt: skip
    # Asked explicitly: the old checkpoints go, the run starts fresh, and the card describes the new weights.
    run_in_process(out, "--distillation_alpha", "0.3", "--overwrite_output_dir", "true")
    assert "Distillation weight alpha: 0.3" in (out / "README.md").read_text()
    assert json.loads((out / "run_settings.json").read_text())["distillation_alpha"] == 0.3
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][-1].get("train_loss") is not None


# --------------------------------------------------------------------------------------------- stopped on a signal


def stop_and_resume(tmp_path, launch, signal_to, reference_dir):
    """Starts a run, sends SIGTERM when its first checkpoint exists (`signal_to`: the whole process group, as SLURM and
    a terminal do, or the launcher alone, as Kubernetes does), checks how it stopped, reruns the same command and
    checks that the result is the uninterrupted run's."""
    run_dir = tmp_path / "run"
    victim = start(launch(run_dir, "--slow_steps_after", str(SAVE_STEPS)), tmp_path / "victim.log")
    try:
        wait_for(lambda: (run_dir / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json").exists(), victim, timeout=240)
        signalled = time.monotonic()
        signal_to(victim)
        victim.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    log = (tmp_path / "victim.log").read_text()
    assert victim.returncode != 0 and took < 20, (victim.returncode, took, log[-3000:])
    assert "SIGTERM received: finishing the current step, saving a checkpoint" in log
    stopped = [int(step) for step in re.findall(r"Training stopped on SIGTERM after step (\d+)", log)]
    assert stopped and len(set(stopped)) == 1 and SAVE_STEPS < stopped[0] < MAX_STEPS, log[-3000:]  # one step for all
    checkpoint = run_dir / f"checkpoint-{stopped[0]}"
    assert f"its state is saved in {checkpoint}. Run the same command again to resume" in log
    assert (checkpoint / "trainer_state.json").exists() and not list(run_dir.glob(".partial-*"))
    assert not (run_dir / "model.safetensors").exists()  # the run did not go on to save a final model

    resumed = start(launch(run_dir), tmp_path / "resumed.log")
    finish(resumed, tmp_path / "resumed.log", timeout=300)
    assert f"Resuming from {checkpoint}" in (tmp_path / "resumed.log").read_text()
    assert_same_run(run_dir, reference_dir)
    return victim.returncode


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tmp_path):
    victim = start(train_command(tmp_path / "run", "--slow_steps_after", "0"), tmp_path / "victim.log")
    try:
        wait_for(lambda: "{'loss'" in (tmp_path / "victim.log").read_text(), victim, timeout=120)
        os.killpg(victim.pid, signal.SIGINT)
        time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGINT)
        victim.wait(timeout=10)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    assert victim.returncode in (-signal.SIGINT, 128 + signal.SIGINT, 1)
    assert "KeyboardInterrupt" in (tmp_path / "victim.log").read_text()


def two_process_command(output_dir, *launcher_options):
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--main_process_port", "0", "--num_cpu_threads_per_process", "1",
            *train_command(output_dir, *launcher_options)[1:]]  # fmt: skip


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_both_processes_after_the_same_step_and_the_rerun_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # two gloo processes
    reference_dir = tmp_path / "reference"
    reference = start(two_process_command(reference_dir), tmp_path / "reference.log")
    finish(reference, tmp_path / "reference.log", timeout=300)
    stop_and_resume(tmp_path, two_process_command, lambda run: os.kill(run.pid, signal.SIGTERM), reference_dir)


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_within_a_minute_naming_it_and_the_checkpoint(tmp_path, monkeypatch):
    import psutil

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    run_dir = tmp_path / "run"
    launcher = start(two_process_command(run_dir, "--slow_steps_after", str(SAVE_STEPS)), tmp_path / "run.log")
    try:
        wait_for(lambda: (run_dir / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json").exists(), launcher, timeout=240)
        ranks = {int(child.environ()["RANK"]): child for child in psutil.Process(launcher.pid).children()
                 if "RANK" in child.environ()}  # fmt: skip
        killed = time.monotonic()
        ranks[1].kill()  # SIGKILL: no handler runs, as when the out-of-memory killer strikes
        launcher.wait(timeout=90)
        took = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    log = (tmp_path / "run.log").read_text()
    assert launcher.returncode != 0 and took < 60, (took, log[-3000:])
    assert re.search(r"Rank 1 of this run was lost: its process \(pid \d+ on this host\) is gone", log), log[-3000:]
    assert f"The newest complete checkpoint is {run_dir / f'checkpoint-{SAVE_STEPS}'}" in log


def run_teacher_in_process(output_dir, *extra):
    import train_teacher

    return train_teacher.main([
        "--dataset_name", "digits", "--max_eval_samples", "32", "--output_dir", str(output_dir), "--image_size", "16",
        "--config_overrides", "hidden_sizes=[8,16],depths=[1,1],embedding_size=8", "--max_steps", "2",
        "--per_device_train_batch_size", "16", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", *extra,
    ])  # fmt: skip


def test_the_teacher_script_resumes_by_the_same_rule(tmp_path, caplog):
    """train_teacher.py runs the sequence train.py runs (hf_deit.run): --resume_from_checkpoint resolved and checked
    against the run's settings, a rerun with the same settings resumes where the last one ended."""
    out = tmp_path / "teacher"
    with pytest.raises(ValueError, match="no checkpoint-<step> folder"):
        run_teacher_in_process(out, "--resume_from_checkpoint", "auto")
    run_teacher_in_process(out, "--learning_rate", "0.002")
    assert json.loads((out / "run_settings.json").read_text())["learning_rate"] == 0.002
    with pytest.raises(ValueError, match="saved by a run with other settings: --learning_rate"):
        run_teacher_in_process(tmp_path / "other", "--learning_rate", "0.001", "--resume_from_checkpoint",
                               str(out / "checkpoint-2"))  # fmt: skip
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run_teacher_in_process(out, "--learning_rate", "0.002", "--resume_from_checkpoint", "false")
    caplog.set_level("INFO", logger="hf_deit.checkpointing")
    run_teacher_in_process(out, "--learning_rate", "0.002", "--logging_steps", "1")  # resumes the finished run
    assert any(message.startswith(f"Resuming from {out / 'checkpoint-2'}") for message in caplog.messages)
    assert not (out / "checkpoint-3").exists()
