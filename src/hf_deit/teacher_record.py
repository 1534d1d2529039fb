"""A recorded teacher: the teacher's outputs computed once over every view a training run will produce
(`hf_deit.recording`), then replayed by `RecordedTeacher`, called as `Teacher` is.

Exact: every draw of the data pipeline is seeded by the view's place in the epoch, and the recorder iterates the run's
own sampler, batches and collator (`hf_deit.data.views.RunViews`), so it makes the run's views bit for bit and the
teacher sees the run's own batches. Dense: per epoch, one array per output kind indexed by a view's slot, its position
without mixup/cutmix (any batch size, any number of processes serve), its place among the run's batches laid end to
end with it (that layout only). Nothing else is stored per view: argmax 2 bytes (int16; int32 above 32,767 classes),
top-k 4k (k int16 indices, k float16 values; 2C for all C), features, attention and stage maps 2 bytes a value; plus
8 bytes per image, a digest of its content. Soft targets from top-k keep the k largest probabilities and spread the
rest evenly (as TinyViT): the recorder measures that on every view (`top_k_deviation`). Tied to the images' content
and the teacher's weights; several processes record in parallel, each its share into its own files, the first writing
the manifest last. docs/teacher-records.md says when a record pays and what it weighs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from hf_deit_inputs import InputError
from hf_deit_inputs.terms import SOFT

from .data.datasets import row_names
from .data.samplers import PositionSeededCollator, PositionSeededDataset
from .data.views import RunViews
from .teacher import EVALUATION_EPOCH, TeacherForwardOutput

logger = logging.getLogger(__name__)

MANIFEST_NAME, DIGESTS_NAME, FORMAT_VERSION = "manifest.json", "images.safetensors", 3  # 3: kind `stage_maps`
VIEWS_PER_SHARD = 65536  # views per file at least: a file of ImageNet features is ~400 MB
DIGEST_BYTES = 8  # per training and evaluation image
CHECKED_BATCHES = 2  # training batches checked against the teacher when it is given beside the record
# The teacher outputs a record can hold beside the logits, as the teacher names them (`TeacherForwardOutput`), in the
# record's order, with a noun for messages. Of `stage_maps`, it holds the one stage the feature-map term imitates.
OUTPUT_NOUNS = {"features": "pooled features", "attention_map": "attention maps", "stage_maps": "stage map"}


class RecordMismatchError(InputError):
    """A record that does not fit the run it is given to, with every difference named."""


def teacher_identity(teacher) -> dict:
    """The teacher's name, a SHA-256 of its weights (names, dtypes, shapes, bytes), its input adaptation and class
    order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    order = teacher.label_order.tolist() if teacher.label_order is not None else None
    return {"name": str(teacher.name), "weights_sha256": digest.hexdigest(), "input": repr(teacher.input_adapter),
            "class order": order}  # fmt: skip


def feature_map_stage(objective) -> int | None:
    """The teacher stage the objective's feature-map term imitates (None without that term)."""
    return objective.terms["feature_map"].stage if "feature_map" in objective.terms else None


# ---------------------------------------------------------------------------------------------------------------------
# What is stored, and what it weighs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RecordPlan:
    """The output kinds a record holds (`top_k` probabilities kept, None: none), its epochs, the number of processes
    of the run it is for, and the teacher's batch (default the run's)."""

    epochs: int
    world_size: int = 1
    top_k: int | None = None
    features: bool = False
    attention_map: bool = False
    stage_maps: bool = False
    teacher_batch_size: int | None = None

    def kinds(self) -> list[str]:
        return ["argmax"] + (["top_k"] if self.top_k else []) + [kind for kind in OUTPUT_NOUNS if getattr(self, kind)]


