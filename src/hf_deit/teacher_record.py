"""The teacher's outputs computed once, over exactly the views a training run will produce, and replayed in its place.

    record_teacher_outputs(trainer, folder, ...)   runs `trainer.teacher` (eval mode, no gradients) over every view of
                                                   the run's epochs and over its evaluation images, and writes them
    TeacherRecord.open(folder)                     a written record: `check_run(trainer)` refuses one that does not fit
                                                   the run, naming each difference; `outputs(views, ...)` replays a
                                                   batch's `TeacherForwardOutput`; `stand_in()` sizes the objective

Why this is exact. Every random draw of the data pipeline is seeded by the view's place in the epoch
(`hf_deit.data.samplers`): the sampler yields `ViewKey(index, seed, epoch, position)`, and mixup/cutmix draws from the
batch's first seed. The recorder builds the run's own sampler, batches and collator for each epoch (and, for a
multi-process run, each rank), so it produces the run's views bit for bit, and the trainer finds a batch's outputs by
its rows' (epoch, position, image). What a view depends on decides what a record is bound to:

- a view of one image (no mixup/cutmix) depends on (epoch, position, image) only: the record serves any batch size,
  and any number of processes, except that repeated augmentation across processes pads and rounds the epoch's
  sequence to the number of processes, so a record of such a run serves only runs with the same number of processes
  and repeats;
- a mixup/cutmix view depends on its whole batch: the record is bound to the batch layout (per-process batch size,
  number of processes, repeats, drop_last) and a batch is found only whole, in its recorded order.

What is stored per view (bytes, C classes, k kept):

    argmax          int16 (int32 above 32,767 classes)    2    hard distillation, unlabelled images' labels: exact
    top-k           k int16 indices + k float16 values    4k   soft distillation (k = C: C float16 values, 2C)
    features        float16 pooled features (D)           2D   the feature term
    attention map   float16 (h, w)                        2hw  the attention term
    stage map       float16 (channels, h, w)              ...  the feature-map term: the one stage it imitates

Soft targets from top-k, as TinyViT stores them: the k largest probabilities at temperature 1, and the rest of the
mass, 1 - sum(top k), spread evenly over the other C - k classes. Logits replayed as the log of that distribution
give the same softmax at any temperature when k = C (within float16); with k < C the tail is flattened, which
shifts the soft loss. The recorder measures by how much on every recorded training view, against the teacher's own
probabilities, at the run's temperature tau (`top_k_deviation`): the mass outside the top k, the total variation
between the replayed and the live soft targets (the soft loss's gradient with respect to the student's logits moves
by tau times their difference), and the soft loss, in the units training logs, that a student reproducing the
teacher exactly would be charged from the record (0 from the live teacher); it logs them and writes them into the
manifest (`outputs.top_k_deviation`). Float16
values are exact to about 3 significant digits; the argmax is exact. The record is only as exact as the teacher's
arithmetic: it runs under the run's precision (autocast) and, by default, at the run's batch size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import types
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from .data.samplers import (
    PositionSeededCollator,
    PositionSeededDataset,
    PositionSeededSampler,
    RepeatedAugmentationSampler,
    ViewKey,
    mix_seed,
)
from .teacher import TeacherForwardOutput

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
EVAL_EPOCH = -1  # the evaluation images' views: one per image, keyed (EVAL_EPOCH, index, index)
VIEWS_PER_SHARD = 65536  # views per safetensors file: a shard of ImageNet features is ~400 MB
OUTPUT_KINDS = ("argmax", "top_k", "features", "attention_map", "stage_map")
# How many training batches a run given both the record and the teacher checks against the teacher.
CHECKED_BATCHES = 2


class RecordMismatchError(ValueError):
    """A record that does not fit the run it is given to, with every difference named."""


# ---------------------------------------------------------------------------------------------------------------------
# What a run's views depend on, described the same way when recording and when replaying
# ---------------------------------------------------------------------------------------------------------------------


def _without_addresses(text: str) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def describe_views(trainer, world_size: int) -> dict:
    """Everything a run's training and evaluation views depend on, as JSON values: the data (rows and `datasets`
    fingerprint, which covers the images and the transform attached), the per-image transform step by step, the
    mixup/cutmix settings, the seed, the view size and normalisation, and the batch layout as far as the views depend
    on it (see the module docstring)."""
    args = trainer.args
    train, evaluation = trainer.train_dataset, trainer.eval_dataset
    if train is None or not hasattr(train, "__len__") or isinstance(train, torch.utils.data.IterableDataset):
        raise ValueError("Teacher outputs are recorded by each view's place in the epoch: a streamed training set has "
                         "no places to record. Load the data without --streaming.")
    transform = getattr(getattr(train, "_format_kwargs", {}).get("transform"), "image_transform", None)
    collator = trainer.data_collator
    mixes = bool(getattr(collator, "enabled", False))
    processor = getattr(trainer, "processing_class", None)
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    image_size = [size.get("height"), size.get("width")] if "height" in size else list(
        _pair_of(trainer.model.config.image_size))
    repeats = trainer.repeated_augmentation if world_size > 1 else 1
    layout = {"repeated augmentation across processes": repeats}
    if repeats > 1 or mixes:
        layout["processes"] = world_size
    if mixes:
        layout.update({"batch size per process": args.per_device_train_batch_size,
                       "drop last batch": bool(args.dataloader_drop_last)})  # fmt: skip
    return {
        "training images": {"rows": len(train), "fingerprint": getattr(train, "_fingerprint", None)},
        "evaluation images": None if evaluation is None else {
            "rows": len(evaluation), "fingerprint": getattr(evaluation, "_fingerprint", None)},
        "augmentation": [line.strip() for line in _without_addresses(repr(transform)).splitlines()[1:-1]]
        if transform is not None else None,
        "mixup/cutmix": {name: getattr(collator, name) for name in ("mixup_alpha", "cutmix_alpha", "switch_prob",
                                                                      "prob")} if mixes else "off",  # fmt: skip
        "seed": args.seed,
        "image size": image_size,
        "normalisation": {"mean": list(getattr(processor, "image_mean", []) or []),
                          "std": list(getattr(processor, "image_std", []) or [])},  # fmt: skip
        "batch layout": layout,
    }


def _pair_of(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def bound_to_batches(views: dict) -> bool:
    return views["mixup/cutmix"] != "off"


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
# The run's views, epoch by epoch and process by process
# ---------------------------------------------------------------------------------------------------------------------


def view_batches(trainer, epoch: int, world_size: int, rank: int) -> list[list[ViewKey]]:
    """The batches of `ViewKey`s that rank `rank` of a `world_size`-process run of `trainer`'s settings reads in
    `epoch`: its sampler (`DeiTTrainerBase._get_train_sampler`), batched, and sharded as accelerate's `prepare`
    shards them when the sampler does not already split the data between processes."""
    from accelerate.data_loader import BatchSamplerShard

    args, dataset = trainer.args, trainer.train_dataset
    rank_local = trainer.repeated_augmentation > 1 and world_size > 1
    base = (RepeatedAugmentationSampler.for_run(dataset, world_size, rank, args.seed, trainer.repeated_augmentation)
            if rank_local else torch.utils.data.RandomSampler(dataset))  # fmt: skip
    sampler = PositionSeededSampler(base, seed=args.seed)
    sampler.set_epoch(epoch)
    batches = torch.utils.data.BatchSampler(sampler, args.per_device_train_batch_size, args.dataloader_drop_last)
    if world_size > 1 and not rank_local:
        batches = BatchSamplerShard(batches, num_processes=world_size, process_index=rank,
                                    even_batches=trainer.accelerator.even_batches)  # fmt: skip
    return [list(batch) for batch in batches]


def epochs_of_run(trainer, world_size: int) -> int:
    """How many epochs (started ones included) the run's schedule reads."""
    args = trainer.args
    if args.max_steps > 0:
        batches = len(view_batches(trainer, 0, world_size, 0))
        return math.ceil(args.max_steps * args.gradient_accumulation_steps / max(batches, 1))
    return math.ceil(args.num_train_epochs)


