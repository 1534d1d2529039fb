"""Samplers: which example comes next (DeiT's repeated augmentation), and the seed its augmentation draws from.

Augmentation randomness that resumes exactly. Trainer saves torch's global RNG with each checkpoint and restores it on
resume, but the data pipeline draws from that same RNG (random crops, RandAugment, erasing, mixup) and accelerate's
DataLoader prefetches one batch ahead: the saved state already includes the next batch's draws, and with worker
processes each worker's RNG restarts elsewhere after the skipped batches. A resumed run then augments differently from
an uninterrupted one.

Instead, every draw of the data pipeline is seeded by its place in the epoch: the sampler yields (index, seed) with
seed = f(training seed, epoch, position), the dataset applies its transform under that seed (in a forked RNG, so the
global RNG that the model's dropout uses is untouched), and the collator mixes each batch with a generator seeded
from its first example. Skipping batches skips positions, so augmentation no longer depends on where a run started,
on prefetching or on the number of DataLoader workers.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import numpy as np
import torch


class RepeatedAugmentationSampler(torch.utils.data.Sampler[int]):
    """DeiT's repeated augmentation (RASampler) for distributed runs: each image is used `num_repeats` times,
    its copies landing on different ranks, so each copy gets its own augmentation in the same global batch.

    Per epoch: shuffle the indices (seed + epoch, identical on every rank), repeat each index `num_repeats` times in a
    row, pad to a multiple of the world size by wrapping around, and give rank r the positions r, r + W, r + 2W, ...
    As in the official code an epoch then stops after `len(dataset) // W` indices per rank, first rounded down to a
    multiple of `round_to` (256) across the world: an epoch costs as many steps as without repeats but visits only
    about 1/num_repeats of the images. `visit_all_repeats=True` instead yields all of its positions, so every image
    is seen num_repeats times per epoch. Call `set_epoch(epoch)` before each epoch.

    The sampler already picks this rank's share: give it to a DataLoader that is not sharded again (accelerate's
    `prepare` shards batches across processes too unless the DataLoader is left unprepared).
    """

    def __init__(
        self,
        dataset,
        num_replicas: int,
        rank: int,
        seed: int = 0,
        num_repeats: int = 3,
        round_to: int = 256,
        visit_all_repeats: bool = False,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}.")
        if num_repeats < 1 or round_to < 1:
            raise ValueError("num_repeats and round_to must be >= 1.")
        self.dataset_size = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.num_repeats = num_repeats
        self.epoch = 0
        # Positions of the repeated, padded sequence that belong to each rank.
        self.num_samples = math.ceil(self.dataset_size * num_repeats / num_replicas)
        if visit_all_repeats:
            self.num_selected = self.num_samples
        else:
            self.num_selected = (self.dataset_size // round_to * round_to) // num_replicas
            if self.num_selected == 0:
                raise ValueError(
                    f"An epoch of {self.dataset_size} images rounded down to multiples of round_to={round_to} over "
                    f"{num_replicas} ranks is empty; pass a smaller round_to (1 keeps every image)."
                )

    @classmethod
    def for_run(cls, dataset, world_size: int, rank: int, seed: int, num_repeats: int) -> "RepeatedAugmentationSampler":
        """The sampler a training run with `world_size` processes gives rank `rank`."""
        # The official epoch length rounds down to 256 images; on a small folder that would drop most of it (all of it
        # under 256 images), so there it rounds to the number of processes only.
        round_to = 256 if len(dataset) >= 10 * 256 else world_size
        return cls(dataset, num_replicas=world_size, rank=rank, seed=seed, num_repeats=num_repeats, round_to=round_to)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.dataset_size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        repeated = order.repeat_interleave(self.num_repeats)
        total = self.num_samples * self.num_replicas
        repeated = torch.cat([repeated, repeated[: total - len(repeated)]])
        mine = repeated[self.rank : total : self.num_replicas]
        return iter(mine[: self.num_selected].tolist())

    def __len__(self) -> int:
        return self.num_selected

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """A well-spread 63-bit seed from integers (splitmix64 steps), the same in every process and Python version."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        mixed = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = mixed ^ (mixed >> 31)
    return state >> 1


