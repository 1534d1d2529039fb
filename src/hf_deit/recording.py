"""Recording a teacher: its outputs over every view a training run will produce, written as a record that
`hf_deit.teacher_record.RecordedTeacher` replays (the format, and why it is exact, are described there).

The recorder iterates the run's own batches (`hf_deit.data.views.RunViews`) a round (one batch per process of the run)
at a time, so that the teacher sees the run's own batches; each epoch's slots are written in order. Under several
processes (`accelerate launch`) each records a contiguous share of every epoch's rounds into its own files, and the
first merges what all of them wrote into the manifest, written last: no file has two writers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import save_file

from .attention_maps import patch_grid
from .configuration_distilled_deit import _pair
from .data.samplers import PositionSeededCollator, PositionSeededDataset, ViewKey
from .data.views import RunViews
from .teacher import EVALUATION_EPOCH
from .teacher_record import (DIGEST_BYTES, DIGESTS_NAME, FORMAT_VERSION, MANIFEST_NAME, OUTPUT_NOUNS, VIEWS_PER_SHARD,
                             RecordPlan, _outputs_to_store, bytes_per_view, feature_map_stage, record_bytes,
                             teacher_identity, top_k_deviation)

logger = logging.getLogger(__name__)


class _Writer:
    """One process's share of a split (an epoch, or the evaluation images), a round of slots at a time, in files of
    at least `VIEWS_PER_SHARD` views named by their first slot."""

    def __init__(self, folder: str, split: str):
        self.folder, self.split, self.pending, self.files = folder, split, [], []

    def add(self, start: int, stop: int, slots: torch.Tensor, stored: dict[str, torch.Tensor]) -> None:
        """Slots [start, stop) from the `stored` rows at `slots`: a view read twice keeps its first outputs, a slot
        no row reached (a dropped last batch) zeros, and a slot outside the range is another round's."""
        first = {}
        for row, slot in enumerate(slots.tolist()):
            first.setdefault(slot, row)
        rows = torch.tensor([first.get(slot, len(slots)) for slot in range(start, stop)], dtype=torch.long)
        self.pending.append((start, stop, {name: torch.cat([values, values.new_zeros(1, *values.shape[1:])])[rows]
                                           for name, values in stored.items()}))  # fmt: skip
        if self.pending[-1][1] - self.pending[0][0] >= VIEWS_PER_SHARD:
            self.flush()

    def flush(self) -> list[dict]:
        if self.pending:
            start, stop, names = self.pending[0][0], self.pending[-1][1], self.pending[0][2]
            file = f"{self.split}-{start:010d}.safetensors"
            save_file({name: torch.cat([part[2][name] for part in self.pending]) for name in names},
                      os.path.join(self.folder, file))  # fmt: skip
            self.files.append({"file": file, "start": start, "stop": stop})
            self.pending = []
        return self.files


def _record_rounds(recorder: dict, split: str, rounds: list, layout: tuple, slot_of, share: range) -> list[dict]:
    """Run the teacher over the rounds of `share` (this process's), in groups of at least the teacher's batch within
    a round, and write their outputs; returns the files written."""
    (ranges, firsts), writer = layout, _Writer(recorder["folder"], split)
    index = np.cumsum([0] + [len(batches) for batches in rounds]).tolist()  # each round's first batch
    batches = [batch for j in share for batch in rounds[j]]
    loader = iter(torch.utils.data.DataLoader(recorder["dataset"], batch_sampler=batches, collate_fn=recorder[
        "collator"], num_workers=recorder["workers"]))  # fmt: skip
    for j in share:
        group, done = [], []
        for k in range(index[j], index[j + 1]):
            batch = next(loader)
            group.append((batch["pixel_values"], slot_of(torch.from_numpy(batch["views"]), firsts and firsts[k])))
            if k + 1 == index[j + 1] or sum(len(slots) for _, slots in group) >= recorder["teacher_batch"]:
                done.append(_run_teacher(recorder, group))
                group = []
        writer.add(*ranges[j], torch.cat([slots for slots, _ in done]),
                   {name: torch.cat([stored[name] for _, stored in done]) for name in done[0][1]})  # fmt: skip
    return writer.flush()


def _run_teacher(recorder: dict, group: list) -> tuple[torch.Tensor, dict]:
    pixel_values, tic = torch.cat([pixels for pixels, _ in group]).to(recorder["device"]), time.perf_counter()
    output = recorder["teacher"](pixel_values, **recorder["request"])
    stored = _outputs_to_store(output, recorder["plan"], recorder["stage"])
    counted, deviation = recorder["counted"], recorder["deviation"]
    counted["teacher_seconds"] += time.perf_counter() - tic
    counted["views"] += len(pixel_values)
    for name, values in top_k_deviation(output.logits, stored, recorder["tau"]).items() if deviation is not None else ():
        deviation[name] = deviation.get(name, 0.0) + float(values.double().sum())
    return torch.cat([slots for _, slots in group]), stored


