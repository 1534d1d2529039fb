"""A recorded teacher: the teacher's outputs computed once over every view a training run will produce, then replayed.

    record_teacher_outputs(trainer, folder, plan)   runs the teacher over the run's views and writes the record
    RecordedTeacher(folder, live=None)              a `Teacher` (same call, same `TeacherForwardOutput`) that reads them

Why this is exact. Every random draw of the data pipeline is seeded by the view's place in the epoch
(`hf_deit.data.samplers`): the recorder iterates the run's own sampler, batches and collator (`RunViews`), so it
produces the run's views bit for bit, and the teacher sees the run's own batches.

Dense. Each epoch is an array per output kind, indexed by a view's slot: without mixup/cutmix a view depends on
(epoch, position, image) only, so its slot is its position, and the record serves any batch size and any number of
processes (except repeated augmentation across processes, whose positions depend on both); a mixed view depends on
its whole batch, so the slots are the run's batches in order (batch j of process r is the run's (j * processes + r)th)
and the record serves the recorded layout only (processes, batch, repeats, drop_last). The layout is checked once,
before the first step (`check_run`); nothing is stored per view but the outputs.

Bytes per view (C classes, k kept), mixup or not, plus 8 bytes per image for the data's content digests:

    argmax          int16 (int32 above 32,767 classes)    2    hard distillation, unlabelled images' labels: exact
    top-k           k int16 indices + k float16 values    4k   soft distillation (k = C: C float16 values, 2C)
    features        float16 pooled features (D)           2D   the feature term
    attention map   float16 (h, w)                        2hw  the attention term
    stage map       float16 (channels, h, w)              ...  the feature-map term: the one stage it imitates

Soft targets from top-k, as TinyViT stores them: the k largest probabilities at temperature 1 and the rest of the mass
spread evenly over the other classes; with k < C the tail is flattened, and the recorder measures by how much over
every recorded view (`top_k_deviation`, in the manifest). Float16 values are exact to about 3 significant digits;
the argmax is exact, as far as the teacher's arithmetic is: it runs under the run's precision, at the run's batch.

Tied to what it was made from: the manifest holds a digest of each training and evaluation image's content
(`hf_deit.data.datasets.row_digests`) and of the teacher's weights; a run whose images or teacher differ is refused,
naming the images. Several processes record in parallel (`accelerate launch`), each its share of every epoch into
its own files; the first writes the manifest last (a folder without one is an interrupted record).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .configuration_distilled_deit import _pair
from .data.datasets import row_digests, row_names
from .data.samplers import (PositionSeededCollator, PositionSeededDataset, PositionSeededSampler,
                            RepeatedAugmentationSampler, ViewKey)
from .teacher import EVALUATION_EPOCH, TeacherForwardOutput

logger = logging.getLogger(__name__)

MANIFEST_NAME, DIGESTS_NAME = "manifest.json", "images.safetensors"
FORMAT_VERSION = 2
VIEWS_PER_SHARD = 65536  # views per file: a shard of ImageNet features is ~400 MB
DIGEST_BYTES = 8  # per training and evaluation image
CHECKED_BATCHES = 2  # training batches checked against the teacher when it is given beside the record


class RecordMismatchError(ValueError):
    """A record that does not fit the run it is given to, with every difference named."""


@dataclass
class RunViews:
    """What a run's views depend on, from the trainer's public parts: the data, the collators, the seed and the
    batch layout of a `world_size`-process run."""

    train: object
    evaluation: object
    collator: object
    eval_collator: object
    seed: int
    batch_size: int
    eval_batch_size: int
    drop_last: bool
    repeats: int
    even_batches: bool
    world_size: int
    workers: int
    schedule: tuple  # (max_steps, gradient accumulation steps, epochs)
    looks: dict  # the per-image transform, image size and normalisation

    @classmethod
    def of(cls, trainer, world_size: int | None = None) -> RunViews:
        args, train = trainer.args, trainer.train_dataset
        if train is None or not hasattr(train, "__len__") or isinstance(train, torch.utils.data.IterableDataset):
            raise ValueError("Teacher outputs are recorded by each view's place in the epoch: a streamed training set "
                             "has no places to record. Load the data without --streaming.")  # fmt: skip
        transform = getattr(getattr(train, "_format_kwargs", {}).get("transform"), "image_transform", None)
        processor = trainer.processing_class
        size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
        image_size = [size.get("height"), size.get("width")] if "height" in size else trainer.model.config.image_size
        looks = {"augmentation": None if transform is None else [line.strip().split(" at 0x")[0] for line in
                                                                 repr(transform).splitlines()[1:-1]],
                 "image size": image_size, "normalisation": {"mean": list(getattr(processor, "image_mean", [])),
                                                             "std": list(getattr(processor, "image_std", []))}}  # fmt: skip
        return cls(train, trainer.eval_dataset, trainer.data_collator, trainer.eval_data_collator, args.seed,
                   args.per_device_train_batch_size, args.per_device_eval_batch_size, bool(args.dataloader_drop_last),
                   getattr(args, "repeated_augmentation", 1), trainer.accelerator.even_batches,
                   world_size or args.world_size, args.dataloader_num_workers,
                   (args.max_steps, args.gradient_accumulation_steps, args.num_train_epochs), looks)  # fmt: skip

    @property
    def mixes(self) -> bool:
        return bool(getattr(self.collator, "enabled", False))

    @property
    def rank_local(self) -> bool:  # repeated augmentation: each process's sampler picks its own share
        return self.repeats > 1 and self.world_size > 1

    def batches(self, epoch: int, rank: int) -> list[list]:
        """The batches of view keys that process `rank` reads in `epoch`, as the trainer's loader gives them."""
        from accelerate.data_loader import BatchSamplerShard

        base = (RepeatedAugmentationSampler.for_run(self.train, self.world_size, rank, self.seed, self.repeats)
                if self.rank_local else torch.utils.data.RandomSampler(self.train))  # fmt: skip
        sampler = PositionSeededSampler(base, seed=self.seed)
        sampler.set_epoch(epoch)
        batches = torch.utils.data.BatchSampler(sampler, self.batch_size, self.drop_last)
        if self.world_size > 1 and not self.rank_local:
            batches = BatchSamplerShard(batches, self.world_size, rank, even_batches=self.even_batches)
        return [list(batch) for batch in batches]

    def rounds(self, epoch: int) -> list[list[list]]:
        """The epoch's batches in the run's order, a round (one batch per process) at a time."""
        per_rank = [self.batches(epoch, rank) for rank in range(self.world_size)]
        count = max(len(batches) for batches in per_rank)
        return [[batches[j] for batches in per_rank if j < len(batches)] for j in range(count)]

    def layout(self, rounds: list) -> tuple[list[tuple[int, int]], list[int] | None]:
        """Each round's slots [start, stop), and each batch's first slot (None without mixing: a view's slot is its
        position; with mixing, the run's batches lie end to end in its order)."""
        if not self.mixes:
            width = self.batch_size * self.world_size  # round j holds positions [j * width, (j + 1) * width)
            total = 1 + max(key.position for batches in rounds for batch in batches for key in batch)
            return [(j * width, min((j + 1) * width, total)) for j in range(len(rounds))], None
        lengths = [len(batch) for batches in rounds for batch in batches]
        firsts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        starts, batch = [], 0
        for batches in rounds:
            starts.append(firsts[batch])
            batch += len(batches)
        return list(zip(starts, starts[1:] + [firsts[-1]])), firsts[:-1]

    def epochs(self) -> int:
        """How many epochs (started ones included) the run's schedule reads."""
        max_steps, accumulation, epochs = self.schedule
        if max_steps > 0:
            return math.ceil(max_steps * accumulation / max(len(self.batches(0, 0)), 1))
        return math.ceil(epochs)

    def digests(self) -> dict[str, np.ndarray]:
        if not hasattr(self, "_digests"):
            splits = {"training images": self.train, "evaluation images": self.evaluation}
            self._digests = {name: row_digests(data) for name, data in splits.items() if data is not None}
        return self._digests

    def describe(self) -> dict:
        """Everything the views depend on, as JSON values (see the module docstring)."""
        layout = {"repeated augmentation across processes": self.repeats if self.world_size > 1 else 1}
        if self.rank_local or self.mixes:
            layout["processes"] = self.world_size
        if self.mixes:
            layout.update({"batch size per process": self.batch_size, "drop last batch": self.drop_last})
        mixing = {name: getattr(self.collator, name) for name in ("mixup_alpha", "cutmix_alpha", "switch_prob", "prob")}
        images = {name: {"rows": len(digests), "content": hashlib.sha256(digests.tobytes()).hexdigest()}
                  for name, digests in self.digests().items()}  # fmt: skip
        return {**images, "evaluation images": images.get("evaluation images"), **self.looks,
                "mixup/cutmix": mixing if self.mixes else "off", "seed": self.seed, "batch layout": layout}


