"""Recorded teacher outputs (`hf_deit.teacher_record`): what a training step costs with no distillation, with the
live teacher and from a record, and what a three-run sweep costs with and without a record, its recording included.

Every contender runs on `settings.device` (synchronised there), in turn, for at least `MIN_ROUNDS` measured rounds
after a warm-up one; the median and the spread (min-max) are reported. A step is the student's forward and backward
passes, the loss and an AdamW step: with no distillation; with hard distillation from the live teacher (its forward
pass added); from a record on disk (`RecordedTeacher` reading the batch's argmax). The data pipeline (decoding, DeiT's
train transforms, mixup collation of encoded images) is timed per batch beside them: every run pays it, live or from
the record. Recording a batch is its whole cost: the pipeline, the teacher's pass and writing the outputs to disk
(`hf_deit.recording`). A sweep of three runs of S steps: 3 S (pipeline + live step) without a record; with one, the
recording of S batches and 3 S (pipeline + step from the record). timm teachers with random weights.

Heavy with the paper's teacher (RegNetY-16GF at 224 px), so it runs only when asked for by name
(`--sections teacher_record`, then with `PAPER_TEACHERS` unless `--record_teachers` names others) or when the settings
name its teachers (the quick mode's tiny one).
"""

import json
import os
import statistics
import tempfile
from collections.abc import Callable

import torch

from .common import BenchmarkSettings, _image_size, build_ours, build_timm, time_call
from .data import make_image_dataset

NAME = "teacher_record"
# The paper's teacher, and a smaller one beside it.
PAPER_TEACHER = "regnety_160"
PAPER_TEACHERS = (PAPER_TEACHER, "regnety_016")
# The bounds: a step from the record at most 1.05x the undistilled one; a three-run sweep (recording included) at most
# half of three live runs with the paper's teacher.
RECORD_STEP_BOUND, SWEEP_BOUND = 1.05, 0.5
MIN_ROUNDS = 5


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
        if teacher == PAPER_TEACHER:
            ratio = entry["three_run_sweep_with_record_over_without"]
            found.append({"target": f"three-run sweep with {teacher}, recording included: with the record <= "
                                    f"{SWEEP_BOUND}x without", "value": ratio, "met": ratio <= SWEEP_BOUND})
    return found