class _EvaluationViews(torch.utils.data.Dataset):
    """The evaluation split with each example's view key (EVAL_EPOCH, index, index), for `PositionSeededCollator`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return {**self.dataset[index], PositionSeededDataset.VIEW_KEY: (EVAL_EPOCH, index, index)}


def evaluation_views(dataset):
    """`dataset` (the evaluation split) whose batches, collated by `PositionSeededCollator(..., keep_views=True)`,
    carry the keys of their recorded outputs."""
    return None if dataset is None else _EvaluationViews(dataset)


def _view_keys(views: torch.Tensor, rows: int) -> np.ndarray:
    """One int64 per view: position * rows + image (positions and images below `rows` x the repeats)."""
    views = views.numpy().astype(np.int64)
    return views[:, 1] * rows + views[:, 2]


def _batch_key(view_keys: np.ndarray) -> int:
    return mix_seed(len(view_keys), *view_keys.tolist())


# ---------------------------------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RecordPlan:
    """What a record holds: the output kinds, `top_k` kept probabilities (None: none stored), the epochs, the number
    of processes of the run it is for, and the teacher's batch (views per forward pass)."""

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


def plan_for_run(trainer, epochs: int | None = None, world_size: int = 1, top_k: int | str | None = "auto",
                 features: bool | None = None, attention_map: bool | None = None, stage_map: bool | None = None,
                 teacher_batch_size: int | None = None) -> RecordPlan:
    """The record `trainer`'s objective needs (None/"auto" for what its settings use), for `epochs` (default the run's).
    `top_k`: "auto" keeps 10 classes for soft distillation (all of them up to 10 classes) and none for hard; an int or
    "all" says how many."""
    objective = trainer.objective
    request = objective.teacher_request(True)
    num_classes = trainer.model.config.num_labels
    if top_k == "auto" or top_k is None:
        soft = objective.loss.distillation_type == "soft" or objective.loss.pseudo_label_threshold > 0
        top_k = min(10, num_classes) if soft else None
    elif top_k == "all":
        top_k = num_classes
    else:
        top_k = int(top_k)
        if not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k must be between 1 and the {num_classes} classes, or 'all'; got {top_k}.")
    return RecordPlan(
        epochs=epochs if epochs is not None else epochs_of_run(trainer, world_size),
        world_size=world_size,
        top_k=top_k,
        features=request["features"] if features is None else features,
        attention_map=request["attention_map"] if attention_map is None else attention_map,
        stage_map=request["stage_maps"] if stage_map is None else stage_map,
        teacher_batch_size=teacher_batch_size,
    )


