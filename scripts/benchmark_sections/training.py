"""The training step: DistillationTrainer's step (student and teacher forward, loss, backward, clipping, AdamW)
against a hand-written loop over timm, and the cost of attention distillation."""

import copy
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    ATTENTION_CONTENDER,
    BenchmarkSettings,
    _image_size,
    _rate,
    _synchronize,
    build_ours,
    build_timm,
    summarize,
)

NAME = "training"


def measure(settings: BenchmarkSettings, results: dict, log: Callable[[str], None]) -> list[dict]:
    return training_section(settings, log)


def targets(results: dict) -> list[dict]:
    targets = []
    for entry in results["training"]:
        targets.append({"target": f"trainer step {entry['model']} {entry['precision']} >= 0.9x hand-written loop",
                        "value": entry["ratio"], "met": entry["ratio"] >= 0.9})
    return targets


def markdown(results: dict) -> list[str]:
    lines = []
    lines += ["## Training step (student + teacher forward, loss, backward, clipping, AdamW)", "",
              "| model | precision | batch | teacher | DistillationTrainer | hand-written loop (timm) | ratio | "
              "+ attention distillation | its step-time cost |",
              "|---|---|---|---|---|---|---|---|---|"]
    for t in results["training"]:
        s = t["images_per_s"]
        lines.append(f"| {t['model']} | {t['precision']} | {t['batch_size']} | {t['teacher']} | "
                     f"{_rate(s['ours/DistillationTrainer'])} | {_rate(s['timm/hand-written loop'])} | {t['ratio']:.2f} | "
                     f"{_rate(s[ATTENTION_CONTENDER])} | {t['attention_distillation_cost']:.2f}x |")
    return lines


def build_teacher(kind: str, num_labels: int, image_size: int) -> nn.Module:
    """A randomly initialised transformers RegNet: 'regnet-small' (CPU-sized, ~RegNetY-200MF) or 'regnety-16gf'
    (the paper's teacher's size, as timm's regnety_160)."""
    from transformers import RegNetConfig, RegNetForImageClassification

    if kind == "regnety-16gf":
        config = RegNetConfig(embedding_size=32, hidden_sizes=[224, 448, 1232, 3024], depths=[2, 4, 11, 1],
                              groups_width=112, layer_type="y", num_labels=num_labels)
    elif kind == "regnet-small":
        config = RegNetConfig(embedding_size=32, hidden_sizes=[24, 56, 152, 368], depths=[1, 1, 4, 7],
                              groups_width=8, layer_type="y", num_labels=num_labels)
    else:
        raise ValueError(f"Unknown teacher {kind!r}: use 'regnet-small' or 'regnety-16gf'.")
    torch.manual_seed(1)
    return RegNetForImageClassification(config).eval()


class _StepTimer:
    """A TrainerCallback recording the wall time of every optimizer step (from one step's end to the next's)."""

    def __init__(self, device: str):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                _synchronize(timer.device)
                timer.stamps.append(time.perf_counter())

        self.device = device
        self.stamps: list[float] = []
        self.callback = Callback()


def _train_batches(batch_size: int, size: int, num_labels: int, count: int, device: str) -> list[dict]:
    generator = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
        # Soft targets, as the mixup collator hands them to the loss.
        soft = F.one_hot(labels, num_labels).float() * 0.9 + 0.1 / num_labels
        batches.append({"pixel_values": torch.randn(batch_size, 3, size, size, generator=generator), "labels": soft})
    return batches