def describe_views(trainer, world_size: int) -> dict:
    return RunViews.of(trainer, world_size).describe()


def teacher_identity(teacher) -> dict:
    """The teacher's name, a SHA-256 of its weights (names, dtypes, shapes, bytes), how the student's batch is adapted
    for it, and its class order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    order = teacher.label_order.tolist() if teacher.label_order is not None else None
    return {"name": str(teacher.name), "weights_sha256": digest.hexdigest(), "input": repr(teacher.input_adapter),
            "class order": order}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RecordPlan:
    """What a record holds: the output kinds (`top_k` kept probabilities, None: none), the epochs, the number of
    processes of the run it is for, and the teacher's batch (views per forward pass; default the run's)."""

    epochs: int
    world_size: int = 1
    top_k: int | None = None
    features: bool = False
    attention_map: bool = False
    stage_map: bool = False
    teacher_batch_size: int | None = None

    def kinds(self) -> list[str]:
        kinds = ["argmax"] + (["top_k"] if self.top_k else [])
        return kinds + [kind for kind in ("features", "attention_map", "stage_map") if getattr(self, kind)]


def plan_for_run(trainer, epochs=None, world_size=1, top_k="auto", features=None, attention_map=None, stage_map=None,
                 teacher_batch_size=None) -> RecordPlan:  # fmt: skip
    """The record `trainer`'s objective needs (None/"auto": what its settings use). `top_k` "auto" keeps 10 classes
    for soft distillation or pseudo-labels and none for hard; an int or "all" says how many."""
    request, num_classes = trainer.objective.teacher_request(True), trainer.model.config.num_labels
    loss = trainer.objective.loss
    if top_k in ("auto", None):
        top_k = min(10, num_classes) if loss.distillation_type == "soft" or loss.pseudo_label_threshold > 0 else None
    else:
        top_k = num_classes if top_k == "all" else int(top_k)
        if not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k must be between 1 and the {num_classes} classes, or 'all'; got {top_k}.")
    return RecordPlan(epochs if epochs is not None else RunViews.of(trainer, world_size).epochs(), world_size, top_k,
                      request["features"] if features is None else features,
                      request["attention_map"] if attention_map is None else attention_map,
                      request["stage_maps"] if stage_map is None else stage_map, teacher_batch_size)  # fmt: skip


def bytes_per_view(plan: RecordPlan, num_classes: int, shapes: dict, stage: int | None) -> dict[str, int]:
    """What one view costs on disk, by kind (see the module docstring); nothing else is stored per view."""
    sizes = {"argmax": 2 if num_classes <= 32767 else 4}
    if plan.top_k:
        sizes["top_k"] = 2 * num_classes if plan.top_k == num_classes else 4 * plan.top_k
    for kind, shape in (("features", shapes["features"]), ("attention_map", shapes["attention_map"]),
                        ("stage_map", (shapes["stage_maps"] or [None])[stage or 0])):  # fmt: skip
        if getattr(plan, kind):
            sizes[kind] = 2 * math.prod(shape)
    return sizes


def record_bytes(per_view: dict[str, int], views: int, evaluated: int, images: int) -> int:
    """A record's size: its training views' outputs, its evaluation images' logits (argmax, top-k) and its images'
    content digests (file headers and the manifest aside)."""
    logits = per_view["argmax"] + per_view.get("top_k", 0)
    return sum(per_view.values()) * views + logits * evaluated + DIGEST_BYTES * images


def view_costs(trainer, batches: int = 4) -> dict[str, float]:
    """Seconds per training view of `trainer`'s run over `batches` batches after a warm-up one: `pipeline` (reading,
    decoding, augmenting, collating) and `teacher` (its pass). A record that n runs share saves about
    (n - 1) x teacher - pipeline per view: recording pays both once, each live run the teacher's pass."""
    run, request = RunViews.of(trainer, 1), trainer.objective.teacher_request(True)
    loader = torch.utils.data.DataLoader(PositionSeededDataset(run.train), batch_sampler=run.batches(0, 0)[:batches + 1],
                                         collate_fn=PositionSeededCollator(run.collator))  # fmt: skip
    seconds, views, tic = {"pipeline": 0.0, "teacher": 0.0}, 0, time.perf_counter()
    for index, batch in enumerate(loader):
        loaded = time.perf_counter()
        trainer.teacher_outputs(batch["pixel_values"].to(trainer.accelerator.device), **request)
        if index > 0 or len(loader) == 1:
            seconds["pipeline"] += loaded - tic
            seconds["teacher"] += time.perf_counter() - loaded
            views += len(batch["pixel_values"])
        tic = time.perf_counter()
    return {name: value / max(views, 1) for name, value in seconds.items()}