def view_costs(trainer, batches: int = 4) -> dict[str, float]:
    """Seconds per training view of the run `trainer` is set up for, measured over `batches` batches of its first
    epoch after one unmeasured batch: `pipeline`, reading, decoding, augmenting and collating the view; `teacher`, the
    teacher's pass over it, with what the objective asks of it. Recording pays both once per view; a live run pays
    the teacher's pass on every view, so a record that n runs share saves about (n - 1) x teacher - pipeline per view
    (replaying costs the student little: an index lookup and a read)."""
    request = trainer.objective.teacher_request(True)
    loader = torch.utils.data.DataLoader(PositionSeededDataset(trainer.train_dataset),
                                         batch_sampler=view_batches(trainer, 0, 1, 0)[: batches + 1],
                                         collate_fn=PositionSeededCollator(trainer.data_collator, keep_views=True))
    seconds, views = {"pipeline": 0.0, "teacher": 0.0}, 0
    tic = time.perf_counter()
    for batch_index, batch in enumerate(loader):
        loaded = time.perf_counter()
        trainer.teacher_outputs(batch["pixel_values"].to(trainer.accelerator.device), **request)
        if batch_index > 0 or len(loader) == 1:  # the first batch warms up
            seconds["pipeline"] += loaded - tic
            seconds["teacher"] += time.perf_counter() - loaded
            views += len(batch["pixel_values"])
        tic = time.perf_counter()
    return {name: value / max(views, 1) for name, value in seconds.items()}


def _probe_shapes(trainer) -> dict:
    """The teacher's output shapes per view at the student's input size, whatever is recorded, so that a replaying
    objective can be sized (`TeacherRecord.stand_in`): features (None without), stage maps (None: not a CNN)."""
    config = trainer.model.config
    probe = torch.zeros(1, config.num_channels, *_pair_of(config.image_size), device=trainer.accelerator.device)
    shapes = {"has_config": getattr(trainer.teacher.model, "config", None) is not None}
    for name, request in (("features", dict(features=True)), ("stage_maps", dict(stage_maps=True)),
                          ("attention_map", dict(attention_map=True))):  # fmt: skip
        try:
            value = getattr(trainer.teacher_outputs(probe, **request), name)
        except (ValueError, AttributeError, RuntimeError):  # the teacher cannot give it
            value = None
        if isinstance(value, tuple):
            shapes[name] = [list(item.shape[1:]) for item in value]
        else:
            shapes[name] = None if value is None else list(value.shape[1:])
    return shapes


def _bytes_per_view(plan: RecordPlan, num_classes: int, shapes: dict, stage: int | None) -> dict:
    sizes = {"argmax": 2 if num_classes <= 32767 else 4}
    if plan.top_k:
        sizes["top_k"] = 2 * num_classes if plan.top_k == num_classes else 4 * plan.top_k
    if plan.features:
        sizes["features"] = 2 * math.prod(shapes["features"])
    if plan.attention_map:
        sizes["attention_map"] = 2 * math.prod(shapes["attention_map"])
    if plan.stage_map:
        sizes["stage_map"] = 2 * math.prod(shapes["stage_maps"][stage])
    return sizes


def _outputs_to_store(output: TeacherForwardOutput, plan: RecordPlan, stage: int | None) -> dict[str, torch.Tensor]:
    logits = output.logits.float()
    num_classes = logits.shape[-1]
    stored = {"argmax": logits.argmax(dim=1).to(torch.int16 if num_classes <= 32767 else torch.int32)}
    if plan.top_k:
        probabilities = logits.softmax(dim=1)
        if plan.top_k == num_classes:
            stored["probabilities"] = probabilities.half()
        else:
            values, indices = probabilities.topk(plan.top_k, dim=1)
            stored["top_probabilities"], stored["top_indices"] = values.half(), indices.to(stored["argmax"].dtype)
    if plan.features:
        stored["features"] = output.features.float().half()
    if plan.attention_map:
        stored["attention_map"] = output.attention_map.float().half()
    if plan.stage_map:
        stored["stage_map"] = output.stage_maps[stage].float().half()
    return {name: tensor.cpu() for name, tensor in stored.items()}


def top_k_deviation(logits: torch.Tensor, stored: dict[str, torch.Tensor], tau: float) -> dict[str, torch.Tensor]:
    """Per view, how far the soft targets replayed from `stored` top-k probabilities (`_outputs_to_store`) lie from
    the teacher's `logits` (see the module docstring): "mass outside the top k" (temperature 1), "total variation"
    and "soft loss" (KL(replayed || live) * tau^2 / classes, as the distillation loss averages it) at `tau`."""
    logits = logits.detach().float().cpu()
    num_classes, k = logits.shape[1], stored["top_probabilities"].shape[1]
    replayed = TeacherRecord._logits(stored, stored["argmax"].long(), num_classes, "soft")
    live, target = F.log_softmax(logits / tau, dim=1), F.log_softmax(replayed / tau, dim=1)
    return {
        "mass outside the top k": 1.0 - logits.softmax(dim=1).topk(k, dim=1).values.sum(dim=1),
        "total variation": 0.5 * (target.exp() - live.exp()).abs().sum(dim=1),
        "soft loss": (target.exp() * (target - live)).sum(dim=1) * tau * tau / num_classes,
    }


