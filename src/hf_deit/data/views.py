"""The views a training run produces, epoch by epoch and process by process, and what they depend on.

`RunViews(trainer)` reads a run's public parts (its data, collators, seed, batch layout); `batches(epoch, rank)`
are the view keys (`hf_deit.data.samplers.ViewKey`) a process reads, as the trainer's loader gives them, so that a
teacher record (`hf_deit.teacher_record`) can produce the run's views bit for bit and find each one again.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import torch

from .datasets import row_digests
from .samplers import PositionSeededSampler, RepeatedAugmentationSampler


class RunViews:
    """What a run's views depend on: the data, the collators, the seed and the batch layout of a `world_size`-process
    run (default the trainer's), its schedule, and how its images look (the per-image transform, image size and
    normalisation)."""

    def __init__(self, trainer, world_size: int | None = None):
        args, train = trainer.args, trainer.train_dataset
        if train is None or not hasattr(train, "__len__") or isinstance(train, torch.utils.data.IterableDataset):
            raise ValueError("Teacher outputs are recorded by each view's place in the epoch: a streamed training set "
                             "has no places to record. Load the data without --streaming.")  # fmt: skip
        self.train, self.evaluation = train, trainer.eval_dataset
        self.collator, self.eval_collator = trainer.train_data_collator, trainer.data_collator
        self.batch_size, self.eval_batch_size = args.per_device_train_batch_size, args.per_device_eval_batch_size
        self.drop_last, self.even_batches = bool(args.dataloader_drop_last), trainer.accelerator.even_batches
        self.seed, self.workers = args.seed, args.dataloader_num_workers
        self.repeats = getattr(args, "repeated_augmentation", 1)
        self.world_size = world_size or args.world_size
        self.schedule = (args.max_steps, args.gradient_accumulation_steps, args.num_train_epochs)
        transform = getattr(getattr(train, "_format_kwargs", {}).get("transform"), "image_transform", None)
        steps = None if transform is None else re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform)).splitlines()
        processor = trainer.processing_class
        size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
        image_size = [size["height"], size["width"]] if "height" in size else trainer.model.config.image_size
        self.looks = {"augmentation": steps and [step.strip() for step in steps[1:-1]], "image size": image_size,
                      "normalisation": {"mean": list(getattr(processor, "image_mean", [])),
                                        "std": list(getattr(processor, "image_std", []))}}  # fmt: skip

    @property
    def mixes(self) -> bool:
        return bool(getattr(self.collator, "enabled", False))

    @property
    def rank_local(self) -> bool:  # repeated augmentation: each process's sampler picks its own share
        return self.repeats > 1 and self.world_size > 1

    def batches(self, epoch: int, rank: int) -> list[list]:
        """The batches of view keys that process `rank` reads in `epoch`: the trainer's sampler, batched, and sharded
        as accelerate shards it where the sampler does not split the data itself."""
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
        return [[batches[j] for batches in per_rank if j < len(batches)] for j in range(max(map(len, per_rank)))]

    def layout(self, rounds: list) -> tuple[list[tuple[int, int]], list[int] | None]:
        """Each round's slots [start, stop), and each batch's first slot. Without mixing a view's slot is its position
        (round j holds positions [j * width, (j + 1) * width)) and there are no first slots (None); with mixing, the
        run's batches lie end to end in its order."""
        if not self.mixes:
            width = self.batch_size * self.world_size
            total = 1 + max(key.position for batches in rounds for batch in batches for key in batch)
            return [(j * width, min((j + 1) * width, total)) for j in range(len(rounds))], None
        firsts = np.cumsum([0] + [len(batch) for batches in rounds for batch in batches]).tolist()
        starts = [firsts[index] for index in np.cumsum([0] + [len(batches) for batches in rounds[:-1]])]
        return list(zip(starts, starts[1:] + [firsts[-1]])), firsts[:-1]

    def epochs(self) -> int:
        """How many epochs (started ones included) the run's schedule reads."""
        max_steps, accumulation, epochs = self.schedule
        if max_steps > 0:
            return math.ceil(max_steps * accumulation / max(len(self.batches(0, 0)), 1))
        return math.ceil(epochs)

    def digests(self) -> dict[str, np.ndarray]:
        """Each training and evaluation image's content digest (`hf_deit.data.datasets.row_digests`), computed once."""
        if not hasattr(self, "_digests"):
            splits = {"training images": self.train, "evaluation images": self.evaluation}
            self._digests = {name: row_digests(data) for name, data in splits.items() if data is not None}
        return self._digests

    def describe(self) -> dict:
        """Everything the views depend on, as JSON values."""
        layout = {"repeated augmentation across processes": self.repeats if self.world_size > 1 else 1}
        if self.rank_local or self.mixes:
            layout["processes"] = self.world_size
        if self.mixes:
            layout.update({"batch size per process": self.batch_size, "drop last batch": self.drop_last})
        mixing = {name: getattr(self.collator, name) for name in ("mixup_alpha", "cutmix_alpha", "switch_prob", "prob")}
        images = {name: {"rows": len(digests), "content": hashlib.sha256(digests.tobytes()).hexdigest()}
                  for name, digests in self.digests().items()}  # fmt: skip
        return {"training images": images["training images"], "evaluation images": images.get("evaluation images"),
                **self.looks, "mixup/cutmix": mixing if self.mixes else "off", "seed": self.seed,
                "batch layout": layout}  # fmt: skip
