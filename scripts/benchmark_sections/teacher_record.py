"""Recorded teacher outputs (`hf_deit.teacher_record`): the time per training step with no distillation, with the live
teacher and from a record, side by side; the teacher's speed when recording; and the cost of a three-run sweep with
and without the record.

A training step is the student's forward and backward passes, the loss and an AdamW step on a pre-made batch (the
data pipeline, the same in all three, is left out): with no distillation; with hard distillation from the live
teacher (its forward pass in eval mode, no gradients, added); with hard distillation from a record on disk (the batch's
argmax read by `TeacherRecord.outputs`). Recording runs the same teacher at `record_batch_size`. timm teachers with
random weights; the contenders take turns each round and the medians are reported.

Heavy with the paper's teacher (RegNetY-16GF at 224 px), so it runs only when asked for by name
(`--sections teacher_record`, then with `PAPER_TEACHERS` unless `--record_teachers` names others) or when the settings
name its teachers (the quick mode's tiny one).
"""

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from .common import BenchmarkSettings, _image_size, build_ours, build_timm

NAME = "teacher_record"
# The paper's teacher, and a smaller one beside it.
PAPER_TEACHER = "regnety_160"
PAPER_TEACHERS = (PAPER_TEACHER, "regnety_016")
# The bounds: a step from the record at most 1.05x the undistilled one; a three-run sweep (recording included)
# at most half of three live runs with the paper's teacher; recording at least as fast per image as the live teacher.
RECORD_STEP_BOUND, SWEEP_BOUND, RECORDING_SPEED_BOUND = 1.05, 0.5, 1.0


def enabled(settings: BenchmarkSettings) -> bool:
    return bool(settings.record_teachers) or (settings.sections is not None and NAME in settings.sections)


def measure(settings: BenchmarkSettings, results: dict, log: Callable[[str], None]) -> list[dict]:
    return teacher_record_section(settings, settings.record_teachers or PAPER_TEACHERS, log)


def targets(results: dict) -> list[dict]:
    found = []
    for entry in results.get(NAME, []):
        teacher = entry["teacher"]
        found.append({"target": f"hard step from the record ({teacher}) <= {RECORD_STEP_BOUND}x the undistilled step",
                      "value": entry["record_over_plain"], "met": entry["record_over_plain"] <= RECORD_STEP_BOUND})
        found.append({"target": f"recording {teacher}: per image >= {RECORDING_SPEED_BOUND}x the live teacher's speed",
                      "value": entry["recording_speed_over_live"],
                      "met": entry["recording_speed_over_live"] >= RECORDING_SPEED_BOUND})  # fmt: skip
        if teacher == PAPER_TEACHER:
            ratio = entry["three_run_sweep_with_record_over_without"]
            found.append({"target": f"three-run sweep with {teacher}: with the record <= {SWEEP_BOUND}x without",
                          "value": ratio, "met": ratio <= SWEEP_BOUND})  # fmt: skip
    return found