def _probe_shapes(trainer) -> dict:
    """The teacher's output shapes per view at the student's input size (None: it cannot give that output)."""
    config = trainer.model.config
    probe = torch.zeros(1, config.num_channels, *_pair(config.image_size), device=trainer.accelerator.device)
    shapes = {"has_config": getattr(trainer.teacher.model, "config", None) is not None}
    for name in ("features", "stage_maps", "attention_map"):
        try:
            value = getattr(trainer.teacher_outputs(probe, **{name: True}), name)
        except (ValueError, AttributeError, RuntimeError):
            value = None
        shapes[name] = [list(item.shape[1:]) for item in value] if isinstance(value, tuple) else (
            None if value is None else list(value.shape[1:]))  # fmt: skip
    return shapes


def _outputs_to_store(output: TeacherForwardOutput, plan: RecordPlan, stage: int | None) -> dict[str, torch.Tensor]:
    logits = output.logits.float()
    index_type = torch.int16 if logits.shape[-1] <= 32767 else torch.int32
    stored = {"argmax": logits.argmax(dim=1).to(index_type)}
    if plan.top_k:
        probabilities = logits.softmax(dim=1)
        if plan.top_k == logits.shape[-1]:
            stored["probabilities"] = probabilities.half()
        else:
            values, indices = probabilities.topk(plan.top_k, dim=1)
            stored["top_probabilities"], stored["top_indices"] = values.half(), indices.to(index_type)
    for kind, value in (("features", output.features), ("attention_map", output.attention_map),
                        ("stage_map", output.stage_maps[stage] if plan.stage_map else None)):  # fmt: skip
        if getattr(plan, kind):
            stored[kind] = value.float().half()
    return {name: tensor.cpu() for name, tensor in stored.items()}


def top_k_deviation(logits: torch.Tensor, stored: dict[str, torch.Tensor], tau: float) -> dict[str, torch.Tensor]:
    """Per view, how far soft targets replayed from stored top-k probabilities lie from the teacher's `logits`: "mass
    outside the top k" (temperature 1), "total variation" and "soft loss" (KL(replayed || live) * tau^2 / classes, as
    the distillation loss averages it) at `tau`."""
    logits = logits.detach().float().cpu()
    num_classes, k = logits.shape[1], stored["top_probabilities"].shape[1]
    replayed = _logits(stored, num_classes)
    live, target = F.log_softmax(logits / tau, dim=1), F.log_softmax(replayed / tau, dim=1)
    return {"mass outside the top k": 1.0 - logits.softmax(dim=1).topk(k, dim=1).values.sum(dim=1),
            "total variation": 0.5 * (target.exp() - live.exp()).abs().sum(dim=1),
            "soft loss": (target.exp() * (target - live)).sum(dim=1) * tau * tau / num_classes}  # fmt: skip