def plan_for_run(trainer, epochs=None, world_size=1, top_k="auto", features=None, attention_map=None, stage_maps=None,
                 teacher_batch_size=None) -> RecordPlan:  # fmt: skip
    """The record `trainer`'s objective needs (None/"auto": what its settings use). `top_k` "auto" keeps 10 classes
    for soft distillation or pseudo-labels and none for hard; an int or "all" says how many."""
    request, num_classes, loss = trainer.objective.teacher_request(True), trainer.model.config.num_labels, trainer.objective.loss
    if top_k in ("auto", None):
        top_k = min(10, num_classes) if loss.distillation_type == SOFT or loss.pseudo_label_threshold > 0 else None
    else:
        top_k = num_classes if top_k == "all" else int(top_k)
        if not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k must be between 1 and the {num_classes} classes, or 'all'; got {top_k}.")
    return RecordPlan(epochs if epochs is not None else RunViews(trainer, world_size).epochs(), world_size, top_k,
                      request["features"] if features is None else features,
                      request["attention_map"] if attention_map is None else attention_map,
                      request["stage_maps"] if stage_maps is None else stage_maps, teacher_batch_size)  # fmt: skip


def bytes_per_view(plan: RecordPlan, num_classes: int, shapes: dict, stage: int | None) -> dict[str, int]:
    """What one view costs on disk, by kind; nothing else is stored per view."""
    sizes = {"argmax": 2 if num_classes <= 32767 else 4}
    if plan.top_k:
        sizes["top_k"] = 2 * num_classes if plan.top_k == num_classes else 4 * plan.top_k
    for kind, shape in (("features", shapes["features"]), ("attention_map", shapes["attention_map"]),
                        ("stage_maps", (shapes["stage_maps"] or [None])[stage or 0])):  # fmt: skip
        if getattr(plan, kind):
            sizes[kind] = 2 * math.prod(shape)
    return sizes


def record_bytes(per_view: dict[str, int], views: int, evaluated: int, images: int) -> int:
    """A record's size: its training views' outputs, its evaluation images' logits (argmax, top-k) and its images'
    content digests (file headers and the manifest aside: a few hundred bytes a file)."""
    return sum(per_view.values()) * views + (per_view["argmax"] + per_view.get("top_k", 0)) * evaluated + (
        DIGEST_BYTES * images)  # fmt: skip


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
                        ("stage_maps", output.stage_maps[stage] if plan.stage_maps else None)):  # fmt: skip
        if getattr(plan, kind):
            stored[kind] = value.float().half()
    return {name: tensor.cpu() for name, tensor in stored.items()}


def _logits(stored: dict, num_classes: int) -> torch.Tensor:
    """The log of the stored probabilities (the top k, the rest spread), the stored argmax nudged up a float step
    where float16 rounding made a tie; one-hot rows from the argmax alone."""
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
    top = torch.nextafter(logits.max(dim=1).values, torch.tensor(math.inf))
    return logits.scatter_(1, argmax[:, None], top[:, None])


def top_k_deviation(logits: torch.Tensor, stored: dict[str, torch.Tensor], tau: float) -> dict[str, torch.Tensor]:
    """Per view, how far soft targets replayed from stored top-k probabilities lie from the teacher's `logits`: the
    mass outside the top k (temperature 1), the total variation and the soft loss (KL(replayed || live) * tau^2 /
    classes, as the distillation loss averages it) at `tau`."""
    logits = logits.detach().float().cpu()
    num_classes, k = logits.shape[1], stored["top_probabilities"].shape[1]
    live, target = F.log_softmax(logits / tau, dim=1), F.log_softmax(_logits(stored, num_classes) / tau, dim=1)
    return {"mass outside the top k": 1.0 - logits.softmax(dim=1).topk(k, dim=1).values.sum(dim=1),
            "total variation": 0.5 * (target.exp() - live.exp()).abs().sum(dim=1),
            "soft loss": (target.exp() * (target - live)).sum(dim=1) * tau * tau / num_classes}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Whether recording pays (the recording itself: hf_deit.recording)
# ---------------------------------------------------------------------------------------------------------------------