def _recorder(trainer, folder: str, plan: RecordPlan, run: RunViews) -> dict:
    """What recording needs, read once from the trainer; the record's size estimated and checked against the disk."""
    config, teacher_outputs = trainer.model.config, trainer.teacher_outputs
    probe, shapes = torch.zeros(1, config.num_channels, *_pair(config.image_size), device=trainer.accelerator.device), {}
    for name in OUTPUT_NOUNS:  # what the teacher can give, at the student's size
        try:
            value = getattr(teacher_outputs(probe, **{name: True}), name)
        except (ValueError, AttributeError, RuntimeError):
            value = None
        shapes[name] = [list(item.shape[1:]) for item in value] if isinstance(value, tuple) else (
            None if value is None else list(value.shape[1:]))  # fmt: skip
    stage = feature_map_stage(trainer.objective) if plan.stage_maps else None
    if plan.stage_maps and stage is None and shapes["stage_maps"]:
        from .terms.feature_map import nearest_stage

        stage = nearest_stage([torch.zeros(1, *shape) for shape in shapes["stage_maps"]], patch_grid(config, probe))
    for kind in OUTPUT_NOUNS:
        if getattr(plan, kind) and shapes[kind] is None:
            raise ValueError(f"{kind} was asked for, but the teacher gives none at the student's input size.")
    sizes, evaluated = bytes_per_view(plan, config.num_labels, shapes, stage), len(run.evaluation or ())
    views = run.layout(run.rounds(0))[0][-1][1] * plan.epochs
    estimate = record_bytes(sizes, views, evaluated, len(run.train) + evaluated)
    logger.info("Recording %s for %d epochs: %d views + %d evaluation images, about %d bytes (%s per view, %d per "
                "image).", ", ".join(sizes), plan.epochs, views, evaluated, estimate, sizes, DIGEST_BYTES)
    return {"run": run, "plan": plan, "folder": folder, "shapes": shapes, "stage": stage, "sizes": sizes,
            "estimate": estimate, "teacher": teacher_outputs, "device": trainer.accelerator.device,
            "request": {kind: getattr(plan, kind) for kind in OUTPUT_NOUNS},
            "tau": trainer.objective.loss.tau, "teacher_batch": plan.teacher_batch_size or run.batch_size,
            "counted": {"views": 0, "teacher_seconds": 0.0}, "workers": run.workers,
            "deviation": {} if plan.top_k and plan.top_k < config.num_labels else None}  # fmt: skip


def _clear(folder: str, overwrite: bool, estimate: int) -> None:
    if os.path.exists(os.path.join(folder, MANIFEST_NAME)) and not overwrite:
        raise FileExistsError(f"{folder} already holds a record: pass another folder, or --overwrite_record true.")
    os.makedirs(folder, exist_ok=True)
    if estimate * 1.1 > shutil.disk_usage(folder).free:
        raise OSError(f"The record needs about {estimate} bytes and {folder} has {shutil.disk_usage(folder).free} "
                      "free: free space, record fewer kinds (a smaller --top_k), or choose another folder.")
    for name in os.listdir(folder):  # an overwritten record is incomplete until it is whole again
        if name == MANIFEST_NAME or name.endswith(".safetensors"):
            os.remove(os.path.join(folder, name))