def training_section(settings: BenchmarkSettings, log: Callable[[str], None]) -> list[dict]:
    """One optimisation step (student forward + teacher forward + hard-distillation loss + backward + grad clipping +
    AdamW + LR schedule), images/s: `DistillationTrainer.train()` vs the same work written by hand on timm's model.

    Both start from the same weights and see the same pre-made batches (soft targets, as after mixup), so the data
    pipeline is not in it. The trainer's time per step is measured between consecutive `on_step_end` callbacks.
    """
    from transformers import default_data_collator

    from hf_deit.arguments import DistillationConfig
    from hf_deit.teacher import Teacher
    from hf_deit.trainer import DistillationTrainer

    device = settings.device
    size = _image_size(settings.geometry)
    results = []
    for model_name in settings.train_models:
        reference = build_timm(model_name, settings.geometry)
        num_labels = reference.num_classes
        batch_size = settings.train_batch_size
        steps = settings.train_steps + 1  # the first step of each round warms up
        batches = _train_batches(batch_size, size, num_labels, steps, "cpu")
        for precision in settings.train_precisions:
            bf16 = precision != "fp32"
            # The paper's stochastic depth (0.1) in both students.
            timm_model = build_timm(model_name, settings.geometry, drop_path_rate=0.1).train()
            ours = build_ours(timm_model, "sdpa", drop_path_rate=0.1).train()
            timm_model.set_distilled_training(True)
            timm_teacher = Teacher(build_teacher(settings.teacher, num_labels, size)).to(device)
            timm_model.to(device)
            timm_optimizer = torch.optim.AdamW(timm_model.parameters(), lr=5e-4, weight_decay=0.05)

            # Both loops collate the same in-memory examples with the same collator (the Trainer's default).
            rows = [dict(pixel_values=b["pixel_values"][i], labels=b["labels"][i]) for b in batches for i in range(batch_size)]
            hand_loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=default_data_collator)
            timer, attention_timer = _StepTimer(device), _StepTimer(device)
            ours_for_attention = copy.deepcopy(ours)
            with tempfile.TemporaryDirectory() as output_dir:
                settings_of_both = dict(
                    output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=5e-4,
                    weight_decay=0.05, bf16=bf16, use_cpu=device == "cpu", report_to=[], save_strategy="no",
                    eval_strategy="no", logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
                    data_seed=0, seed=0, lr_scheduler_type="linear", warmup_steps=0, distillation_type="hard",
                )
                args = DistillationConfig(**settings_of_both)
                trainer = DistillationTrainer(
                    model=ours, args=args, train_dataset=rows, teacher=build_teacher(settings.teacher, num_labels, size),
                    callbacks=[timer.callback],
                )
                # The same step plus the attention-map term: the student's last block returns its attention
                # weights (eager there, SDPA elsewhere) and the teacher's last-stage activations become a map.
                attention_trainer = DistillationTrainer(
                    model=ours_for_attention, args=DistillationConfig(**settings_of_both, attention_distillation_weight=1.0),
                    train_dataset=rows, teacher=build_teacher(settings.teacher, num_labels, size),
                    callbacks=[attention_timer.callback],
                )  # fmt: skip

                def run_trainer():
                    timer.stamps.clear()
                    trainer.train()

                def run_attention_trainer():
                    attention_timer.stamps.clear()
                    attention_trainer.train()

                def run_hand_loop():
                    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()
                    for batch in hand_loader:
                        pixel_values = batch["pixel_values"].to(device)
                        labels = batch["labels"].to(device)
                        with autocast:
                            cls_logits, dist_logits = timm_model(pixel_values)
                            with torch.no_grad():
                                teacher_logits = timm_teacher.logits(pixel_values)
                        loss = 0.5 * torch.sum(-labels * F.log_softmax(cls_logits.float(), -1), -1).mean()
                        loss = loss + 0.5 * F.cross_entropy(dist_logits.float(), teacher_logits.argmax(1))
                        loss.backward()
                        nn.utils.clip_grad_norm_(timm_model.parameters(), 1.0)
                        timm_optimizer.step()
                        timm_optimizer.zero_grad(set_to_none=True)
                        _synchronize(device)
                        hand_stamps.append(time.perf_counter())

                log(f"training {model_name} {precision} batch {batch_size}")
                step_times = {"ours/DistillationTrainer": [], "timm/hand-written loop": [], ATTENTION_CONTENDER: []}
                for _ in range(settings.rounds):
                    run_trainer()
                    step_times["ours/DistillationTrainer"] += list(_diffs(timer.stamps))
                    run_attention_trainer()
                    step_times[ATTENTION_CONTENDER] += list(_diffs(attention_timer.stamps))
                    hand_stamps = []
                    run_hand_loop()
                    step_times["timm/hand-written loop"] += list(_diffs(hand_stamps))
            stats = {name: summarize(t, batch_size) for name, t in step_times.items()}
            results.append({
                "model": model_name, "precision": precision, "batch_size": batch_size, "teacher": settings.teacher,
                "images_per_s": stats,
                "ratio": stats["ours/DistillationTrainer"]["median"] / stats["timm/hand-written loop"]["median"],
                # Step time with the attention-map term over step time without it.
                "attention_distillation_cost": stats["ours/DistillationTrainer"]["median"] / stats[ATTENTION_CONTENDER]["median"],
            })
    return results


def _diffs(stamps: list[float]) -> list[float]:
    """Durations between consecutive step ends: the first step (warm-up, and the loop's setup) is not among them."""
    return [b - a for a, b in zip(stamps, stamps[1:])]