def _logits(stored: dict, num_classes: int) -> torch.Tensor:
    """Logits from stored outputs: the log of the stored probabilities (the top k, the rest spread), their argmax
    nudged up by one float step where float16 rounding made a tie, so that it is the stored argmax; one-hot rows from
    the argmax alone (which class, and nothing about how sure)."""
    argmax = stored["argmax"].long()
    if "probabilities" in stored:
        probabilities = stored["probabilities"].float()
    elif "top_probabilities" in stored:
        values, indices = stored["top_probabilities"].float(), stored["top_indices"].long()
        rest = (1.0 - values.sum(dim=1, keepdim=True)).clamp(min=0.0) / max(num_classes - values.shape[1], 1)
        probabilities = rest.expand(-1, num_classes).clone().scatter_(1, indices, values)
    else:
        return F.one_hot(argmax, num_classes).float()
    logits = probabilities.clamp(min=torch.finfo(torch.float32).tiny).log()
    top = logits.max(dim=1).values
    return logits.scatter_(1, argmax[:, None], torch.nextafter(top, torch.tensor(math.inf))[:, None])


class _Part:
    """One process's share of a split (an epoch, or the evaluation images): slots [start, stop), written in files of
    `VIEWS_PER_SHARD` views named by their first slot. A slot seen twice (a view the run reads twice) keeps its
    first outputs; slots outside the share are another process's."""

    def __init__(self, folder: str, split: str, start: int, stop: int):
        self.folder, self.split, self.start, self.stop = folder, split, start, stop
        self.base, self.buffer, self.filled, self.files = start, {}, torch.zeros(0, dtype=torch.bool), []

    def put(self, slots: torch.Tensor, stored: dict[str, torch.Tensor]) -> None:
        size = int(slots.max()) + 1 - self.base if len(slots) else 0
        if size > len(self.filled):
            grow = size - len(self.filled)
            self.filled = torch.cat([self.filled, torch.zeros(grow, dtype=torch.bool)])
            for name, values in stored.items():
                old = self.buffer.get(name, values.new_zeros(0, *values.shape[1:]))
                self.buffer[name] = torch.cat([old, values.new_zeros(grow, *values.shape[1:])])
        inside = torch.nonzero((slots >= self.base) & (slots < self.stop)).flatten()
        fresh = inside[~self.filled[slots[inside] - self.base]]
        for name, values in stored.items():
            self.buffer[name][slots[fresh] - self.base] = values[fresh]
        self.filled[slots[fresh] - self.base] = True

    def flush(self, below: int) -> None:
        """Write the files whose slots all lie below `below` (every slot there is done)."""
        while self.base < self.stop and min(self.base + VIEWS_PER_SHARD, self.stop) <= below:
            count = min(self.base + VIEWS_PER_SHARD, self.stop) - self.base
            name = f"{self.split}-{self.base:010d}.safetensors"
            tensors = {key: _padded(value, count)[:count].contiguous() for key, value in self.buffer.items()}
            save_file(tensors, os.path.join(self.folder, name))
            self.files.append({"file": name, "start": self.base, "stop": self.base + count})
            self.buffer = {key: value[count:] for key, value in self.buffer.items()}
            self.filled, self.base = self.filled[count:], self.base + count


def _padded(values: torch.Tensor, count: int) -> torch.Tensor:  # slots no batch reached (a dropped last batch)
    return values if len(values) >= count else torch.cat([values, values.new_zeros(count - len(values),
                                                                                    *values.shape[1:])])


def _record_split(recorder: dict, split: str, rounds: list, slot_of, share: range) -> list[dict]:
    """Run the teacher over the rounds of `share` (this process's) and write their outputs; the files written."""
    if not share:
        return []
    run, (ranges, firsts) = recorder["run"], recorder["layout"]
    part = _Part(recorder["folder"], split, ranges[share[0]][0], ranges[share[-1]][1])
    flat = [(j, batch) for j, batches in enumerate(rounds) for batch in batches]
    chosen = [k for k, (j, _) in enumerate(flat) if j in share]
    loader = torch.utils.data.DataLoader(recorder["dataset"], batch_sampler=[flat[k][1] for k in chosen],
                                         collate_fn=recorder["collator"], num_workers=run.workers)  # fmt: skip
    group = []
    for k, batch in zip(chosen, loader):
        group.append((batch["pixel_values"], slot_of(batch["views"], None if firsts is None else firsts[k])))
        round_done = k + 1 == len(flat) or flat[k + 1][0] != flat[k][0]
        if round_done or sum(len(slots) for _, slots in group) >= recorder["teacher_batch"]:
            _run_teacher(recorder, group, part)
            group = []
        if round_done:
            part.flush(ranges[flat[k][0]][1])
    part.flush(part.stop)
    return part.files


def _run_teacher(recorder: dict, group: list, part: _Part) -> None:
    pixel_values = torch.cat([pixels for pixels, _ in group]).to(recorder["device"])
    tic = time.perf_counter()
    output = recorder["teacher"](pixel_values, **recorder["request"])
    stored = _outputs_to_store(output, recorder["plan"], recorder["stage"])
    counted, deviation = recorder["counted"], recorder["deviation"]
    counted["teacher_seconds"] += time.perf_counter() - tic
    counted["views"] += len(pixel_values)
    if deviation is not None:
        for name, values in top_k_deviation(output.logits, stored, recorder["tau"]).items():
            deviation[name] = deviation.get(name, 0.0) + float(values.double().sum())
    part.put(torch.cat([slots for _, slots in group]), stored)


def _share(count: int, rank: int, processes: int) -> range:
    return range(count * rank // processes, count * (rank + 1) // processes)


def _processes() -> tuple[int, int]:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)


def _gathered(value) -> list:
    if _processes()[1] == 1:
        return [value]
    values = [None] * _processes()[1]
    torch.distributed.all_gather_object(values, value)
    return values