def markdown(results: dict) -> list[str]:
    entries = results.get(NAME, [])
    if not entries:
        return []
    lines = ["## Recorded teacher outputs (hard distillation): seconds per batch, median (min-max)", "",
             "| device | student | teacher | batch | px | rounds | pipeline | no distillation | live teacher | from the "
             "record | recording a batch of `record_batch_size` (pipeline + teacher + write) | record / plain | three-run sweep, with / without "
             "record |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in entries:
        cell = lambda name: "{median:.4f} ({min:.4f}-{max:.4f})".format(**e["seconds"][name])
        lines.append(f"| {e['device']} | {e['student']} | {e['teacher']} | {e['batch_size']} | {e['image_size']} | "
                     f"{e['rounds']} | {cell('pipeline')} | {cell('plain')} | {cell('live')} | {cell('record')} | "
                     f"{cell('recording')} (batch {e['record_batch_size']}) | {e['record_over_plain']:.2f} | "
                     f"{e['three_run_sweep_with_record_over_without']:.2f} |")
    lines += ["", "Three runs of S steps: 3 S x (pipeline + live step) without a record; with one, S recorded batches "
              "(pipeline, teacher, writes) and 3 S x (pipeline + step from the record); S cancels out."]
    return lines


def write_record(folder: str, views: int, num_classes: int):
    """A record of one epoch of `views` single-image views (argmax only), written by the recorder's writer in its
    format: what a run reads from disk per step, without recording a dataset first."""
    from hf_deit.recording import _Writer
    from hf_deit.teacher_record import FORMAT_VERSION, MANIFEST_NAME, RecordedTeacher

    writer = _Writer(folder, "epoch0000")
    argmax = torch.randint(num_classes, (views,), generator=torch.Generator().manual_seed(0)).to(torch.int16)
    writer.add(0, views, torch.arange(views), {"argmax": argmax})
    manifest = {"format": FORMAT_VERSION, "views": {"mixup/cutmix": "off"}, "num_classes": num_classes,
                "outputs": {"kinds": ["argmax"], "top_k": None, "stage": None}, "shards": {"0": writer.flush()},
                "teacher": {"name": "benchmark"}, "teacher_report": None,
                "shapes": {"features": None, "attention_map": None, "stage_maps": None}}
    with open(os.path.join(folder, MANIFEST_NAME), "w") as file:
        json.dump(manifest, file)
    return RecordedTeacher(folder)


def _pipeline(settings: BenchmarkSettings, size: int, batch_size: int, num_classes: int):
    """A function giving the next batch of training views of encoded images: decode, DeiT's train transforms, mixup."""
    from datasets import DatasetDict

    from hf_deit.data import AugmentationArguments, apply_transforms, build_collator, build_train_transform
    from hf_deit.data.samplers import PositionSeededCollator, PositionSeededDataset, PositionSeededSampler

    recipe = AugmentationArguments(image_size=size).resolved()
    images = make_image_dataset(max(2 * batch_size, 8), size, num_classes)
    train = apply_transforms(DatasetDict(train=images), build_train_transform(recipe), build_train_transform(recipe))
    views = torch.utils.data.BatchSampler(PositionSeededSampler(torch.utils.data.RandomSampler(train["train"]), 0),
                                          batch_size, drop_last=True)  # fmt: skip
    loader = torch.utils.data.DataLoader(PositionSeededDataset(train["train"]), batch_sampler=views,
                                         collate_fn=PositionSeededCollator(build_collator(recipe, num_classes)))
    state = {"iterator": iter(loader)}

    def next_batch():
        try:
            return next(state["iterator"])
        except StopIteration:
            state["iterator"] = iter(loader)
            return next(state["iterator"])

    return next_batch


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def teacher_record_section(settings: BenchmarkSettings, teachers: tuple[str, ...],
                           log: Callable[[str], None]) -> list[dict]:  # fmt: skip
    """The measurement (see the module docstring) for the student `settings.train_models[0]` at the settings'
    geometry, batch `settings.train_batch_size`, against each timm teacher of `teachers`, on `settings.device`."""
    import timm

    from hf_deit.losses import DistillationLoss
    from hf_deit.recording import _Writer
    from hf_deit.teacher import Teacher
    from hf_deit.teacher_record import _outputs_to_store, RecordPlan

    device, rounds = settings.device, max(settings.rounds, MIN_ROUNDS)
    model_name, size = settings.train_models[0], _image_size(settings.geometry)
    num_classes, batch_size = (settings.geometry or {}).get("num_classes", 1000), settings.train_batch_size
    student = build_ours(build_timm(model_name, settings.geometry), "sdpa").train().to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator).to(device)
    labels = torch.randint(num_classes, (batch_size,), generator=generator).to(device)
    plain, hard = DistillationLoss("none"), DistillationLoss("hard")
    next_batch = _pipeline(settings, size, batch_size, num_classes)
    next_recorded_batch = _pipeline(settings, size, settings.record_batch_size, num_classes)

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
            teacher = Teacher(timm.create_model(teacher_name, num_classes=num_classes, pretrained=False)).to(device)
            log(f"{NAME}: {teacher_name}, {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f} M parameters, "
                f"on {device}")
            writer, position = _Writer(folder, f"recording-{teacher_name}"), {"next": 0}

            def recording():  # the whole cost of recording a batch: its views, the teacher, the write
                batch = next_recorded_batch()
                stored = _outputs_to_store(teacher(batch["pixel_values"].to(device)), RecordPlan(1), None)
                start = position["next"]
                position["next"] += len(stored["argmax"])
                writer.add(start, position["next"], torch.arange(start, position["next"]), stored)
                writer.flush()

            def from_record():
                first = position.setdefault("read", 0) % (batch_size * rounds)
                position["read"] += batch_size
                views = torch.stack([torch.zeros(batch_size, dtype=torch.long), torch.arange(first, first + batch_size),
                                     torch.arange(first, first + batch_size)], dim=1)  # fmt: skip
                step(hard, record(pixel_values, views=views).logits)

            contenders = {"pipeline": next_batch, "plain": lambda: step(plain),
                          "live": lambda: step(hard, teacher(pixel_values).logits), "record": from_record,
                          "recording": recording}  # fmt: skip
            times = {name: [] for name in contenders}
            for round_index in range(rounds + 1):  # the first round warms up and is dropped
                names = list(contenders)[round_index % len(contenders):] + list(contenders)[:round_index % len(contenders)]
                for name in names:  # each round starts one further along: no contender always follows the same one
                    elapsed = time_call(contenders[name], device)
                    if round_index > 0:
                        times[name].append(elapsed)
                log(f"{teacher_name} round {round_index}: " + ", ".join(f"{k} {v[-1]:.4f} s" for k, v in times.items()
                                                                         if v))  # fmt: skip
            median = {name: statistics.median(values) for name, values in times.items()}
            live_sweep = 3 * (median["pipeline"] + median["live"])
            recording_per_batch = median["recording"] * batch_size / settings.record_batch_size
            record_sweep = recording_per_batch + 3 * (median["pipeline"] + median["record"])
            results.append({
                "device": device, "student": model_name, "teacher": teacher_name, "batch_size": batch_size,
                "image_size": size, "num_classes": num_classes, "rounds": rounds,
                "record_batch_size": settings.record_batch_size,
                "seconds": {name: _spread(values) for name, values in times.items()},
                "seconds_per_step": {name: median[name] for name in ("plain", "live", "record")},
                "live_over_plain": median["live"] / median["plain"],
                "record_over_plain": median["record"] / median["plain"],
                "recording_over_live_step": recording_per_batch / median["live"],
                "three_run_sweep_with_record_over_without": record_sweep / live_sweep,
            })  # fmt: skip
    return results