class _ShardWriter:
    """Writes one split's views (an epoch, or the evaluation images) in shards of `VIEWS_PER_SHARD`."""

    def __init__(self, folder: str, name: str):
        self.folder, self.name = folder, name
        self.pending: dict[str, list[torch.Tensor]] = {}
        self.count, self.files = 0, []

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            self.pending.setdefault(key, []).append(tensor)
        self.count += len(next(iter(tensors.values())))
        if self.count >= VIEWS_PER_SHARD:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        file = f"{self.name}-{len(self.files):05d}.safetensors"
        save_file({key: torch.cat(parts).contiguous() for key, parts in self.pending.items()},
                  os.path.join(self.folder, file))  # fmt: skip
        self.files.append({"file": file, "views": self.count})
        self.pending, self.count = {}, 0


def record_teacher_outputs(trainer, folder: str, plan: RecordPlan, overwrite: bool = False) -> dict:
    """Run `trainer.teacher` over every training view of `plan.epochs` epochs of the run `trainer` is set up for
    (with `plan.world_size` processes) and over its evaluation images, and write what `plan` asks for to `folder`:
    safetensors shards and `manifest.json`, which is written last (a folder without it is an interrupted record).
    The size is estimated, logged and checked against the free disk space before anything is written. Returns the
    manifest."""
    if trainer.teacher is None:
        raise ValueError("Recording teacher outputs needs the teacher: pass --teacher_name_or_path.")
    if os.path.exists(os.path.join(folder, MANIFEST_NAME)) and not overwrite:
        raise FileExistsError(f"{folder} already holds a record: pass another folder, or overwrite it on purpose.")
    views = describe_views(trainer, plan.world_size)
    identity = teacher_identity(trainer.teacher)
    bound = bound_to_batches(views)
    num_classes = trainer.model.config.num_labels
    shapes = _probe_shapes(trainer)
    stage = feature_map_stage(trainer.objective) if plan.stage_map else None
    if plan.stage_map and stage is None:
        from .terms.feature_map import nearest_stage

        if shapes["stage_maps"] is None:
            raise ValueError("Stage maps were asked for, but the teacher gives none: only a CNN teacher has them.")
        config = trainer.model.config
        grid = tuple(side // patch for side, patch in zip(_pair_of(config.image_size), _pair_of(config.patch_size)))
        stage = nearest_stage([torch.zeros(1, *shape) for shape in shapes["stage_maps"]], grid)
    for kind, shape in (("features", shapes["features"]), ("attention_map", shapes["attention_map"])):
        if getattr(plan, kind) and shape is None:
            raise ValueError(f"{kind} was asked for, but the teacher gives none at the student's input size.")
    sizes = _bytes_per_view(plan, num_classes, shapes, stage)
    batches_per_epoch = [len(view_batches(trainer, 0, plan.world_size, rank)) for rank in range(plan.world_size)]
    views_per_epoch = sum(batches_per_epoch) * trainer.args.per_device_train_batch_size
    num_eval = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    total = sum(sizes.values()) * (views_per_epoch * plan.epochs + num_eval)
    logger.info("Recording %s for %d epochs x about %d views + %d evaluation images: about %s (%s per view).",
                ", ".join(sizes), plan.epochs, views_per_epoch, num_eval, _in_bytes(total),
                ", ".join(f"{kind} {size} B" for kind, size in sizes.items()))  # fmt: skip
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if total * 1.1 > free:
        raise OSError(f"The record needs about {_in_bytes(total)} and {folder} has {_in_bytes(free)} free: free "
                      "space, record fewer kinds (a smaller --top_k), or choose another folder.")
    if os.path.exists(os.path.join(folder, MANIFEST_NAME)):
        os.remove(os.path.join(folder, MANIFEST_NAME))  # an overwritten record is incomplete until it is whole again

    request = dict(features=plan.features, attention_map=plan.attention_map, stage_maps=plan.stage_map)
    started, counted = time.perf_counter(), {"views": 0, "teacher_seconds": 0.0}
    tau = trainer.objective.loss.tau
    deviation = {} if plan.top_k and plan.top_k < num_classes else None  # summed over the training views

    def run_teacher(batches: list[dict], writer: _ShardWriter, rows: int, pending_keys: list) -> None:
        pixel_values = torch.cat([batch["pixel_values"] for batch in batches]).to(trainer.accelerator.device)
        tic = time.perf_counter()
        output = trainer.teacher_outputs(pixel_values, **request)
        stored = _outputs_to_store(output, plan, stage)
        counted["teacher_seconds"] += time.perf_counter() - tic
        counted["views"] += len(pixel_values)
        if deviation is not None:
            for name, values in top_k_deviation(output.logits, stored, tau).items():
                deviation[name] = deviation.get(name, 0.0) + float(values.double().sum())
        keys = np.concatenate([_view_keys(batch["views"], rows) for batch in batches])
        stored["view_key"] = torch.from_numpy(keys)
        if pending_keys is not None:  # bound to batches: each row knows its batch
            stored["batch_key"] = torch.tensor(pending_keys, dtype=torch.long)
        writer.add(stored)

    teacher_batch = plan.teacher_batch_size or trainer.args.per_device_train_batch_size
    collator = PositionSeededCollator(trainer.data_collator, keep_views=True)
    dataset = PositionSeededDataset(trainer.train_dataset)
    rows = len(trainer.train_dataset)
    shards = {}
    for epoch in range(plan.epochs):
        writer, seen = _ShardWriter(folder, f"train-epoch{epoch:04d}"), set()
        pending, pending_batch_keys, pending_count = [], [], 0
        for rank in range(plan.world_size):
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=view_batches(trainer, epoch, plan.world_size,
                                                                                     rank),
                                                 collate_fn=collator, num_workers=trainer.args.dataloader_num_workers)
            for batch in loader:
                keys = _view_keys(batch["views"], rows)
                if bound:
                    batch_key = _batch_key(keys)
                    if batch_key in seen:  # the same batch, read by another process: the same views
                        continue
                    seen.add(batch_key)
                    pending_batch_keys += [batch_key] * len(keys)
                else:  # a view read twice (accelerate's even batches, repeats landing together) is stored once
                    fresh = [i for i, key in enumerate(keys.tolist()) if key not in seen]
                    seen.update(keys.tolist())
                    if not fresh:
                        continue
                    if len(fresh) < len(keys):
                        batch = {"pixel_values": batch["pixel_values"][fresh], "views": batch["views"][fresh]}
                pending.append(batch)
                pending_count += len(batch["pixel_values"])
                if pending_count >= teacher_batch:
                    run_teacher(pending, writer, rows, pending_batch_keys if bound else None)
                    pending, pending_batch_keys, pending_count = [], [], 0
        if pending:
            run_teacher(pending, writer, rows, pending_batch_keys if bound else None)
        writer.flush()
        shards[str(epoch)] = writer.files
        logger.info("Recorded epoch %d of %d (%d views so far, %.1f views/s by the teacher).", epoch + 1,
                    plan.epochs, counted["views"], counted["views"] / max(counted["teacher_seconds"], 1e-9))

    if trainer.eval_dataset is not None:
        eval_plan = RecordPlan(epochs=0, top_k=plan.top_k)  # evaluation reads the logits only
        writer = _ShardWriter(folder, "evaluation")
        loader = torch.utils.data.DataLoader(evaluation_views(trainer.eval_dataset),
                                             batch_size=trainer.args.per_device_eval_batch_size,
                                             collate_fn=PositionSeededCollator(trainer.eval_data_collator,
                                                                               keep_views=True),
                                             num_workers=trainer.args.dataloader_num_workers)  # fmt: skip
        for batch in loader:
            output = trainer.teacher_outputs(batch["pixel_values"].to(trainer.accelerator.device))
            stored = _outputs_to_store(output, eval_plan, None)
            stored["view_key"] = torch.from_numpy(_view_keys(batch["views"], len(trainer.eval_dataset)))
            writer.add(stored)
        writer.flush()
        shards[str(EVAL_EPOCH)] = writer.files

    if deviation is not None:
        deviation = {"tau": tau, "views": counted["views"],
                     **{name: total / max(counted["views"], 1) for name, total in deviation.items()}}  # fmt: skip
        logger.info("Top-%d of %d probabilities against the teacher's own, mean over the %d recorded views (tau %g): "
                    "mass outside the top k %.4g, total variation %.4g, soft loss of a student equal to the teacher "
                    "%.4g (0 from the live teacher).", plan.top_k, num_classes, counted["views"], tau,
                    deviation["mass outside the top k"], deviation["total variation"], deviation["soft loss"])
    report = trainer.check_teacher()
    manifest = {
        "format": FORMAT_VERSION,
        "views": views,
        "epochs": plan.epochs,
        "world_size": plan.world_size,
        "teacher": {**identity, "precision": str(trainer.accelerator.mixed_precision),
                    "batch size": teacher_batch},  # fmt: skip
        "num_classes": num_classes,
        "outputs": {"kinds": plan.kinds(), "top_k": plan.top_k, "stage": stage, "bytes_per_view": sizes,
                    "top_k_deviation": deviation},
        "shapes": shapes,
        "teacher_report": asdict(report) if report is not None else None,
        "shards": shards,
        "recording": {"views": counted["views"], "teacher_seconds": round(counted["teacher_seconds"], 3),
                      "seconds": round(time.perf_counter() - started, 3)},  # fmt: skip
    }
    with open(os.path.join(folder, MANIFEST_NAME + ".tmp"), "w") as file:
        json.dump(manifest, file, indent=1)
    os.replace(os.path.join(folder, MANIFEST_NAME + ".tmp"), os.path.join(folder, MANIFEST_NAME))
    return manifest