def view_costs(trainer, batches: int = 4) -> dict[str, float]:
    """Seconds per training view of `trainer`'s run over `batches` batches after a warm-up one: `pipeline` (reading,
    decoding, augmenting, collating) and `teacher` (its pass). A record that n runs share saves about
    (n - 1) x teacher - pipeline per view: recording pays both once, each live run the teacher's pass."""
    run, request = RunViews(trainer, 1), trainer.objective.teacher_request(True)
    loader = torch.utils.data.DataLoader(PositionSeededDataset(run.train), batch_sampler=run.batches(0, 0)[:batches + 1],
                                         collate_fn=PositionSeededCollator(run.collator))  # fmt: skip
    seconds, views, tic = {"pipeline": 0.0, "teacher": 0.0}, 0, time.perf_counter()
    for index, batch in enumerate(loader):
        loaded = time.perf_counter()
        trainer.teacher_outputs(batch["pixel_values"].to(trainer.accelerator.device), **request)
        if index > 0 or len(loader) == 1:
            seconds["pipeline"], seconds["teacher"] = seconds["pipeline"] + loaded - tic, seconds["teacher"] + (
                time.perf_counter() - loaded)  # fmt: skip
            views += len(batch["pixel_values"])
        tic = time.perf_counter()
    return {name: value / max(views, 1) for name, value in seconds.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Replaying
# ---------------------------------------------------------------------------------------------------------------------


class RecordedTeacher(nn.Module):
    """A record in the teacher's place: called as `Teacher` is, with the batch's `views` (`hf_deit.teacher`), it
    gives the recorded `TeacherForwardOutput`. `live`, the teacher itself when given beside the record, must have the
    recorded weights; it answers what comes without views (the accuracy check) and checks the first training batches.
    Without it, the blank probe that sizes the objective gets zeros of the recorded shapes."""

    reads_views, report = True, None

    def __init__(self, folder: str, live: nn.Module | None = None):
        super().__init__()
        self.folder, self.manifest, self.live = str(folder), _read_manifest(str(folder)), live
        self.name, self.kinds = self.manifest["teacher"]["name"], self.manifest["outputs"]["kinds"]
        if live is None and self.manifest["teacher_report"] is not None:  # the check made when it was recorded
            from .teacher_check import TeacherReport

            self.report = TeacherReport(**self.manifest["teacher_report"])
        self._file, self._batch_starts, self._checked = (None, None), None, 0

    def check_run(self, trainer) -> None:
        """Before training: refuse (`RecordMismatchError`, every difference named) a record that does not fit
        `trainer`'s run, and find where its mixed batches lie."""
        run = RunViews(trainer)
        problems = self.differences(run, trainer.objective)
        if problems:
            raise RecordMismatchError(
                f"The teacher record {self.folder} does not fit this run:\n  - " + "\n  - ".join(problems)
                + "\nRecord the teacher with this run's flags (scripts/record_teacher.py), or train with "
                "--teacher_name_or_path instead of --teacher_outputs.")  # fmt: skip
        if run.mixes:  # each batch's first slot, by its first view's position (a batch read twice is the same)
            rounds = run.rounds(0)
            self._batch_starts = {}
            for batch, first in zip((batch for batches in rounds for batch in batches), run.layout(rounds)[1]):
                self._batch_starts.setdefault(batch[0].position, first)
        if str(trainer.accelerator.mixed_precision) != self.manifest["teacher"]["precision"]:
            logger.warning("The teacher was recorded with precision %r and this run trains with %r: the record holds "
                           "the recorded teacher's outputs.", self.manifest["teacher"]["precision"],
                           str(trainer.accelerator.mixed_precision))  # fmt: skip

    def differences(self, run: RunViews, objective) -> list[str]:
        """Each way the record does not fit the run, in words (empty: it fits)."""
        recorded, described, problems = self.manifest["views"], run.describe(), []
        for key, ours in recorded.items():
            theirs = described[key]
            if ours == theirs or (key == "evaluation images" and theirs is None):
                continue  # (no evaluation in this run: the recorded one is not needed)
            if key.endswith("images"):
                problems.append(self._changed_images(key, run, ours, theirs))
            elif key == "augmentation" and ours and theirs:  # the steps that differ only
                problems.append(f"augmentation: recorded {_short([line for line in ours if line not in theirs])}, "
                                f"this run {_short([line for line in theirs if line not in ours])}")  # fmt: skip
            else:
                problems.append(f"{key}: recorded {_short(ours)}, this run {_short(theirs)}")
        if run.epochs() > self.manifest["epochs"]:
            problems.append(f"epochs: this run reads {run.epochs()} epochs, the record holds "
                            f"{self.manifest['epochs']}: record more (--num_epochs), or train fewer")  # fmt: skip
        problems += [f"missing term: {text}" for text in self._missing_terms(objective)]
        identity = teacher_identity(self.live) if self.live is not None else self.manifest["teacher"]
        for key in ("weights_sha256", "input", "class order"):
            if identity[key] != self.manifest["teacher"][key]:
                problems.append(f"teacher ({key}): recorded {_short(self.manifest['teacher'][key])}, given "
                                f"{_short(identity[key])}: the given teacher is not the recorded one")  # fmt: skip
        return problems

    def _changed_images(self, key: str, run: RunViews, ours: dict | None, theirs: dict | None) -> str:
        name = "data" if key == "training images" else "evaluation data"
        if ours is None or theirs is None or ours["rows"] != theirs["rows"]:
            return f"{name}: recorded {_short(ours)}, this run {_short(theirs)}"
        changed = np.flatnonzero(load_file(os.path.join(self.folder, DIGESTS_NAME))[key].numpy().view(np.uint64)
                                 != run.digests()[key])  # fmt: skip
        names = row_names(run.train if key == "training images" else run.evaluation, changed[:3])
        return (f"{name}: {len(changed)} of {ours['rows']} images differ from the recorded ones (content or label), "
                f"such as {', '.join(names)}")

    def _missing_terms(self, objective) -> list[str]:
        loss, request, missing = objective.loss, objective.teacher_request(True), []
        if "top_k" not in self.kinds and (loss.distillation_type == SOFT or loss.pseudo_label_threshold > 0):
            missing.append(("soft distillation needs the teacher's probabilities" if loss.distillation_type == SOFT
                            else "--pseudo_label_threshold needs the teacher's confidence") + ": record with --top_k")
        missing += [f"the {term.name.replace('_', '-')} term needs the teacher's {OUTPUT_NOUNS[kind]}: record with "
                    f"--record_{kind}" for term in objective.active_terms(training=True) for kind in term.teacher_outputs
                    if kind in OUTPUT_NOUNS and kind not in self.kinds]  # fmt: skip
        stage = feature_map_stage(objective)
        if request["stage_maps"] and "stage_maps" in self.kinds and self.manifest["outputs"]["stage"] != stage:
            missing.append(f"the feature-map term imitates stage {stage}, the record holds stage "
                           f"{self.manifest['outputs']['stage']}")  # fmt: skip
        return missing

    @torch.no_grad()
    def forward(self, pixel_values, attention_map=False, features=False, stage_maps=False, layers=(-1,), views=None):
        request = dict(attention_map=attention_map, features=features, stage_maps=stage_maps)
        if views is None and self.live is not None:
            return self.live(pixel_values, layers=layers, **request)
        if views is None and len(pixel_values) == 1 and not pixel_values.any():  # the probe that sizes the objective
            shapes, zeros = self.manifest["shapes"], lambda shape: torch.zeros(1, *shape, device=pixel_values.device)
            if any(wanted and shapes[name] is None for name, wanted in request.items()):
                raise ValueError(f"The recorded teacher gives no {', '.join(n for n, w in request.items() if w)}.")
            return TeacherForwardOutput(zeros([self.manifest["num_classes"]]),
                                        zeros(shapes["attention_map"]) if attention_map else None,
                                        zeros(shapes["features"]) if features else None,
                                        tuple(map(zeros, shapes["stage_maps"])) if stage_maps else None)
        if views is None:
            raise ValueError("A batch without its views' places reached a teacher record: read the data through the "
                             "trainer's own data loaders, or give the teacher itself.")  # fmt: skip
        epoch, slots = self._slots(torch.as_tensor(views).cpu())
        recorded = self._recorded(epoch, slots, pixel_values.device, **request)
        if self.live is not None and epoch != EVALUATION_EPOCH and self._checked < CHECKED_BATCHES:
            self.check_against_teacher(recorded, self.live(pixel_values, layers=layers, **request))
        return recorded

    def _slots(self, views: torch.Tensor) -> tuple[int, np.ndarray]:
        epoch = int(views[0, 0])
        if not (views[:, 0] == epoch).all():
            raise ValueError(f"A batch mixes views of epochs {views[:, 0].unique().tolist()}: expected one epoch.")
        if epoch == EVALUATION_EPOCH or self.manifest["views"]["mixup/cutmix"] == "off":
            return epoch, views[:, 2 if epoch == EVALUATION_EPOCH else 1].numpy()
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
        starts, stops = np.array([[file["start"], file["stop"]] for file in files] or [[0, 0]]).T
        shard_of = np.searchsorted(starts, slots, side="right") - 1
        outside = np.flatnonzero((shard_of < 0) | (slots >= stops[shard_of]) | (len(files) == 0))
        if len(outside):
            where = "the evaluation images" if epoch == EVALUATION_EPOCH else f"epoch {epoch}"
            raise RecordMismatchError(f"The teacher record {self.folder} holds no outputs for {len(outside)} view(s) "
                                      f"of {where} (the first at slot {slots[outside[0]]}): it was made for another run.")
        gathered, order = {name: [] for name in names}, []
        for shard in np.unique(shard_of):
            mine = np.flatnonzero(shard_of == shard)
            local = slots[mine] - starts[shard]
            low, high = int(local.min()), int(local.max()) + 1
            if self._file[0] != files[shard]["file"]:  # one file open at a time
                self._file = (files[shard]["file"], safe_open(os.path.join(self.folder, files[shard]["file"]), "pt"))
            for name in names:
                gathered[name].append(self._file[1].get_slice(name)[low:high][torch.from_numpy(local - low)])
            order.append(mine)
        order = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        with torch.autocast("cpu", enabled=False):  # stored float16 is no autocast type on the CPU: cat refuses it
            return {name: torch.cat(parts)[order] for name, parts in gathered.items()}

    def _recorded(self, epoch, slots, device, **request: bool):
        num_classes, top_k = self.manifest["num_classes"], self.manifest["outputs"]["top_k"]
        names = ["argmax"] + ([] if not top_k else ["probabilities"] if top_k == num_classes else
                              ["top_probabilities", "top_indices"])  # fmt: skip
        if epoch != EVALUATION_EPOCH:
            names += [kind for kind, wanted in request.items() if wanted]
        stored = {name: value.to(device) for name, value in self._read(epoch, slots, names).items()}
        floats = {name: stored[name].float() if name in stored else None for name in ("features", "attention_map")}
        maps = None if "stage_maps" not in stored else (None,) * self.manifest["outputs"]["stage"] + (
            stored["stage_maps"].float(),)  # fmt: skip
        return TeacherForwardOutput(_logits(stored, num_classes), floats["attention_map"], floats["features"], maps)

    def check_against_teacher(self, recorded: TeacherForwardOutput, live: TeacherForwardOutput) -> None:
        """The recorded outputs are the given teacher's: the top class equal, features and maps within float16."""
        self._checked += 1
        ours, theirs = recorded.logits.float().argmax(1).cpu(), live.logits.float().argmax(1).cpu()
        problems = [] if torch.equal(ours, theirs) else [f"the teacher's top class differs on "
                                                         f"{int((ours != theirs).sum())} of {len(ours)} views"]
        problems += [f"{name} differ beyond float16 rounding" for name in ("features", "attention_map")
                     if getattr(recorded, name) is not None and getattr(live, name) is not None
                     and not torch.allclose(getattr(recorded, name), getattr(live, name).float(), 1e-2, 1e-2)]
        if problems:
            raise RecordMismatchError(f"The teacher record {self.folder} is not the given teacher's on this run's "
                                      f"views: {'; '.join(problems)}.")  # fmt: skip
        logger.info("Training batch %d checked against the teacher: the record agrees.", self._checked)


def _read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        interrupted = os.path.isdir(folder) and any(name.endswith(".safetensors") for name in os.listdir(folder))
        raise FileNotFoundError(f"{folder} holds no teacher record ({MANIFEST_NAME} missing): " + (
            "its recording was interrupted; run scripts/record_teacher.py again." if interrupted else
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