class ViewKey(NamedTuple):
    """One training view: the dataset's `index`, the `seed` its augmentation draws from, and the `epoch` and `position`
    (in this process's share of the epoch) it was drawn for."""

    index: int
    seed: int
    epoch: int
    position: int


class PositionSeededSampler(torch.utils.data.Sampler):
    """Yields a `ViewKey` per example: the indices of `sampler` (or, for a `RandomSampler`, a permutation seeded by
    `seed + epoch`), each with a seed for its augmentation derived from the training seed, the epoch and its
    position."""

    def __init__(self, sampler, seed: int):
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        if isinstance(self.sampler, torch.utils.data.RandomSampler):  # its own order comes from torch's global RNG
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.sampler.data_source), generator=generator).tolist()
        else:
            indices = iter(self.sampler)
        # A sampler that picks this process's share itself (repeated augmentation: rank r takes positions r, r + W,
        # ...) numbers its positions per process. Placed back in the epoch's whole sequence, the copies of an image,
        # which land on different processes at the same local position, draw different augmentations.
        stride, offset = getattr(self.sampler, "num_replicas", 1), getattr(self.sampler, "rank", 0)
        for local_position, index in enumerate(indices):
            position = offset + local_position * stride
            yield ViewKey(int(index), mix_seed(self.seed, self.epoch, position), self.epoch, position)


class PositionSeededDataset(torch.utils.data.Dataset):
    """Map-style dataset read with `ViewKey`s (or `(index, seed)` pairs): the item's transform runs with torch's CPU
    generator seeded with `seed`. The example carries its seed and, from a `ViewKey`, its (epoch, position, index)."""

    SEED_KEY = "augmentation_seed"
    VIEW_KEY = "view"

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key[:2]
        with torch.random.fork_rng(devices=[]):
            # The CPU generator alone, which the transforms draw from: `torch.manual_seed` would also reseed every
            # accelerator's generator (the model's dropout on a GPU), outside what fork_rng restores, and, where one
            # is not initialised yet, record a stack trace per call: more than half of a small image's view.
            torch.default_generator.manual_seed(seed)
            example = dict(self.dataset[index])
        example[self.SEED_KEY] = seed
        if isinstance(key, ViewKey):
            example[self.VIEW_KEY] = (key.epoch, key.position, key.index)
        return example


class PositionSeededCollator:
    """Wraps a collator: drops the seeds from the examples and, when the collator draws from a `generator` (mixup),
    gives it one seeded from the batch's first example. With `keep_views`, a batch of examples that carry their views
    also holds `"views"`: a (batch, 3) int64 numpy array of each kept row's (epoch, position, index), by which
    recorded teacher outputs are found (numpy: Trainer moves tensors to the accelerator, and views are read on the
    host)."""

    def __init__(self, collator, keep_views: bool = False):
        self.collator = collator
        self.keep_views = keep_views

    def __call__(self, examples):
        # Trainer's `remove_unused_columns` (on by default for torch datasets) may already have dropped the seeds.
        seeds = [example.pop(PositionSeededDataset.SEED_KEY, None) for example in examples]
        views = [example.pop(PositionSeededDataset.VIEW_KEY, None) for example in examples]
        if hasattr(self.collator, "generator") and seeds and seeds[0] is not None:
            self.collator.generator = torch.Generator().manual_seed(mix_seed(seeds[0], 1))
        batch = self.collator(examples)
        if self.keep_views and views[0] is not None:
            # The rows the collator keeps: it drops the examples whose image could not be decoded.
            kept = [view for view, example in zip(views, examples) if example.get("pixel_values") is not None]
            batch["views"] = np.array(kept, dtype=np.int64).reshape(-1, 3)
        return batch
