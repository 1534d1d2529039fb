"""Numerical faults: a NaN/inf loss stops training before the bad update, names the step and the loss term, and
leaves a loadable checkpoint of the last good state."""

import json
import time

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.callbacks import NonFiniteLossError, NonFiniteLossGuard
from hf_deit.arguments import DistillationConfig
from hf_deit.trainer import DistillationTrainer

NUM_LABELS = 4


class Images(torch.utils.data.Dataset):
    def __init__(self, count=64):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, 16, 16, generator=generator)
        self.labels = torch.randint(NUM_LABELS, (count,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


class TeacherGoingInfinite(nn.Module):
    """A fixed linear teacher whose logits become +inf from its `bad_call`-th training call on."""

    def __init__(self, bad_call: int):
        super().__init__()
        self.linear = nn.Linear(3 * 16 * 16, NUM_LABELS)
        self.calls, self.bad_call = 0, bad_call

    def forward(self, pixel_values):
        self.calls += 1
        logits = self.linear(pixel_values.flatten(1))
        return logits + float("inf") if self.calls >= self.bad_call else logits


def student():
    torch.manual_seed(0)
    config = DistilledDeiTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_labels=NUM_LABELS,
        drop_path_rate=0.0,
    )  # fmt: skip
    return DistilledDeiTForImageClassification(config)


def arguments(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=6, learning_rate=1e-3, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        weight_decay=0.0, lr_scheduler_type="linear", warmup_steps=0, eval_strategy="no", bf16=False,
    )  # plain TrainingArguments defaults where DeiT's recipe differs  # fmt: skip
    return DistillationConfig(**{**values, **overrides})


@pytest.mark.slow
def test_inf_from_the_teacher_stops_at_that_step_naming_the_term_and_saves_the_last_good_state(tmp_path):
    model = student()
    trainer = DistillationTrainer(
        model=model, args=arguments(tmp_path, distillation_type="soft"), train_dataset=Images(),
        teacher=TeacherGoingInfinite(bad_call=4),
    )  # fmt: skip
    before_bad_step = {}

    original_step = trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        if trainer.state.global_step == 3:
            before_bad_step.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original_step(model, inputs, num_items_in_batch)

    trainer.training_step = training_step
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.train()
    error = raised.value
    assert error.step == 4 and error.terms == ["loss_distillation"]
    message = str(error)
    assert "step 4" in message and "loss_distillation" in message and "teacher" in message
    # The bad step never reached the weights; the checkpoint holds the state before it and is complete.
    assert error.checkpoint == str(tmp_path / "checkpoint-3")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before_bad_step[name]), name
        assert torch.isfinite(tensor).all()
    saved = load_file(tmp_path / "checkpoint-3" / "model.safetensors")
    assert all(torch.equal(saved[name], before_bad_step[name]) for name in saved)
    assert json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    assert (tmp_path / "checkpoint-3" / "optimizer.pt").exists()


@pytest.mark.slow
def test_absurd_learning_rate_overflow_is_caught_in_the_class_term(tmp_path):
    # fp32 overflow from a diverging run: weights blow up, logits overflow, the loss becomes inf/NaN.
    trainer = DistillationTrainer(
        model=student(), args=arguments(tmp_path, learning_rate=1e12, max_steps=30, lr_scheduler_type="constant",
                                        max_grad_norm=0.0, distillation_type="none"),
        train_dataset=Images())  # fmt: skip
    with pytest.raises(NonFiniteLossError) as raised:
        trainer.train()
    assert "loss_cls" in raised.value.terms
    assert 1 < raised.value.step <= 30
    state = trainer.model.state_dict()
    assert all(torch.isfinite(tensor).all() for tensor in state.values()), "a non-finite update reached the weights"


def test_guard_reads_the_flags_once_and_resets():
    guard = NonFiniteLossGuard()
    guard.observe(torch.tensor([1.0, 2.0]), ("a", "b"))
    guard.observe(torch.tensor([1.0, float("nan")]), ("a", "b"))  # micro-batches of one step are OR-ed
    with pytest.raises(NonFiniteLossError, match="b became NaN or infinite at step 7"):
        guard.check(7)
    guard.check(8)  # reset: nothing seen since
    guard.observe(torch.tensor([1.0, 2.0]), ("a", "b"))
    guard.check(9)


def test_guard_overhead_is_small():
    """The per-step cost of observing and checking (the host read is one bool) on CPU: microseconds."""
    guard, terms = NonFiniteLossGuard(), torch.tensor([1.0, 2.0])
    start = time.perf_counter()
    for step in range(2000):
        guard.observe(terms, ("a", "b"))
        guard.check(step)
    per_step = (time.perf_counter() - start) / 2000
    assert per_step < 1e-3, f"{per_step * 1e6:.0f} us per step"
