#!/usr/bin/env python
"""What a recorded teacher saves (hf_deit.teacher_record): the time per training step with no distillation, with the
live teacher and from the record, measured side by side in one process; the teacher's throughput when recording; and
the cost of a sweep of three runs with and without the record.

    python scripts/benchmark_teacher_record.py --output benchmarks/teacher-record-cpu          # DeiT-Tiny, 224 px
    python scripts/benchmark_teacher_record.py --teachers regnety_160 regnety_016 --batch_size 32 --rounds 3

A training step is the student's forward and backward passes, the hard-distillation loss and an AdamW step, on
pre-made batches (the data pipeline, the same in all three, is not in it); the live step adds the teacher's forward
pass (eval mode, no gradients), the replayed one reads the batch's argmax from a record on disk
(`TeacherRecord.outputs`). Recording runs the same teacher at `--record_batch_size`. The contenders take turns each
round, so that a loaded machine slows them alike; the medians are reported. timm teachers with random weights.
`teacher_record_section(settings, log)` is the same measurement as a benchmark section.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.losses import DistillationLoss
from hf_deit.teacher import Teacher
from hf_deit.teacher_record import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TeacherRecord,
    _ShardWriter,
)


def write_record(folder: str, views: int, num_classes: int) -> TeacherRecord:
    """A record of one epoch of `views` single-image views (argmax only), in the recorder's format."""
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


def _timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def teacher_record_section(settings, log) -> list[dict]:
    """The measurement (see the module docstring); `settings` has teachers, batch_size, record_batch_size, rounds,
    image_size, num_classes."""
    import timm

    torch.manual_seed(0)
    config = DistilledDeiTConfig.from_preset("deit_tiny_distilled_patch16_224", num_labels=settings.num_classes,
                                             image_size=settings.image_size, drop_path_rate=0.0)  # fmt: skip
    student = DistilledDeiTForImageClassification(config).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    batch_size, size = settings.batch_size, settings.image_size
    pixel_values = torch.randn(batch_size, 3, size, size)
    labels = torch.randint(settings.num_classes, (batch_size,))
    plain, hard = DistillationLoss("none"), DistillationLoss("hard")

    def step(loss, teacher_logits=None):
        outputs = student(pixel_values=pixel_values)
        loss(outputs.cls_logits, outputs.distillation_logits, labels, teacher_logits).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results = []
    with tempfile.TemporaryDirectory() as folder:
        record = write_record(folder, batch_size * (settings.rounds + 1), settings.num_classes)
        for teacher_name in settings.teachers:
            teacher = Teacher(timm.create_model(teacher_name, num_classes=settings.num_classes, pretrained=False))
            record_batch = torch.randn(settings.record_batch_size, 3, size, size)
            log(f"{teacher_name}: {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f} M parameters")
            step(plain)  # warm-up: first-call allocations out of the measurement
            teacher(pixel_values)
            times = {"plain": [], "live": [], "record": [], "teacher_live": [], "teacher_recording": []}
            for round_index in range(settings.rounds):
                views = torch.stack([torch.zeros(batch_size, dtype=torch.long),
                                     torch.arange(batch_size) + round_index * batch_size,
                                     torch.arange(batch_size) + round_index * batch_size], dim=1)  # fmt: skip
                times["plain"].append(_timed(lambda: step(plain)))
                teacher_seconds, last_logits = [], [None]

                def live():
                    tic = time.perf_counter()
                    last_logits[0] = teacher(pixel_values).logits
                    teacher_seconds.append(time.perf_counter() - tic)
                    step(hard, last_logits[0])

                times["live"].append(_timed(live))
                times["teacher_live"].append(teacher_seconds[-1] / batch_size)
                replay = lambda: step(hard, record.outputs(views, num_classes=settings.num_classes,
                                                           device=pixel_values.device).logits)
                times["record"].append(_timed(replay))
                times["teacher_recording"].append(_timed(lambda: teacher(record_batch)) / settings.record_batch_size)
                log(f"{teacher_name} round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in
                                                                             times.items()))  # fmt: skip
            median = {name: statistics.median(values) for name, values in times.items()}
            # A sweep of three runs of S steps: three live runs, or one recording (S x batch views) and three replays.
            steps = 1000
            live_sweep = 3 * steps * median["live"]
            record_sweep = steps * batch_size * median["teacher_recording"] + 3 * steps * median["record"]
            results.append({
                "teacher": teacher_name, "batch_size": batch_size, "image_size": size, "rounds": settings.rounds,
                "seconds_per_step": {name: median[name] for name in ("plain", "live", "record")},
                "live_over_plain": median["live"] / median["plain"],
                "record_over_plain": median["record"] / median["plain"],
                "teacher_seconds_per_image": {"inside training (batch %d)" % batch_size: median["teacher_live"],
                                              "recording (batch %d)" % settings.record_batch_size:
                                                  median["teacher_recording"]},
                "recording_speed_over_live": median["teacher_live"] / median["teacher_recording"],
                "three_run_sweep_with_record_over_without": record_sweep / live_sweep,
            })  # fmt: skip
            log(json.dumps(results[-1]))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teachers", nargs="+", default=["regnety_160", "regnety_016"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--record_batch_size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--output", help="Write the results there as JSON.")
    settings = parser.parse_args(argv)
    results = teacher_record_section(settings, log=lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}",
                                                                          flush=True))  # fmt: skip
    if settings.output:
        with open(settings.output, "w") as file:
            json.dump({"settings": vars(settings), "results": results, "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}, file, indent=1)
    return results


if __name__ == "__main__":
    main()