def record_teacher_outputs(trainer, folder: str, plan: RecordPlan, overwrite: bool = False) -> dict:
    """Run `trainer.teacher` over every training view of `plan.epochs` epochs of the run `trainer` is set up for (with
    `plan.world_size` processes) and over its evaluation images, and write the record to `folder`. Under several
    processes (`accelerate launch`) each records its share of every epoch into its own files, and the first writes
    the images' digests and `manifest.json`, last. Returns the manifest."""
    if trainer.teacher is None or trainer.teacher.reads_views:
        raise ValueError("Recording teacher outputs needs the teacher itself: pass --teacher_name_or_path.")
    rank, processes = trainer.args.process_index, trainer.args.world_size
    run, started = RunViews(trainer, plan.world_size), time.perf_counter()
    recorder = _recorder(trainer, folder, plan, run)
    if rank == 0:
        _clear(folder, overwrite, recorder["estimate"])
    trainer.accelerator.wait_for_everyone()  # the others wait for the folder
    recorder.update(dataset=PositionSeededDataset(run.train), collator=PositionSeededCollator(run.collator, True))
    shards, share = {}, lambda count: range(count * rank // processes, count * (rank + 1) // processes)
    for epoch in range(plan.epochs):
        rounds = run.rounds(epoch)
        shards[str(epoch)] = _record_rounds(recorder, f"epoch{epoch:04d}", rounds, run.layout(rounds),
                                            lambda views, first: views[:, 1] if first is None else
                                            first + torch.arange(len(views)), share(len(rounds)))  # fmt: skip
        logger.info("Recorded epoch %d of %d (%d views).", epoch + 1, plan.epochs, recorder["counted"]["views"])
    if run.evaluation is not None:  # its logits, for the teacher's accuracy and agreement; not training views
        rows = [ViewKey(index, 0, EVALUATION_EPOCH, index) for index in range(len(run.evaluation))]
        rounds = [[rows[start : start + run.eval_batch_size]] for start in range(0, len(rows), run.eval_batch_size)]
        layout = ([(batches[0][0].index, batches[0][-1].index + 1) for batches in rounds], None)
        evaluation = {**recorder, "plan": RecordPlan(0, top_k=plan.top_k), "request": {}, "deviation": None,
                      "counted": {"views": 0, "teacher_seconds": 0.0}, "teacher_batch": run.eval_batch_size,
                      "dataset": PositionSeededDataset(run.evaluation),
                      "collator": PositionSeededCollator(run.eval_collator, True)}  # fmt: skip
        shards[str(EVALUATION_EPOCH)] = _record_rounds(evaluation, "evaluation", rounds, layout,
                                                       lambda views, _: views[:, 2], share(len(rounds)))  # fmt: skip
    parts = gather_object([(shards, recorder["counted"], recorder["deviation"], time.perf_counter() - started)])
    return gather_object([_manifest(trainer, recorder, parts) if rank == 0 else None])[0]


def _manifest(trainer, recorder: dict, parts: list) -> dict:
    """Every process's files and counts merged; the images' digests written, then `manifest.json`, last."""
    run, plan, folder, num_classes = recorder["run"], recorder["plan"], recorder["folder"], trainer.model.config.num_labels
    shards = {split: sorted((file for part in parts for file in part[0][split]), key=lambda file: file["start"])
              for split in parts[0][0]}  # fmt: skip
    counted = {key: sum(part[1][key] for part in parts) for key in ("views", "teacher_seconds")}
    deviation = None if recorder["deviation"] is None else {"tau": recorder["tau"], "views": counted["views"], **{
        name: sum(part[2][name] for part in parts) / max(counted["views"], 1) for name in parts[0][2]}}  # fmt: skip
    if deviation is not None:
        logger.info("Top-%d of %d probabilities against the teacher's own, mean over the %d recorded views (tau %g): "
                    "mass outside the top k %.4g, total variation %.4g, soft loss of a student equal to the teacher "
                    "%.4g (0 from the live teacher).", plan.top_k, num_classes, counted["views"], recorder["tau"],
                    *(deviation[name] for name in parts[0][2]))  # fmt: skip
    digests = run.digests()
    save_file({name: torch.from_numpy(values.view(np.int64)) for name, values in digests.items()},
              os.path.join(folder, DIGESTS_NAME))  # fmt: skip
    views = sum(file["stop"] - file["start"] for split, files in shards.items() if split != str(EVALUATION_EPOCH)
                for file in files)  # fmt: skip
    evaluated, report = len(run.evaluation or ()), trainer.check_teacher()
    manifest = {
        "format": FORMAT_VERSION, "views": run.describe(), "epochs": plan.epochs, "world_size": plan.world_size,
        "teacher": {**teacher_identity(trainer.teacher), "precision": str(trainer.accelerator.mixed_precision),
                    "batch size": recorder["teacher_batch"]},
        "num_classes": num_classes, "shapes": recorder["shapes"],
        "outputs": {"kinds": plan.kinds(), "top_k": plan.top_k, "stage": recorder["stage"],
                    "bytes_per_view": recorder["sizes"], "top_k_deviation": deviation},
        "size": {"training views": views, "evaluation images": evaluated, "digest bytes per image": DIGEST_BYTES,
                 "bytes": record_bytes(recorder["sizes"], views, evaluated, sum(map(len, digests.values())))},
        "teacher_report": asdict(report) if report is not None else None, "shards": shards,
        "recording": {**counted, "teacher_seconds": round(counted["teacher_seconds"], 3), "processes": len(parts),
                      "seconds": round(max(part[3] for part in parts), 3)},
    }  # fmt: skip
    with open(os.path.join(folder, MANIFEST_NAME + ".tmp"), "w") as file:
        json.dump(manifest, file, indent=1)
    os.replace(os.path.join(folder, MANIFEST_NAME + ".tmp"), os.path.join(folder, MANIFEST_NAME))
    return manifest