def markdown(results: dict) -> list[str]:
    entries = results.get(NAME, [])
    if not entries:
        return []
    lines = ["## Recorded teacher outputs (hard distillation): seconds per training step, median", "",
             "| student | teacher | batch | px | no distillation | live teacher | from the record | live / plain | "
             "record / plain | teacher s/image in training | recording | recording speed / live | "
             "three-run sweep, with / without record |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in entries:
        seconds, teacher = e["seconds_per_step"], e["teacher_seconds_per_image"]
        lines.append(f"| {e['student']} | {e['teacher']} | {e['batch_size']} | {e['image_size']} | "
                     f"{seconds['plain']:.3f} | {seconds['live']:.3f} | {seconds['record']:.3f} | "
                     f"{e['live_over_plain']:.2f} | {e['record_over_plain']:.2f} | {teacher['inside training']:.4f} | "
                     f"{teacher['recording']:.4f} (batch {e['record_batch_size']}) | "
                     f"{e['recording_speed_over_live']:.2f} | {e['three_run_sweep_with_record_over_without']:.2f} |")
    lines += ["", "A sweep of three runs of S steps: three live runs (3 S live steps) against one recording of the "
              "S x batch views and three runs from the record (3 S record steps); S cancels out."]  # fmt: skip
    return lines


def write_record(folder: str, views: int, num_classes: int):
    """A record of one epoch of `views` single-image views (argmax only) in the recorder's file format: what a run
    reads from disk per step, without recording a dataset first."""
    from hf_deit.teacher_record import FORMAT_VERSION, MANIFEST_NAME, TeacherRecord, _ShardWriter

    writer = _ShardWriter(folder, "train-epoch0000")
    generator = torch.Generator().manual_seed(0)
    writer.add({"argmax": torch.randint(num_classes, (views,), generator=generator).to(torch.int16),
                "view_key": torch.arange(views, dtype=torch.long) * views + torch.arange(views)})  # fmt: skip
    writer.flush()
    manifest = {"format": FORMAT_VERSION, "views": {"training images": {"rows": views}, "mixup/cutmix": "off"},
                "outputs": {"kinds": ["argmax"], "top_k": None, "stage": None}, "num_classes": num_classes,
                "shards": {"0": writer.files}, "teacher": {"name": "benchmark"}}  # fmt: skip
    with open(os.path.join(folder, MANIFEST_NAME), "w") as file:
        json.dump(manifest, file)
    return TeacherRecord.open(folder)


def _timed(fn: Callable[[], object]) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def teacher_record_section(settings: BenchmarkSettings, teachers: tuple[str, ...],
                           log: Callable[[str], None]) -> list[dict]:  # fmt: skip
    """The measurement (see the module docstring) for the student `settings.train_models[0]` at the settings'
    geometry, batch `settings.train_batch_size`, against each timm teacher of `teachers`."""
    import timm

    from hf_deit.losses import DistillationLoss
    from hf_deit.teacher import Teacher

    model_name, size = settings.train_models[0], _image_size(settings.geometry)
    num_classes = (settings.geometry or {}).get("num_classes", 1000)
    student = build_ours(build_timm(model_name, settings.geometry), "sdpa").train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    batch_size, rounds = settings.train_batch_size, settings.rounds
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    labels = torch.randint(num_classes, (batch_size,), generator=generator)
    plain, hard = DistillationLoss("none"), DistillationLoss("hard")

    def step(loss, teacher_logits=None):
        outputs = student(pixel_values=pixel_values)
        loss(outputs.cls_logits, outputs.distillation_logits, labels, teacher_logits).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results = []
    with tempfile.TemporaryDirectory() as folder:
        record = write_record(folder, batch_size * (rounds + 1), num_classes)
        for teacher_name in teachers:
            torch.manual_seed(1)
            teacher = Teacher(timm.create_model(teacher_name, num_classes=num_classes, pretrained=False))
            record_batch = torch.randn(settings.record_batch_size, 3, size, size, generator=generator)
            log(f"{NAME}: {teacher_name}, {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f} M parameters")
            times = {"plain": [], "live": [], "record": [], "teacher_live": [], "teacher_recording": []}
            for round_index in range(rounds + 1):  # the first round warms up (first-call allocations) and is dropped
                first = round_index * batch_size
                views = torch.stack([torch.zeros(batch_size, dtype=torch.long), torch.arange(first, first + batch_size),
                                     torch.arange(first, first + batch_size)], dim=1)  # fmt: skip
                seconds = {}

                def plain_step():
                    step(plain)

                def live_step():
                    tic = time.perf_counter()
                    teacher_logits = teacher(pixel_values).logits
                    seconds["teacher_live"] = (time.perf_counter() - tic) / batch_size
                    step(hard, teacher_logits)

                def record_step():
                    step(hard, record.outputs(views, num_classes=num_classes, device=pixel_values.device).logits)

                def recording_pass():
                    teacher(record_batch)

                contenders = [("plain", plain_step), ("live", live_step), ("record", record_step),
                              ("teacher_recording", recording_pass)]  # fmt: skip
                # Each round starts one further along, so that no contender always follows the same one (the large
                # recording pass leaves the caches cold for whatever comes next).
                shift = round_index % len(contenders)
                for name, contender in contenders[shift:] + contenders[:shift]:
                    seconds[name] = _timed(contender)
                seconds["teacher_recording"] /= settings.record_batch_size
                if round_index == 0:
                    continue
                for name, value in seconds.items():
                    times[name].append(value)
                log(f"{teacher_name} round {round_index}: " + ", ".join(f"{k} {v[-1]:.4f} s" for k, v in times.items()))
            median = {name: statistics.median(values) for name, values in times.items()}
            # Three runs of S steps: 3 S live steps, or a recording of S x batch views and 3 S steps from the record.
            live_sweep = 3 * median["live"]
            record_sweep = batch_size * median["teacher_recording"] + 3 * median["record"]
            results.append({
                "student": model_name, "teacher": teacher_name, "batch_size": batch_size, "image_size": size,
                "num_classes": num_classes, "rounds": rounds, "record_batch_size": settings.record_batch_size,
                "seconds_per_step": {name: median[name] for name in ("plain", "live", "record")},
                "live_over_plain": median["live"] / median["plain"],
                "record_over_plain": median["record"] / median["plain"],
                "teacher_seconds_per_image": {"inside training": median["teacher_live"],
                                              "recording": median["teacher_recording"]},
                "recording_speed_over_live": median["teacher_live"] / median["teacher_recording"],
                "three_run_sweep_with_record_over_without": record_sweep / live_sweep,
            })  # fmt: skip
    return results
