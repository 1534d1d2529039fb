"""The feature-map term (locality guidance): the student's patch tokens imitate a CNN teacher's stage output.

    loss = mean over positions of || normalize(projection(student patch token)) - normalize(teacher stage map) ||^2

The student's patch tokens after the blocks `feature_map_distillation_layers` imitate a CNN teacher's intermediate
feature map, position by position (Li et al., "Locality Guidance for Improving Vision Transformers on Tiny Datasets",
ECCV 2022). A CNN's early stages are local by construction; a ViT trained from scratch on a few thousand images has
to discover locality from the labels alone, and this term hands it over directly, with a target at every patch
rather than one per image. Vectors are L2-normalised per position (so the loss is 2 - 2 cos, scale-free across
architectures).

The stage imitated is the one whose grid is nearest the student's patch grid at its input size (`nearest_stage`).
The weight left unset (None) is 1 for images of at most 64 px with a CNN teacher and distillation on, else 0: the
recipe that made distillation pay off on the embedded digits (README, scripts/experiment_recipe.py).
"""

import logging
import math

import torch
import torch.nn.functional as F

from hf_deit_inputs.choices import SMALL_IMAGE_MAX_SIZE
from hf_deit_inputs import terms as declared
from hf_deit_inputs.terms import NO_DISTILLATION

from ..attention_maps import patch_grid
from .base import NUM_PREFIX_TOKENS, DistillationTerm, TermBatch, TermLoss, check_layers, resize_to_grid
from .feature import FeatureProjection

logger = logging.getLogger(__name__)


def nearest_stage(stage_maps, grid: tuple[int, int]) -> int:
    """The index of the CNN stage output `(batch, channels, h, w)` whose grid is closest to the student's patch grid
    (fewest cells apart on the log scale; the deeper stage among equals, since it carries more semantics)."""

    def distance(index: int) -> float:
        h, w = stage_maps[index].shape[-2:]
        return abs(math.log(h / grid[0])) + abs(math.log(w / grid[1]))

    return min(reversed(range(len(stage_maps))), key=distance)


def feature_map_distillation_loss(
    projected_tokens: torch.Tensor, teacher_map: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """`(batch, rows * columns, channels)` projected student patch tokens against the teacher's `(batch, channels, h,
    w)` stage output, resampled to the `(rows, columns)` grid: the mean over examples and positions of the squared
    distance between L2-normalised vectors. In float32."""
    with torch.autocast(device_type=projected_tokens.device.type, enabled=False):
        teacher = resize_to_grid(teacher_map.float().detach(), grid).flatten(2).transpose(1, 2)
        if teacher.shape != projected_tokens.shape:
            raise ValueError(f"Projected student tokens {tuple(projected_tokens.shape)} and the teacher's map on the "
                             f"{grid[0]}x{grid[1]} grid {tuple(teacher.shape)} differ in shape.")
        student = F.normalize(projected_tokens.float(), dim=-1)
        teacher = F.normalize(teacher, dim=-1)
        return (student - teacher).pow(2).sum(dim=-1).mean()


class FeatureMapTerm(DistillationTerm):
    settings = declared.TERMS["feature_map"]

    def __init__(self, weight: float, layers, projections, stage: int):
        super().__init__(weight)
        self.layers, self.stage = list(layers), stage  # the target is the teacher's stage_maps[stage]
        self.projections = torch.nn.ModuleList(projections)

    @classmethod
    def build(cls, args, student, teacher, probe):
        config = student.config
        check_layers("feature_map_distillation_layers", args.feature_map_distillation_layers, config.num_hidden_layers)
        weight, stage_maps = args.feature_map_distillation_weight, None
        if weight is None:
            weight, stage_maps = _default_weight(args, teacher, probe)
        if weight == 0:
            return None
        # One teacher pass at the student's input size tells which stage matches the patch grid, and its width.
        stage_maps = stage_maps or teacher(probe, stage_maps=True).stage_maps
        stage = nearest_stage(stage_maps, patch_grid(config, probe))
        channels = stage_maps[stage].shape[1]
        layers = sorted({index % config.num_hidden_layers for index in args.feature_map_distillation_layers})
        projections = [FeatureProjection(config.hidden_size, channels).to(probe.device) for _ in layers]
        return cls(weight, layers, projections, stage)

    def student_kwargs(self, student):
        return {"output_hidden_states": True}

    def read(self, student, outputs, captured, pixel_values):
        """The projected patch tokens after each block, `(batch, rows * columns, teacher channels)`; hidden_states[0]
        is the embeddings, so block i's output is hidden_states[i + 1]."""
        return [projection(outputs.hidden_states[index + 1][:, NUM_PREFIX_TOKENS:])
                for projection, index in zip(self.projections, self.layers)]  # fmt: skip

    def forward(self, batch: TermBatch) -> TermLoss:
        teacher_map = batch.teacher.stage_maps[self.stage]
        value = torch.stack([feature_map_distillation_loss(tokens, teacher_map, batch.grid)
                             for tokens in batch.signals[self.name]]).mean()  # fmt: skip
        return TermLoss(value, {"loss_feature_map": value})

    def extra_repr(self) -> str:
        return f"weight={self.weight}, layers={self.layers}, stage={self.stage}"


def _default_weight(args, teacher, probe: torch.Tensor):
    """1 for small images distilled from a CNN, 0 otherwise. Returns (weight, the probe's stage maps or None), so
    that the caller does not run the teacher again."""
    size = max(probe.shape[-2:])
    if teacher is None or args.distillation_type == NO_DISTILLATION or size > SMALL_IMAGE_MAX_SIZE:
        return 0.0, None
    try:
        stage_maps = teacher(probe, stage_maps=True).stage_maps
    except ValueError:  # not a CNN (or a plain module): no spatial stage outputs to imitate
        return 0.0, None
    logger.info("Feature-map distillation on (weight 1): a CNN teacher and %d px images. "
                "--feature_map_distillation_weight 0 turns it off.", size)
    return 1.0, stage_maps