def _in_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    return ""


# ---------------------------------------------------------------------------------------------------------------------
# Replaying
# ---------------------------------------------------------------------------------------------------------------------


class TeacherRecord:
    """A written record (`record_teacher_outputs`), opened for a run that trains from it instead of the teacher."""

    def __init__(self, folder: str, manifest: dict):
        self.folder, self.manifest = folder, manifest
        self._epoch_index: dict[int, tuple] = {}
        self._open_files: dict[str, object] = {}
        self._checked_batches = 0

    @classmethod
    def open(cls, folder: str) -> TeacherRecord:
        path = os.path.join(folder, MANIFEST_NAME)
        if not os.path.isfile(path):
            shards = os.path.isdir(folder) and any(name.endswith(".safetensors") for name in os.listdir(folder))
            raise FileNotFoundError(
                f"{folder} holds no teacher record ({MANIFEST_NAME} missing): "
                + ("its recording was interrupted; run scripts/record_teacher.py again." if shards else
                   "write one with scripts/record_teacher.py and the run's own flags.")
            )
        with open(path) as file:
            manifest = json.load(file)
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{folder} was recorded in format {manifest.get('format')}, this version reads "
                             f"{FORMAT_VERSION}: record it again.")  # fmt: skip
        return cls(folder, manifest)

    @property
    def teacher_name(self) -> str:
        return self.manifest["teacher"]["name"]

    @property
    def kinds(self) -> list[str]:
        return self.manifest["outputs"]["kinds"]

    def teacher_report(self):
        """The recorded teacher check (`hf_deit.teacher_check.TeacherReport`), or None."""
        from .teacher_check import TeacherReport

        report = self.manifest.get("teacher_report")
        return None if report is None else TeacherReport(**report)

    # ---- sizing the objective without the teacher ----

    def stand_in(self) -> RecordedTeacher:
        return RecordedTeacher(self)

    # ---- does it fit the run? ----

    def differences(self, trainer) -> list[str]:
        """Each way the record does not fit `trainer`'s run, in words (empty: it fits)."""
        recorded, run = self.manifest["views"], describe_views(trainer, trainer.args.world_size)
        problems = []
        names = {"training images": "data", "evaluation images": "evaluation data", "augmentation": "augmentation",
                 "mixup/cutmix": "mixup/cutmix", "seed": "seed", "image size": "image size",
                 "normalisation": "normalisation", "batch layout": "batch layout"}  # fmt: skip
        transform_differs = recorded["augmentation"] != run["augmentation"]
        for key, name in names.items():
            if key == "evaluation images" and run[key] is None:
                continue  # no evaluation in this run: the recorded one is not needed
            ours, theirs = recorded.get(key), run[key]
            if key.endswith("images") and transform_differs and ours and theirs and ours["rows"] == theirs["rows"]:
                continue  # the fingerprint covers the transform too: the augmentation line names the difference
            if key == "augmentation" and ours and theirs:  # the steps that differ only
                ours, theirs = ([line for line in ours if line not in theirs],
                                [line for line in theirs if line not in ours])
            if ours != theirs:
                problems.append(f"{name}: recorded {_short(ours)}, this run {_short(theirs)}")
        epochs = epochs_of_run(trainer, trainer.args.world_size)
        if epochs > self.manifest["epochs"]:
            problems.append(f"epochs: this run reads {epochs} epochs, the record holds {self.manifest['epochs']}: "
                            "record more (--num_epochs), or train fewer")  # fmt: skip
        problems += self._missing_terms(trainer)
        teacher = getattr(trainer, "teacher", None)
        if teacher is not None:
            identity = teacher_identity(teacher)
            for key in ("weights_sha256", "input", "class order"):
                if identity[key] != self.manifest["teacher"][key]:
                    problems.append(f"teacher ({key}): recorded {_short(self.manifest['teacher'][key])}, given "
                                    f"{_short(identity[key])}")  # fmt: skip
        return problems

    def _missing_terms(self, trainer) -> list[str]:
        objective, kinds, outputs = trainer.objective, self.kinds, self.manifest["outputs"]
        missing = []
        loss = objective.loss
        if loss.distillation_type == "soft" and "top_k" not in kinds:
            missing.append("soft distillation needs the teacher's probabilities: record with --top_k")
        if loss.pseudo_label_threshold > 0 and "top_k" not in kinds:
            missing.append("--pseudo_label_threshold needs the teacher's confidence: record with --top_k")
        request = objective.teacher_request(True)
        wanted = (("features", "features", "the feature term", "pooled features"),
                  ("attention_map", "attention_map", "the attention term", "attention maps"),
                  ("stage_maps", "stage_map", "the feature-map term", "stage map"))
        for requested, kind, term, noun in wanted:
            if request[requested] and kind not in kinds:
                missing.append(f"{term} needs the teacher's {noun}: record with --record_{kind}")
        if request["stage_maps"] and "stage_map" in kinds and outputs["stage"] != feature_map_stage(objective):
            missing.append(f"the feature-map term imitates stage {feature_map_stage(objective)}, the record holds "
                           f"stage {outputs['stage']}")  # fmt: skip
        return [f"missing term: {text}" for text in missing]

    def check_run(self, trainer) -> None:
        """Refuse (`RecordMismatchError`, every difference named) a record that does not fit `trainer`'s run."""
        problems = self.differences(trainer)
        if problems:
            raise RecordMismatchError(
                f"The teacher record {self.folder} does not fit this run:\n  - " + "\n  - ".join(problems)
                + "\nRecord the teacher with this run's flags (scripts/record_teacher.py), or train with "
                "--teacher_name_or_path instead of --teacher_outputs."
            )
        precision = str(trainer.accelerator.mixed_precision)
        if precision != self.manifest["teacher"]["precision"]:
            logger.warning("The teacher was recorded with precision %r and this run trains with %r: the record holds "
                           "the recorded teacher's outputs.", self.manifest["teacher"]["precision"], precision)
        if "top_k" in self.kinds and trainer.objective.loss.distillation_type == "soft":
            top_k = self.manifest["outputs"]["top_k"]
            if top_k < self.manifest["num_classes"]:
                logger.info("Soft targets from the teacher's top %d of %d probabilities; the rest of the mass is "
                            "spread evenly over the other classes.", top_k, self.manifest["num_classes"])

    # ---- one batch's outputs ----

    def _index(self, epoch: int):
        if epoch not in self._epoch_index:
            files = self.manifest["shards"].get(str(epoch))
            if files is None:
                raise KeyError(epoch)
            keys, batch_keys, starts = [], [], [0]
            for entry in files:
                with safe_open(os.path.join(self.folder, entry["file"]), framework="pt") as file:
                    keys.append(file.get_tensor("view_key").numpy())
                    if "batch_key" in file.keys():
                        batch_keys.append(file.get_tensor("batch_key").numpy())
                starts.append(starts[-1] + entry["views"])
            keys = np.concatenate(keys)
            order = np.argsort(keys, kind="stable")
            batch_keys = np.concatenate(batch_keys) if batch_keys else None
            first_of_batch = None
            if batch_keys is not None:  # each batch's rows are consecutive: its first row by its key
                unique, first = np.unique(batch_keys, return_index=True)
                first_of_batch = (unique, first)
            self._epoch_index[epoch] = (keys, (order, keys[order]), np.asarray(starts), files, first_of_batch)
        return self._epoch_index[epoch]

    def _rows(self, views: torch.Tensor) -> tuple[int, np.ndarray]:
        epochs = views[:, 0].unique()
        if len(epochs) != 1:
            raise ValueError(f"A batch mixes views of epochs {epochs.tolist()}: expected one epoch per batch.")
        epoch = int(epochs[0])
        rows = self.manifest["views"]["evaluation images" if epoch == EVAL_EPOCH else "training images"]["rows"]
        wanted = _view_keys(views, rows)
        try:
            keys, order, _, _, first_of_batch = self._index(epoch)
        except KeyError:
            raise RecordMismatchError(f"The teacher record {self.folder} holds no views of "
                                      + ("the evaluation images" if epoch == EVAL_EPOCH else f"epoch {epoch}")
                                      + ": it was made for another run.") from None  # fmt: skip
        if first_of_batch is not None and epoch != EVAL_EPOCH:
            unique, first = first_of_batch
            at = np.searchsorted(unique, _batch_key(wanted))
            found = at < len(unique) and unique[at] == _batch_key(wanted)
            rows_found = np.arange(first[at], first[at] + len(wanted)) if found else None
            if not found or rows_found[-1] >= len(keys) or not np.array_equal(keys[rows_found], wanted):
                raise RecordMismatchError(
                    f"The teacher record {self.folder} holds no mixed batch of epoch {epoch} starting at position "
                    f"{int(views[0, 1])} (image {int(views[0, 2])}, {len(wanted)} rows): mixup/cutmix views depend on "
                    "the whole batch, and this run batches differently from the recorded one.")
            return epoch, rows_found
        order, sorted_keys = order
        at = np.minimum(np.searchsorted(sorted_keys, wanted), len(keys) - 1)
        rows_found = order[at]
        missing = np.flatnonzero(keys[rows_found] != wanted)
        if len(missing):
            first_missing = views[int(missing[0])].tolist()
            raise RecordMismatchError(
                f"The teacher record {self.folder} holds no outputs for {len(missing)} view(s) of this batch, the "
                f"first at epoch {first_missing[0]}, position {first_missing[1]}, image {first_missing[2]}: it was "
                "made for another run.")
        return epoch, rows_found

    def _read(self, epoch: int, rows: np.ndarray, names: list[str]) -> dict[str, torch.Tensor]:
        _, _, starts, files, _ = self._index(epoch)
        shard_of = np.searchsorted(starts, rows, side="right") - 1
        gathered = {name: [] for name in names}
        positions = []
        for shard in np.unique(shard_of):
            mine = np.flatnonzero(shard_of == shard)
            local = rows[mine] - starts[shard]
            low, high = int(local.min()), int(local.max()) + 1
            path = os.path.join(self.folder, files[shard]["file"])
            if path not in self._open_files:
                self._open_files = {path: safe_open(path, framework="pt")}  # one shard open at a time
            file = self._open_files[path]
            for name in names:
                gathered[name].append(file.get_slice(name)[low:high][torch.from_numpy(local - low)])
            positions.append(mine)
        order = torch.from_numpy(np.argsort(np.concatenate(positions), kind="stable"))
        return {name: torch.cat(parts)[order] for name, parts in gathered.items()}

    def outputs(self, views: torch.Tensor, *, num_classes: int, device, distillation_type: str = "hard",
                attention_map: bool = False, features: bool = False, stage_maps: bool = False) -> TeacherForwardOutput:
        """The recorded `TeacherForwardOutput` for a batch whose rows are `views` ((batch, 3): epoch, position,
        image), on `device`. Logits: for soft distillation the log of the stored probabilities (top-k with the rest
        spread); for hard, logits whose argmax is the stored one (the only thing hard distillation reads), with the
        stored probabilities behind them when recorded (the teacher's confidence, for pseudo-labels)."""
        epoch, rows = self._rows(views.cpu())
        kinds = self.kinds
        names = ["argmax"]
        if "top_k" in kinds:
            names += ["probabilities"] if self.manifest["outputs"]["top_k"] == num_classes else ["top_probabilities",
                                                                                                 "top_indices"]
        training = epoch != EVAL_EPOCH
        names += [name for name, wanted in (("features", features), ("attention_map", attention_map),
                                            ("stage_map", stage_maps)) if wanted and training]  # fmt: skip
        stored = self._read(epoch, rows, names)
        argmax = stored["argmax"].long()
        logits = self._logits(stored, argmax, num_classes, distillation_type)
        maps = None
        if "stage_map" in stored:
            stage = self.manifest["outputs"]["stage"]
            maps = (None,) * stage + (stored["stage_map"].to(device, torch.float32),)
        return TeacherForwardOutput(
            logits=logits.to(device),
            attention_map=stored["attention_map"].to(device, torch.float32) if "attention_map" in stored else None,
            features=stored["features"].to(device, torch.float32) if "features" in stored else None,
            stage_maps=maps,
        )

    @staticmethod
    def _logits(stored: dict, argmax: torch.Tensor, num_classes: int, distillation_type: str) -> torch.Tensor:
        if "probabilities" in stored:
            probabilities = stored["probabilities"].float()
        elif "top_probabilities" in stored:
            values, indices = stored["top_probabilities"].float(), stored["top_indices"].long()
            rest = (1.0 - values.sum(dim=1, keepdim=True)).clamp(min=0.0) / max(num_classes - values.shape[1], 1)
            probabilities = rest.expand(-1, num_classes).clone().scatter_(1, indices, values)
        else:  # argmax only: a one-hot row says which class, and nothing about how sure
            return torch.nn.functional.one_hot(argmax, num_classes).float()
        logits = probabilities.clamp(min=torch.finfo(torch.float32).tiny).log()
        if distillation_type != "soft":  # the stored argmax decides, also where float16 rounding made a tie
            top = logits.max(dim=1).values
            logits.scatter_(1, argmax[:, None], torch.nextafter(top, torch.tensor(math.inf))[:, None])
        return logits

    def check_against_teacher(self, recorded: TeacherForwardOutput, live: TeacherForwardOutput) -> None:
        """For the first `CHECKED_BATCHES` training batches of a run given the teacher too: the recorded outputs are
        the teacher's (argmax equal; probabilities, features and maps within float16)."""
        if self._checked_batches >= CHECKED_BATCHES:
            return
        self._checked_batches += 1
        problems = []
        live_argmax, recorded_argmax = live.logits.float().argmax(1), recorded.logits.float().argmax(1)
        if not torch.equal(live_argmax.cpu(), recorded_argmax.cpu()):
            problems.append(f"the teacher's top class differs on {int((live_argmax != recorded_argmax).sum())} of "
                            f"{len(live_argmax)} views")  # fmt: skip
        for name in ("features", "attention_map"):
            ours, theirs = getattr(recorded, name), getattr(live, name)
            if ours is not None and theirs is not None and not torch.allclose(ours, theirs.float(), rtol=1e-2,
                                                                                atol=1e-2):  # fmt: skip
                problems.append(f"{name} differ beyond float16 rounding")
        if problems:
            raise RecordMismatchError(f"The teacher record {self.folder} is not the given teacher's on this run's "
                                      f"views: {'; '.join(problems)}.")  # fmt: skip
        logger.info("Training batch %d checked against the teacher: the record agrees.", self._checked_batches)


