"""Run safety in a plain `transformers.Trainer` (`hf_deit.callbacks.add_run_safety`): SIGTERM ends the step, saves a
checkpoint and stops; the same command resumes to the weights of a run never interrupted, bit for bit; a non-finite
loss stops before the bad update with the last good state saved; the head checks speak after evaluation."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainerControl, TrainerState, TrainingArguments

from hf_deit.callbacks import HeadCheck, NonFiniteLossError, NonFiniteLossGuard, add_run_safety
from hf_deit.preemption import StopOnSignal

ROOT = Path(__file__).resolve().parents[1]
SAVE_STEPS, MAX_STEPS = 4, 12

# A user's own script: transformers' ResNet on the 8x8 digits, a plain Trainer, and the three lines of docs/reliability.md.
PLAIN_TRAINER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    from sklearn.datasets import load_digits
    from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from hf_deit.callbacks import add_run_safety
    from hf_deit.preemption import exit_status_of

    output_dir, slow_after = sys.argv[1], int(sys.argv[2])
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    train = [{"pixel_values": image, "labels": int(label)} for image, label in zip(images, digits.target)]
    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[16, 32],
                                                      depths=[1, 1], layer_type="basic", num_labels=10))
    args = TrainingArguments(output_dir=output_dir, max_steps=12, per_device_train_batch_size=16, learning_rate=1e-3,
                             save_strategy="steps", save_steps=4, logging_steps=1, report_to="none", use_cpu=True,
                             seed=7, disable_tqdm=True, dataloader_num_workers=2)


    class SlowSteps(TrainerCallback):  # timing only: the run is still going when the test sees checkpoint 4
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > slow_after:
                time.sleep(0.5)


    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[SlowSteps()])
    add_run_safety(trainer)


    def main():
        trainer.train(resume_from_checkpoint=get_last_checkpoint(output_dir))
        trainer.save_model()
        trainer.save_state()


    sys.exit(exit_status_of(main))
    """
)


def run_plain_trainer(script, output_dir, log_path, slow_after=MAX_STEPS):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(script), str(output_dir), str(slow_after)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def wait(process, log_path, timeout=240):
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return Path(log_path).read_text()


def losses(output_dir):
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.slow
def test_a_plain_trainer_stops_on_sigterm_with_a_checkpoint_and_resumes_to_the_uninterrupted_weights(tmp_path):
    script = tmp_path / "own_script.py"
    script.write_text(PLAIN_TRAINER_SCRIPT)
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    reference = run_plain_trainer(script, reference_dir, tmp_path / "reference.log")
    victim = run_plain_trainer(script, run_dir, tmp_path / "victim.log", slow_after=SAVE_STEPS)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json").exists():
            assert victim.poll() is None and time.monotonic() < deadline, (tmp_path / "victim.log").read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGTERM)  # the whole group, DataLoader workers too, as SLURM and a terminal do
        log = wait(victim, tmp_path / "victim.log", timeout=60)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    assert victim.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert "SIGTERM received: finishing the current step, saving a checkpoint" in log
    stopped = int(log.split("Training stopped on SIGTERM after step ")[1].split(";")[0])
    assert SAVE_STEPS < stopped < MAX_STEPS
    assert (run_dir / f"checkpoint-{stopped}" / "trainer_state.json").exists()
    assert not (run_dir / "model.safetensors").exists()  # the script did not go on as if training had finished

    resumed = run_plain_trainer(script, run_dir, tmp_path / "resumed.log")
    log = wait(resumed, tmp_path / "resumed.log")
    assert resumed.returncode == 0, log[-3000:]
    assert wait(reference, tmp_path / "reference.log") and reference.returncode == 0
    reference_weights, resumed_weights = (load_file(folder / "model.safetensors") for folder in (reference_dir, run_dir))
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(resumed_weights[name], tensor), f"{name} differs after resuming"  # bit-identical on CPU
    assert losses(run_dir) == losses(reference_dir)[-len(losses(run_dir)) :]


class Ones(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, index):
        return {"pixel_values": torch.ones(1, 8, 8), "labels": index % 10}


def tiny_resnet():
    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[16],
                                                     depths=[1], layer_type="basic", num_labels=10))


def test_a_plain_trainer_stops_before_a_non_finite_update_and_saves_the_last_good_state(tmp_path):
    """A plain Trainer reports no loss terms: the guard reads the gradients before the optimizer step."""
    model = tiny_resnet()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=8, report_to="none",
                             use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=1)  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=Ones())
    add_run_safety(trainer)
    good = {}

    def poison_the_third_step(module, inputs, output):  # the logits of the third step are NaN
        if trainer.state.global_step == 2:
            good.update({name: value.detach().clone() for name, value in model.state_dict().items()})
            return output * float("nan")
        return output

    model.classifier.register_forward_hook(poison_the_third_step)
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.train()
    assert raised.value.step == 3 and raised.value.checkpoint == str(tmp_path / "checkpoint-2")
    assert all(torch.equal(value, good[name]) for name, value in model.state_dict().items())  # never updated
    saved = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert all(torch.equal(saved[name], good[name]) for name in saved)


def test_the_callbacks_are_added_to_any_trainer_with_the_preemption_stop_last(tmp_path):
    """StopOnSignal ends train() from `on_train_end`: the other callbacks see the end first."""
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = Trainer(model=tiny_resnet(), args=args, train_dataset=Ones())
    guard = add_run_safety(trainer)
    callbacks = trainer.callback_handler.callbacks
    assert isinstance(guard, NonFiniteLossGuard) and guard in callbacks
    assert isinstance(callbacks[-1], StopOnSignal)


def test_head_checks_read_the_evaluation_metrics_of_any_trainer(caplog):
    model = tiny_resnet()
    collapsed = {"eval_accuracy": 0.37, "eval_cls_accuracy": 0.89, "eval_distillation_accuracy": 0.33,
                 "eval_cls_majority_share": 0.11, "eval_distillation_majority_share": 0.98, "eval_runtime": 1.0}  # fmt: skip
    args, control = TrainingArguments(output_dir="unused", report_to="none"), TrainerControl()
    with caplog.at_level("WARNING", logger="hf_deit.callbacks"):
        HeadCheck().on_evaluate(args, TrainerState(max_steps=100, global_step=10), control, metrics=collapsed, model=model)
        assert not caplog.records  # a tenth of the way: too early to judge the heads
        HeadCheck().on_evaluate(args, TrainerState(max_steps=100, global_step=50), control, metrics=collapsed, model=model)
    assert any("distillation head has collapsed" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_deit.callbacks"):  # a single-head model's metrics: nothing to say
        HeadCheck().on_evaluate(args, TrainerState(max_steps=100, global_step=50), control,
                                metrics={"eval_accuracy": 0.1, "eval_runtime": 1.0}, model=model)  # fmt: skip
    assert not caplog.records