def _recorder(trainer, folder: str, plan: RecordPlan, run: RunViews) -> dict:
    """What recording needs, read once from the trainer; the record's size, estimated and checked against the disk."""
    num_classes, objective = trainer.model.config.num_labels, trainer.objective
    shapes = _probe_shapes(trainer)
    stage = feature_map_stage(objective) if plan.stage_map else None
    if plan.stage_map and stage is None:
        from .terms.feature_map import nearest_stage

        if shapes["stage_maps"] is None:
            raise ValueError("Stage maps were asked for, but the teacher gives none: only a CNN teacher has them.")
        config = trainer.model.config
        grid = tuple(side // patch for side, patch in zip(_pair(config.image_size), _pair(config.patch_size)))
        stage = nearest_stage([torch.zeros(1, *shape) for shape in shapes["stage_maps"]], grid)
    for kind in ("features", "attention_map"):
        if getattr(plan, kind) and shapes[kind] is None:
            raise ValueError(f"{kind} was asked for, but the teacher gives none at the student's input size.")
    sizes = bytes_per_view(plan, num_classes, shapes, stage)
    views = run.layout(run.rounds(0))[0][-1][1] * plan.epochs
    evaluated = len(run.evaluation) if run.evaluation is not None else 0
    total = record_bytes(sizes, views, evaluated, len(run.train) + evaluated)
    logger.info("Recording %s for %d epochs: %d views + %d evaluation images, %s (%s per view, %d B per image).",
                ", ".join(sizes), plan.epochs, views, evaluated, _in_bytes(total),
                ", ".join(f"{kind} {size} B" for kind, size in sizes.items()), DIGEST_BYTES)  # fmt: skip
    return {"run": run, "plan": plan, "folder": folder, "shapes": shapes, "stage": stage, "sizes": sizes,
            "estimate": total, "teacher": trainer.teacher_outputs, "device": trainer.accelerator.device,
            "request": dict(features=plan.features, attention_map=plan.attention_map, stage_maps=plan.stage_map),
            "tau": objective.loss.tau, "teacher_batch": plan.teacher_batch_size or run.batch_size,
            "counted": {"views": 0, "teacher_seconds": 0.0},
            "deviation": {} if plan.top_k and plan.top_k < num_classes else None}  # fmt: skip


def _clear(folder: str, overwrite: bool, estimate: int) -> None:
    if os.path.exists(os.path.join(folder, MANIFEST_NAME)) and not overwrite:
        raise FileExistsError(f"{folder} already holds a record: pass another folder, or --overwrite_record true.")
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if estimate * 1.1 > free:
        raise OSError(f"The record needs about {_in_bytes(estimate)} and {folder} has {_in_bytes(free)} free: free "
                      "space, record fewer kinds (a smaller --top_k), or choose another folder.")
    for name in os.listdir(folder):  # an overwritten record is incomplete until it is whole again
        if name == MANIFEST_NAME or name.endswith(".safetensors"):
            os.remove(os.path.join(folder, name))


def record_teacher_outputs(trainer, folder: str, plan: RecordPlan, overwrite: bool = False) -> dict:
    """Run `trainer.teacher` over every training view of `plan.epochs` epochs of the run `trainer` is set up for (with
    `plan.world_size` processes) and over its evaluation images, and write the record to `folder`. Under several
    processes (`accelerate launch`), each records its share of every epoch into its own files, and the first writes
    `manifest.json`, last. Returns the manifest."""
    if trainer.teacher is None or getattr(trainer.teacher, "reads_views", False):
        raise ValueError("Recording teacher outputs needs the teacher itself: pass --teacher_name_or_path.")
    rank, processes = _processes()
    run, started = RunViews.of(trainer, plan.world_size), time.perf_counter()
    recorder = _recorder(trainer, folder, plan, run)
    if rank == 0:
        _clear(folder, overwrite, recorder["estimate"])
    _gathered(None)  # the others wait for the folder
    recorder.update(dataset=PositionSeededDataset(run.train), collator=PositionSeededCollator(run.collator, True))
    shards = {}
    for epoch in range(plan.epochs):
        rounds = run.rounds(epoch)
        recorder["layout"] = run.layout(rounds)
        shards[str(epoch)] = _record_split(recorder, f"epoch{epoch:04d}", rounds, _training_slot,
                                           _share(len(rounds), rank, processes))  # fmt: skip
        logger.info("Recorded epoch %d of %d (%d views so far, %.1f views/s by the teacher).", epoch + 1,
                    plan.epochs, recorder["counted"]["views"],
                    recorder["counted"]["views"] / max(recorder["counted"]["teacher_seconds"], 1e-9))  # fmt: skip
    if run.evaluation is not None:
        counted, deviation = dict(recorder["counted"]), recorder["deviation"]  # evaluation images: logits only, not counted as training views
        recorder.update(plan=RecordPlan(epochs=0, top_k=plan.top_k), request={}, deviation=None,
                        dataset=PositionSeededDataset(run.evaluation), collator=PositionSeededCollator(
                            run.eval_collator, True), teacher_batch=run.eval_batch_size)  # fmt: skip
        rows = [ViewKey(index, 0, EVALUATION_EPOCH, index) for index in range(len(run.evaluation))]
        rounds = [[rows[start : start + run.eval_batch_size]] for start in range(0, len(rows), run.eval_batch_size)]
        recorder["layout"] = ([(batches[0][0].position, batches[0][-1].position + 1) for batches in rounds], None)
        shards[str(EVALUATION_EPOCH)] = _record_split(recorder, "evaluation", rounds, _evaluation_slot,
                                                      _share(len(rounds), rank, processes))  # fmt: skip
        recorder.update(counted=counted, plan=plan, deviation=deviation)
    parts = _gathered((shards, recorder["counted"], recorder["deviation"], time.perf_counter() - started))
    return _gathered(_manifest(trainer, recorder, parts) if rank == 0 else None)[0]


def _training_slot(views: torch.Tensor, first: int | None) -> torch.Tensor:
    return views[:, 1] if first is None else first + torch.arange(len(views))


def _evaluation_slot(views: torch.Tensor, first: int | None) -> torch.Tensor:
    return views[:, 2]


def _manifest(trainer, recorder: dict, parts: list) -> dict:
    """Merge every process's files and counts, write the images' digests and, last, `manifest.json`."""
    run, plan, folder = recorder["run"], recorder["plan"], recorder["folder"]
    shards = {split: sorted((file for part in parts for file in part[0][split]), key=lambda file: file["start"])
              for split in parts[0][0]}  # fmt: skip
    counted = {key: sum(part[1][key] for part in parts) for key in ("views", "teacher_seconds")}
    deviation = None
    if recorder["deviation"] is not None:
        sums = {name: sum(part[2].get(name, 0.0) for part in parts) for name in parts[0][2]}
        deviation = {"tau": recorder["tau"], "views": counted["views"],
                     **{name: total / max(counted["views"], 1) for name, total in sums.items()}}  # fmt: skip
        logger.info("Top-%d of %d probabilities against the teacher's own, mean over the %d recorded views (tau %g): "
                    "mass outside the top k %.4g, total variation %.4g, soft loss of a student equal to the teacher "
                    "%.4g (0 from the live teacher).", plan.top_k, trainer.model.config.num_labels, counted["views"],
                    recorder["tau"], *(deviation[name] for name in sums))  # fmt: skip
    digests = run.digests()
    save_file({name: torch.from_numpy(values.view(np.int64)) for name, values in digests.items()},
              os.path.join(folder, DIGESTS_NAME))  # fmt: skip
    views = sum(file["stop"] - file["start"] for split, files in shards.items() if split != str(EVALUATION_EPOCH)
                for file in files)  # fmt: skip
    evaluated = len(run.evaluation) if run.evaluation is not None else 0
    report = trainer.check_teacher()
    manifest = {
        "format": FORMAT_VERSION, "views": run.describe(), "epochs": plan.epochs, "world_size": plan.world_size,
        "teacher": {**teacher_identity(trainer.teacher), "precision": str(trainer.accelerator.mixed_precision),
                    "batch size": recorder["teacher_batch"]},
        "num_classes": trainer.model.config.num_labels, "shapes": recorder["shapes"],
        "outputs": {"kinds": plan.kinds(), "top_k": plan.top_k, "stage": recorder["stage"],
                    "bytes_per_view": recorder["sizes"], "top_k_deviation": deviation},
        "size": {"training views": views, "evaluation images": evaluated, "digest bytes per image": DIGEST_BYTES,
                 "bytes": record_bytes(recorder["sizes"], views, evaluated, sum(map(len, digests.values())))},
        "teacher_report": asdict(report) if report is not None else None,
        "shards": shards,
        "recording": {**counted, "teacher_seconds": round(counted["teacher_seconds"], 3), "processes": len(parts),
                      "seconds": round(max(part[3] for part in parts), 3)},
    }  # fmt: skip
    with open(os.path.join(folder, MANIFEST_NAME + ".tmp"), "w") as file:
        json.dump(manifest, file, indent=1)
    os.replace(os.path.join(folder, MANIFEST_NAME + ".tmp"), os.path.join(folder, MANIFEST_NAME))
    return manifest


def _in_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000


def feature_map_stage(objective) -> int | None:
    """The teacher stage the objective's feature-map term imitates (None without that term)."""
    return objective.terms["feature_map"].stage if "feature_map" in objective.terms else None


# ---------------------------------------------------------------------------------------------------------------------
# Replaying
# ---------------------------------------------------------------------------------------------------------------------


class RecordedTeacher(nn.Module):
    """A record in the teacher's place: called as `Teacher` is, with the batch's `views` (`hf_deit.teacher`), it
    gives the recorded `TeacherForwardOutput`. `live`, the teacher itself when given beside the record, must have the
    recorded weights, answers what has no views (the accuracy check), and checks the first training batches."""

    reads_views = True

    def __init__(self, folder: str, live: nn.Module | None = None):
        super().__init__()
        self.folder, self.manifest, self.live = str(folder), _read_manifest(str(folder)), live
        self.name = self.manifest["teacher"]["name"]
        shapes = self.manifest["shapes"]
        self.model = live.model if live is not None else _NoWeights(shapes["has_config"])
        self.report = None if live is not None or self.manifest["teacher_report"] is None else self._report()
        self._files, self._batch_starts, self._checked = {}, None, 0

    def _report(self):
        from .teacher_check import TeacherReport

        return TeacherReport(**self.manifest["teacher_report"])

    @property
    def kinds(self) -> list[str]:
        return self.manifest["outputs"]["kinds"]

    # ---- does it fit the run? ----

    def check_run(self, trainer) -> None:
        """Before training: refuse (`RecordMismatchError`, every difference named) a record that does not fit
        `trainer`'s run."""
        run = RunViews.of(trainer)
        problems = self.differences(run, trainer.objective)
        if problems:
            raise RecordMismatchError(
                f"The teacher record {self.folder} does not fit this run:\n  - " + "\n  - ".join(problems)
                + "\nRecord the teacher with this run's flags (scripts/record_teacher.py), or train with "
                "--teacher_name_or_path instead of --teacher_outputs.")  # fmt: skip
        if run.mixes:  # each batch's first slot, found by its first view's position
            ranges, firsts = run.layout(rounds := run.rounds(0))
            batches = [batch for round_ in rounds for batch in round_]
            self._batch_starts = {}
            for batch, first in zip(batches, firsts):
                self._batch_starts.setdefault(batch[0].position, first)
        precision = str(trainer.accelerator.mixed_precision)
        if precision != self.manifest["teacher"]["precision"]:
            logger.warning("The teacher was recorded with precision %r and this run trains with %r: the record holds "
                           "the recorded teacher's outputs.", self.manifest["teacher"]["precision"], precision)

    def differences(self, run: RunViews, objective) -> list[str]:
        """Each way the record does not fit the run, in words (empty: it fits)."""
        recorded, described, problems = self.manifest["views"], run.describe(), []
        for key in ("training images", "evaluation images", "augmentation", "mixup/cutmix", "seed", "image size",
                    "normalisation", "batch layout"):  # fmt: skip
            ours, theirs = recorded.get(key), described[key]
            if key == "evaluation images" and theirs is None:
                continue  # no evaluation in this run: the recorded one is not needed
            if key.endswith("images") and ours != theirs:
                problems += self._changed_images(key, run, ours, theirs)
                continue
            if key == "augmentation" and ours and theirs:  # the steps that differ only
                ours, theirs = [line for line in ours if line not in theirs], [line for line in theirs if line not in ours]
            if ours != theirs:
                problems.append(f"{key}: recorded {_short(ours)}, this run {_short(theirs)}")
        if run.epochs() > self.manifest["epochs"]:
            problems.append(f"epochs: this run reads {run.epochs()} epochs, the record holds "
                            f"{self.manifest['epochs']}: record more (--num_epochs), or train fewer")  # fmt: skip
        problems += [f"missing term: {text}" for text in self._missing_terms(objective)]
        if self.live is not None:
            identity = teacher_identity(self.live)
            for key in ("weights_sha256", "input", "class order"):
                if identity[key] != self.manifest["teacher"][key]:
                    problems.append(f"teacher ({key}): recorded {_short(self.manifest['teacher'][key])}, given "
                                    f"{_short(identity[key])}: the given teacher is not the recorded one")  # fmt: skip
        return problems

    def _changed_images(self, key: str, run: RunViews, ours: dict | None, theirs: dict | None) -> list[str]:
        name = "data" if key == "training images" else "evaluation data"
        if ours is None or theirs is None or ours["rows"] != theirs["rows"]:
            return [f"{name}: recorded {_short(ours)} images, this run {_short(theirs)}"]
        recorded = load_file(os.path.join(self.folder, DIGESTS_NAME))[key].numpy().view(np.uint64)
        changed = np.flatnonzero(recorded != run.digests()[key])
        names = row_names(run.train if key == "training images" else run.evaluation, changed[:3])
        return [f"{name}: {len(changed)} of {ours['rows']} images differ from the recorded ones (content or label), "
                f"such as {', '.join(names)}"]

    def _missing_terms(self, objective) -> list[str]:
        loss, kinds, request, missing = objective.loss, self.kinds, objective.teacher_request(True), []
        if loss.distillation_type == "soft" and "top_k" not in kinds:
            missing.append("soft distillation needs the teacher's probabilities: record with --top_k")
        if loss.pseudo_label_threshold > 0 and "top_k" not in kinds:
            missing.append("--pseudo_label_threshold needs the teacher's confidence: record with --top_k")
        for requested, kind, term, noun in (("features", "features", "the feature term", "pooled features"),
                                            ("attention_map", "attention_map", "the attention term", "attention maps"),
                                            ("stage_maps", "stage_map", "the feature-map term", "stage map")):
            if request[requested] and kind not in kinds:
                missing.append(f"{term} needs the teacher's {noun}: record with --record_{kind}")
        stage = feature_map_stage(objective)
        if request["stage_maps"] and "stage_map" in kinds and self.manifest["outputs"]["stage"] != stage:
            missing.append(f"the feature-map term imitates stage {stage}, the record holds stage "
                           f"{self.manifest['outputs']['stage']}")  # fmt: skip
        return missing

    # ---- one batch's outputs ----

    @torch.no_grad()
    def forward(self, pixel_values, attention_map=False, features=False, stage_maps=False, layers=(-1,), views=None):
        request = dict(attention_map=attention_map, features=features, stage_maps=stage_maps)
        if views is None:
            if self.live is not None:
                return self.live(pixel_values, layers=layers, **request)
            if len(pixel_values) == 1 and not pixel_values.any():  # the blank probe that sizes the objective
                return self._zeros(pixel_values, **request)
            raise ValueError("A batch without its views' places reached a teacher record: read the data through the "
                             "trainer's own data loaders, or give the teacher itself.")  # fmt: skip
        views = views.cpu()
        recorded = self._recorded(views, pixel_values.device, **request)
        if self.live is not None and int(views[0, 0]) != EVALUATION_EPOCH and self._checked < CHECKED_BATCHES:
            self.check_against_teacher(recorded, self.live(pixel_values, layers=layers, **request))
        return recorded

    def _zeros(self, pixel_values, attention_map: bool, features: bool, stage_maps: bool) -> TeacherForwardOutput:
        shapes, device = self.manifest["shapes"], pixel_values.device
        for name, wanted in (("features", features), ("attention_map", attention_map), ("stage_maps", stage_maps)):
            if wanted and shapes[name] is None:
                raise ValueError(f"The recorded teacher gives no {name.replace('_', ' ')}.")
        zeros = lambda shape: torch.zeros(1, *shape, device=device)
        return TeacherForwardOutput(zeros([self.manifest["num_classes"]]),
                                    zeros(shapes["attention_map"]) if attention_map else None,
                                    zeros(shapes["features"]) if features else None,
                                    tuple(map(zeros, shapes["stage_maps"])) if stage_maps else None)  # fmt: skip

    def _slots(self, views: torch.Tensor) -> tuple[int, np.ndarray]:
        epochs = views[:, 0].unique()
        if len(epochs) != 1:
            raise ValueError(f"A batch mixes views of epochs {epochs.tolist()}: expected one epoch per batch.")
        epoch = int(epochs[0])
        if epoch == EVALUATION_EPOCH:
            return epoch, views[:, 2].numpy()
        if self.manifest["views"]["mixup/cutmix"] == "off":
            return epoch, views[:, 1].numpy()
        if self._batch_starts is None:
            raise RuntimeError("A mixed batch reached the teacher record before check_run(trainer) found the run's "
                               "batches: the trainer calls it before training.")  # fmt: skip
        first = self._batch_starts.get(int(views[0, 1]))
        if first is None:
            raise RecordMismatchError(f"The teacher record {self.folder} holds no mixed batch of epoch {epoch} "
                                      f"starting at position {int(views[0, 1])}: mixup/cutmix views depend on the "
                                      "whole batch, and this run batches differently from the recorded one.")
        return epoch, first + np.arange(len(views))

    def _read(self, epoch: int, slots: np.ndarray, names: list[str]) -> dict[str, torch.Tensor]:
        files = self.manifest["shards"].get(str(epoch), [])
        starts = np.array([file["start"] for file in files])
        shard_of = np.searchsorted(starts, slots, side="right") - 1 if files else np.full(len(slots), -1)
        outside = [slot for slot, shard in zip(slots.tolist(), shard_of) if shard < 0 or slot >= files[shard]["stop"]]
        if outside:
            where = "the evaluation images" if epoch == EVALUATION_EPOCH else f"epoch {epoch}"
            raise RecordMismatchError(f"The teacher record {self.folder} holds no outputs for {len(outside)} view(s) "
                                      f"of {where} (the first at slot {outside[0]}): it was made for another run.")
        gathered, order = {name: [] for name in names}, []
        for shard in np.unique(shard_of):
            mine = np.flatnonzero(shard_of == shard)
            local = slots[mine] - starts[shard]
            low, high = int(local.min()), int(local.max()) + 1
            path = os.path.join(self.folder, files[shard]["file"])
            if path not in self._files:
                self._files = {path: safe_open(path, framework="pt")}  # one file open at a time
            for name in names:
                gathered[name].append(self._files[path].get_slice(name)[low:high][torch.from_numpy(local - low)])
            order.append(mine)
        order = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        return {name: torch.cat(parts)[order] for name, parts in gathered.items()}

    def _recorded(self, views, device, attention_map: bool, features: bool, stage_maps: bool) -> TeacherForwardOutput:
        epoch, slots = self._slots(views)
        num_classes, top_k = self.manifest["num_classes"], self.manifest["outputs"]["top_k"]
        names = ["argmax"] + ([] if not top_k else ["probabilities"] if top_k == num_classes
                              else ["top_probabilities", "top_indices"])  # fmt: skip
        if epoch != EVALUATION_EPOCH:
            names += [name for name, wanted in (("features", features), ("attention_map", attention_map),
                                                ("stage_map", stage_maps)) if wanted]  # fmt: skip
        stored = {name: value.to(device) for name, value in self._read(epoch, slots, names).items()}
        maps = stored.get("stage_map")
        return TeacherForwardOutput(
            _logits(stored, num_classes), stored["attention_map"].float() if "attention_map" in stored else None,
            stored["features"].float() if "features" in stored else None,
            None if maps is None else (None,) * self.manifest["outputs"]["stage"] + (maps.float(),))  # fmt: skip

    def check_against_teacher(self, recorded: TeacherForwardOutput, live: TeacherForwardOutput) -> None:
        """The recorded outputs are the given teacher's (argmax equal; features and maps within float16)."""
        self._checked += 1
        problems = []
        live_argmax, recorded_argmax = live.logits.float().argmax(1).cpu(), recorded.logits.float().argmax(1).cpu()
        if not torch.equal(live_argmax, recorded_argmax):
            problems.append(f"the teacher's top class differs on {int((live_argmax != recorded_argmax).sum())} of "
                            f"{len(live_argmax)} views")  # fmt: skip
        for name in ("features", "attention_map"):
            ours, theirs = getattr(recorded, name), getattr(live, name)
            if ours is not None and theirs is not None and not torch.allclose(ours, theirs.float(), 1e-2, 1e-2):
                problems.append(f"{name} differ beyond float16 rounding")
        if problems:
            raise RecordMismatchError(f"The teacher record {self.folder} is not the given teacher's on this run's "
                                      f"views: {'; '.join(problems)}.")  # fmt: skip
        logger.info("Training batch %d checked against the teacher: the record agrees.", self._checked)


class _NoWeights:
    """The recorded teacher's stand-in model: it says whether the teacher had a config (a transformers model)."""

    def __init__(self, has_config: bool):
        if has_config:
            self.config = object()


def _read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        shards = os.path.isdir(folder) and any(name.endswith(".safetensors") for name in os.listdir(folder))
        raise FileNotFoundError(f"{folder} holds no teacher record ({MANIFEST_NAME} missing): " + (
            "its recording was interrupted; run scripts/record_teacher.py again." if shards else
            "write one with scripts/record_teacher.py and the run's own flags."))  # fmt: skip
    with open(path) as file:
        manifest = json.load(file)
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"{folder} was recorded by an earlier version of hf-deit (record format "
                         f"{manifest.get('format')}; this version reads {FORMAT_VERSION}): records made before must be "
                         "recorded again: run scripts/record_teacher.py with the run's flags.")  # fmt: skip
    return manifest


def _short(value, limit: int = 160) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."