def _short(value, limit: int = 160) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RecordedTeacher:
    """Stands in for the teacher while the objective is sized (`DistillationObjective.build` probes it with one
    blank image): zeros of the recorded shapes, and the recorded teacher's answer to "are you a CNN?"."""

    def __init__(self, record: TeacherRecord):
        self.record = record
        shapes = record.manifest["shapes"]
        self.shapes = shapes
        self.model = types.SimpleNamespace(config=object()) if shapes["has_config"] else types.SimpleNamespace()
        self.name = record.teacher_name

    def __call__(self, pixel_values, attention_map=False, features=False, stage_maps=False, layers=(-1,)):
        batch = len(pixel_values)
        zeros = lambda shape: torch.zeros(batch, *shape, device=pixel_values.device)
        names = {"features": features, "attention_map": attention_map, "stage_maps": stage_maps}
        for name, wanted in names.items():
            if wanted and self.shapes[name] is None:
                raise ValueError(f"The recorded teacher gives no {name.replace('_', ' ')}.")
        return TeacherForwardOutput(
            logits=torch.zeros(batch, self.record.manifest["num_classes"], device=pixel_values.device),
            attention_map=zeros(self.shapes["attention_map"]) if attention_map else None,
            features=zeros(self.shapes["features"]) if features else None,
            stage_maps=tuple(zeros(shape) for shape in self.shapes["stage_maps"]) if stage_maps else None,
        )


def feature_map_stage(objective) -> int | None:
    """The teacher stage the objective's feature-map term imitates (None without that term)."""
    term = objective.terms["feature_map"] if "feature_map" in objective.terms else None
    return None if term is None else term.stage
